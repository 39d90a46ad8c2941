"""Sharded sampling on Ray: a sample set drawn by 1 or 2 workers is the set one process draws, image for image,
in memory and as shards (the very shards: the same fingerprint)."""
from __future__ import annotations

import pytest
import torch

from synthdata.data import load_digits_set
from synthdata.generators import create_generator, draw_samples
from synthdata.imagestore import as_tensor, is_lazy
from synthdata.spec import GaussianSpec


@pytest.fixture(scope="module")
def fitted():
    real = load_digits_set()
    spec = GaussianSpec(covariance="diag")
    generator = create_generator(spec, real.shape, real.num_classes)
    generator.fit(real, seed=0)
    return spec, generator, real


def test_one_or_two_sampling_workers_draw_the_set_one_process_draws(local_ray, fitted, tmp_path, monkeypatch):
    import synthdata.shards as shards
    from synthdata.sampling import SamplingPool
    from synthdata.shards import open_shards

    spec, generator, real = fitted
    kw = dict(label_seed=3, sample_seed=4, item_size=64)
    n, item = 700, 64
    alone = draw_samples(generator, n, real, label_seed=3, sample_seed=4)
    monkeypatch.setattr(shards, "SHARD_BYTES", 64 * item)  # one writer's shards of `item` images (1x8x8 uint8 each)
    one_writer = draw_samples(generator, n, real, label_seed=3, sample_seed=4, storage=str(tmp_path / "one"), in_memory_mb=0)
    assert torch.equal(as_tensor(one_writer.images), alone.images)
    prints = {open_shards(str(tmp_path / "one"))[2].fingerprint}
    # One actor; and this process with one actor (what an arm with sampling_workers: 2 runs). One pool at a time: the
    # session's Ray has 2 CPUs, and an actor holds its CPU while it lives.
    for name, workers, local in (("1 worker", 1, False), ("this process + 1", 2, True)):
        pool = SamplingPool(spec, real.shape, real.num_classes, workers, local=local)
        try:
            held = pool.draw(generator, n, real, **kw)
            assert not is_lazy(held.images)
            assert torch.equal(held.images, alone.images) and torch.equal(held.labels, alone.labels), name
            # Written as shards: the workers write the parts, the manifest lists them in index order.
            root = tmp_path / f"{workers}{local}"
            stored = pool.draw(generator, n, real, **kw, storage=str(root), in_memory_mb=0)
        finally:
            pool.close()
        assert is_lazy(stored.images) and torch.equal(as_tensor(stored.images), alone.images), name
        assert torch.equal(stored.labels, alone.labels)
        _, _, manifest = open_shards(str(root), verify=True)
        assert manifest.count == n and [s["start"] for s in manifest.shards] == list(range(0, n, item))
        assert len(list(root.glob("part_*"))) == -(-n // item)
        prints.add(manifest.fingerprint)
    assert len(prints) == 1, prints  # one writer, one worker, two: the same shards


def test_a_loop_arm_with_two_sampling_workers_measures_what_one_measures(local_ray, tracking_uri, tmp_path):
    """sampling_workers: 2 on a 2-CPU Ray: each arm and one actor hold a placement group of 2 CPUs; the samples,
    hence every metric of every generation, are those of the arm sampling alone."""
    from loops.study import run_study
    from synthdata.spec import parse_spec

    def study(workers: int) -> dict:
        return {"name": f"sampled_by_{workers}", "data": {"source": "gaussian"}, "metrics": ["toy"],
                "generator": {"name": "gaussian", "covariance": "diag"},
                "loop": {"types": ["replace", "accumulate"], "generations": 3, "samples_per_generation": 600},
                "resources": {"cpus_per_arm": 1, "sampling_workers": workers}, "tracking": {"checkpoints": False, "report_dir": str(tmp_path / "runs")}}

    from ray.util import placement_group_table

    before = set(placement_group_table())
    tables = [run_study(parse_spec(study(k)), tracking_uri=tracking_uri, show_progress=False).table for k in (1, 2)]
    made = [pg for key, pg in placement_group_table().items() if key not in before]
    # One group per arm of the second study (the first asks for none): the arm's CPU and its worker's, handed back.
    assert len(made) == 2 and all(len(pg["bundles"]) == 2 and pg["state"] == "REMOVED" for pg in made), made
    cols = ["arm", "generation", "fitted_variance", "w2_to_truth"]
    one, two = (t[cols].sort_values(["arm", "generation"]).reset_index(drop=True) for t in tables)
    assert len(one) == 8 and one.equals(two), (one, two)


def test_more_sampling_workers_than_the_machine_holds_are_refused(local_ray):
    from loops.ray_tools import check_resources
    from synthdata.errors import UserError
    from synthdata.spec import ResourcesSpec

    with pytest.raises(UserError, match=r"resources.sampling_workers: 3 workers per arm hold 3 CPUs .* has 2; set at most 2"):
        check_resources(ResourcesSpec(cpus_per_arm=1, sampling_workers=3), local=True)
    check_resources(ResourcesSpec(cpus_per_arm=1, sampling_workers=2), local=True)  # fits: no error
