import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_png

from synthdata.data import _stratified_split, class_balanced_labels, load_digits_set, make_splits, quantize
from synthdata.errors import DataError
from synthdata.spec import DataSpec


def test_digits_splits_are_disjoint_stratified_and_seeded():
    labels = load_digits_set().labels.numpy()
    parts = _stratified_split(labels, [1079, 359, 359], np.random.default_rng(0))
    assert [len(p) for p in parts] == [1079, 359, 359]
    assert len(set().union(*map(set, parts))) == 1079 + 359 + 359  # no index in two parts
    a = make_splits(DataSpec(), seed=0)
    assert (len(a.train), len(a.heldout), len(a.test)) == (1079, 359, 359)
    # Every class in every split, in roughly the data's proportions.
    for s in (a.train, a.heldout, a.test):
        counts = torch.bincount(s.labels, minlength=10).float()
        assert counts.min() > 0.8 * counts.mean()
    b = make_splits(DataSpec(), seed=0)
    c = make_splits(DataSpec(), seed=1)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)


def test_digits_range_levels_and_resize():
    s = make_splits(DataSpec(), seed=0)
    assert s.train.shape == (1, 8, 8) and s.train.levels == 17
    assert s.train.images.min() == -1 and s.train.images.max() == 1
    assert torch.equal(quantize(s.train.images, 17), s.train.images)  # real data is on its own grid
    r = make_splits(DataSpec(image_size=16), seed=0)
    assert r.train.shape == (1, 16, 16) and r.train.levels == 256


def test_quantize_snaps_to_levels():
    x = torch.linspace(-1.2, 1.2, 1000)
    q = quantize(x, 17)
    assert len(q.unique()) == 17 and q.min() == -1 and q.max() == 1
    assert (q - x.clamp(-1, 1)).abs().max() <= 1 / 16 + 1e-6


def _make_folder(root: Path, classes=3, per_class=12, size=8, channels=None) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            shape = (size, size) if channels is None else (size, size, channels)
            write_png(root / f"class{c}" / f"{i}.png", rng.integers(0, 256, shape) // (c + 1))


def test_image_folder_loads_classes_and_splits(tmp_path):
    _make_folder(tmp_path, channels=3)
    s = make_splits(DataSpec(source="folder", root=tmp_path), seed=0)
    assert s.train.num_classes == 3 and s.train.shape == (3, 8, 8)
    assert len(s.train) + len(s.heldout) + len(s.test) == 36


def test_corrupt_image_is_named(tmp_path):
    _make_folder(tmp_path)
    bad = tmp_path / "class1" / "5.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=rf"^{bad} \(image 19\): cannot read image"):
        make_splits(DataSpec(source="folder", root=tmp_path), seed=0)


def test_mixed_image_sizes_are_refused_unless_resized(tmp_path):
    _make_folder(tmp_path)
    odd = tmp_path / "class2" / "odd.png"
    write_png(odd, np.zeros((10, 10)))
    with pytest.raises(DataError, match=f"^{odd}: image size"):
        make_splits(DataSpec(source="folder", root=tmp_path), seed=0)
    s = make_splits(DataSpec(source="folder", root=tmp_path, image_size=8), seed=0)
    assert s.train.shape == (1, 8, 8)


def test_empty_class_folder_is_named(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "class3").mkdir()
    with pytest.raises(DataError, match="class folder has no images"):
        make_splits(DataSpec(source="folder", root=tmp_path), seed=0)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (dtype 0x08 = uint8, ndim), dims, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_a_local_root(tmp_path):
    """torchvision's MNIST loader on a local copy (nothing is downloaded here)."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    for prefix, n in (("train", 120), ("t10k", 40)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    s = make_splits(DataSpec(source="mnist", root=tmp_path, image_size=16), seed=0)
    assert s.train.shape == (1, 16, 16) and s.train.num_classes == 10
    assert len(s.test) == 40  # the official test split
    assert len(s.train) + len(s.heldout) == 120
    # Read per batch (a large set): the array is loaded from root in the process that reads it, never pickled.
    import cloudpickle  # as Ray pickles task arguments

    from synthdata.imagestore import as_tensor, is_lazy

    lazy = make_splits(DataSpec(source="mnist", root=tmp_path, image_size=16, in_memory_mb=0), seed=0)
    assert is_lazy(lazy.train.images) and len(cloudpickle.dumps(lazy.test.images)) < 4000
    assert torch.equal(as_tensor(lazy.train.images), s.train.images) and torch.equal(as_tensor(lazy.test.images), s.test.images)


def test_missing_torchvision_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="data.root: cifar10 not found"):
        make_splits(DataSpec(source="cifar10", root=tmp_path), seed=0)


def test_class_balanced_labels_match_reference_proportions():
    ref = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    labels = class_balanced_labels(10, ref, 3, torch.Generator().manual_seed(0))
    assert torch.bincount(labels, minlength=3).tolist() == [5, 3, 2]
    assert len(class_balanced_labels(7, ref, 3, torch.Generator().manual_seed(0))) == 7


def test_each_seed_draws_its_own_split_unless_one_is_fixed():
    from synthdata.data import study_splits

    per_seed = study_splits(DataSpec(), [0, 1, 2])
    trains = [set(per_seed[s].train.images.flatten(1).sum(1).tolist()) for s in (0, 1, 2)]
    assert trains[0] != trains[1] != trains[2]  # a seed's replicate redraws the real data...
    again = study_splits(DataSpec(), [1])
    assert torch.equal(again[1].train.images, per_seed[1].train.images)  # ...reproducibly
    fixed = study_splits(DataSpec(split_seed=0), [0, 1, 2])
    assert fixed[0] is fixed[1] is fixed[2]  # one split for every seed, shared
    assert torch.equal(fixed[0].train.images, make_splits(DataSpec(), seed=0).train.images)  # the split of earlier studies
    toy = DataSpec(source="gaussian")
    assert not torch.equal(study_splits(toy, [0, 1])[0].train.images, study_splits(toy, [0, 1])[1].train.images)
