"""Sample sets written as they are drawn: shards that read back as the images drawn, a manifest that catches a
damaged set, object storage through fsspec, and a storage that cannot be written refused up front."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synthdata.data import ImageSet, quantize
from synthdata.errors import DataError
from synthdata.imagestore import as_tensor, is_lazy


class _Noise:
    """A generator stand-in: sampling is seeded noise, so the images a seed gives are known."""

    def sample(self, labels: torch.Tensor, *, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand((len(labels), 3, 8, 8), generator=g) * 2 - 1 + labels[:, None, None, None] * 0


def _real(n: int = 50) -> ImageSet:
    return ImageSet(torch.zeros(n, 3, 8, 8), torch.arange(n) % 5, 5, 256)


@pytest.fixture
def small_chunks(monkeypatch):
    import synthdata.generators as generators
    import synthdata.shards as shards

    monkeypatch.setattr(generators, "SAMPLE_CHUNK_BYTES", 4 * 3 * 8 * 8 * 64)  # 64 images per sample call
    monkeypatch.setattr(shards, "SHARD_BYTES", 3 * 8 * 8 * 100)  # 100 images per shard


def test_samples_written_as_shards_read_back_as_the_images_drawn(tmp_path, small_chunks):
    from synthdata.generators import draw_samples
    from synthdata.shards import open_shards

    kw = dict(label_seed=1, sample_seed=2)
    held = draw_samples(_Noise(), 250, _real(), **kw)
    written = draw_samples(_Noise(), 250, _real(), **kw, storage=str(tmp_path / "s"), in_memory_mb=0)
    assert not is_lazy(held.images) and is_lazy(written.images)
    assert torch.equal(held.images, as_tensor(written.images)) and torch.equal(held.labels, written.labels)
    files = sorted(p.name for p in (tmp_path / "s").glob("images_*.npy"))
    assert files == ["images_00000000-00000099.npy", "images_00000100-00000199.npy", "images_00000200-00000249.npy"]
    _, _, manifest = open_shards(str(tmp_path / "s"), verify=True)
    assert manifest.count == 250 and manifest.dtype == "uint8" and len(manifest.fingerprint) == 32
    # A generator that takes one seed per call draws each group of SEED_GROUP images with its first image's seed.
    from synthdata.seeds import image_seeds

    one = draw_samples(_Noise(), 40, _real(), **kw)
    assert torch.equal(one.images, quantize(_Noise().sample(one.labels, seed=int(image_seeds(2, 0, 1)[0])), 256))


def test_a_shard_set_that_does_not_match_its_manifest_is_refused(tmp_path, small_chunks):
    from synthdata.generators import draw_samples
    from synthdata.shards import open_shards

    root = tmp_path / "s"
    draw_samples(_Noise(), 250, _real(), label_seed=1, sample_seed=2, storage=str(root), in_memory_mb=0)
    shard = root / "images_00000100-00000199.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match=rf"^{shard}: differs from the manifest \(truncated or changed\)"):
        open_shards(str(root), verify=True)
    shard.unlink()
    with pytest.raises(DataError, match=rf"^{shard}: missing"):
        open_shards(str(root), verify=True)
    (root / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest.json"):
        open_shards(str(root))


def test_shards_on_object_storage_through_fsspec(small_chunks):
    """memory:// stands in for s3:// or gs://: written through fsspec, read back whole-shard, no memory map."""
    import cloudpickle

    from synthdata.generators import draw_samples
    from synthdata.shards import check_writable

    check_writable("memory://bucket/study")
    held = draw_samples(_Noise(), 230, _real(), label_seed=3, sample_seed=4)
    stored = draw_samples(_Noise(), 230, _real(), label_seed=3, sample_seed=4, storage="memory://bucket/study/g1", in_memory_mb=0)
    assert torch.equal(held.images, as_tensor(stored.images))
    back = cloudpickle.loads(cloudpickle.dumps(stored.images))  # the shard cache stays behind
    assert torch.equal(as_tensor(back[torch.tensor([5, 150, 229])]), held.images[[5, 150, 229]])


def test_a_storage_that_cannot_be_written_is_refused(tmp_path):
    from synthdata.shards import check_writable

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match=rf"^tracking.storage: cannot write to {blocker}/sub"):
        check_writable(str(blocker / "sub"))
    with pytest.raises(DataError, match="^tracking.storage: cannot write to nosuch://x"):
        check_writable("nosuch://x")


def test_continuous_samples_are_stored_as_floats(tmp_path):
    from synthdata.shards import ShardWriter, open_shards

    x = torch.randn(30, 4, 1, 1)
    w = ShardWriter(str(tmp_path / "toy"), (4, 1, 1), None, 1)
    w.add(x, torch.zeros(30, dtype=torch.long))
    w.close()
    images, labels, manifest = open_shards(str(tmp_path / "toy"))
    assert manifest.dtype == "float32" and torch.equal(as_tensor(images), x) and labels.tolist() == [0] * 30
    assert np.load(tmp_path / "toy" / "images_00000000-00000029.npy").dtype == np.float32


@pytest.mark.slow
def test_a_loop_whose_samples_are_written_as_shards_measures_what_it_measures_in_memory(local_ray, tracking_uri, tmp_path):
    """data.in_memory_mb: 0 puts real data and every generation's samples on disk: the same figures as in memory, the
    runs keep references (not pixels), and what --resume reads back is the samples, checked against the manifest."""
    from helpers import tiny_study

    from loops.study import run_study
    from synthdata.runs import child_runs, download_samples, study_run
    from synthdata.spec import parse_spec

    tables = {}
    for limit in (128, 0):
        study = tiny_study(name=f"shards{limit}", data={"limit": 200, "in_memory_mb": limit},
                           loop={"types": ["replace", "accumulate"], "generations": 2, "samples_per_generation": 150},
                           tracking={"report_dir": str(tmp_path / "runs"), "checkpoint_every": 1})
        result = run_study(parse_spec(study), tracking_uri=tracking_uri, show_progress=False)
        assert not result.failed
        tables[limit] = result.table.set_index(["arm", "generation"])
    cols = ["detectability", "downstream_accuracy", "train_set_size"]
    assert tables[0][cols].equals(tables[128][cols])

    parent = study_run(tracking_uri, experiment="shards0")
    arm = next(r for r in child_runs(tracking_uri, parent.info.run_id) if r.info.run_name == "accumulate/seed0")
    from mlflow.tracking import MlflowClient

    kept = {a.path for a in MlflowClient(tracking_uri).list_artifacts(arm.info.run_id, "checkpoints/generation_002")}
    assert "checkpoints/generation_002/samples.shards.json" in kept and not any(p.endswith(".safetensors") and "samples" in p for p in kept)
    back = download_samples(tracking_uri, arm.info.run_id, 2)
    assert is_lazy(back.images) and len(back) == 150
    shards = sorted((tmp_path / "runs" / "shards0" / "samples").rglob("accumulate_seed0/generation_002/images_*.npy"))
    assert shards
    shards[0].write_bytes(shards[0].read_bytes()[:-5])
    with pytest.raises(DataError, match="differs from the manifest"):
        download_samples(tracking_uri, arm.info.run_id, 2)
