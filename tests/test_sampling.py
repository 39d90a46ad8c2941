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
    from synthdata.sampling import draw_sharded
    from synthdata.shards import open_shards

    spec, generator, real = fitted
    kw = dict(label_seed=3, sample_seed=4)
    n, item = 700, 64
    alone = draw_samples(generator, n, real, **kw)
    for workers, local in ((1, False), (2, False), (2, True), (3, True)):  # local: this process is one of the workers
        held = draw_sharded(spec, generator, n, real, workers=workers, local=local, item_size=item, **kw)
        assert not is_lazy(held.images)
        assert torch.equal(held.images, alone.images) and torch.equal(held.labels, alone.labels), (workers, local)

    # Written as shards: the workers write the parts, the manifest lists them in index order.
    monkeypatch.setattr(shards, "SHARD_BYTES", 64 * item)  # one writer's shards of `item` images (1x8x8 uint8 each)
    one_writer = draw_samples(generator, n, real, **kw, storage=str(tmp_path / "one"), in_memory_mb=0)
    prints = {open_shards(str(tmp_path / "one"))[2].fingerprint}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        stored = draw_sharded(spec, generator, n, real, workers=workers, local=workers == 2, item_size=item, **kw,
                              storage=str(root), in_memory_mb=0)
        assert is_lazy(stored.images) and torch.equal(as_tensor(stored.images), alone.images)
        assert torch.equal(stored.labels, alone.labels)
        _, _, manifest = open_shards(str(root), verify=True)
        assert manifest.count == n and len(manifest.shards) == -(-n // item)
        assert [s["start"] for s in manifest.shards] == list(range(0, n, item))
        prints.add(manifest.fingerprint)
        assert len(list(root.glob("part_*"))) == -(-n // item)
    assert len(prints) == 1, prints  # one writer, one worker, two workers: the same shards
    assert torch.equal(as_tensor(one_writer.images), alone.images)
