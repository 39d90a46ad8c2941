"""Data read from disk a batch at a time: the same images, splits and detector results as data held in memory,
views that carry paths (not pixels) through pickling, and `synthdata prepare`'s zip."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
import yaml
from helpers import write_png

from synthdata.data import ImageSet, as_image_set, make_splits
from synthdata.errors import DataError
from synthdata.imagestore import ArrayStore, FileStore, LazyImages, as_tensor, cat_images, is_lazy, iter_batches
from synthdata.spec import ClassifierSpec, DataSpec, DetectSpec


def _folder(root: Path, classes: int = 3, per_class: int = 30, size: int = 8, channels: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            shape = (size, size, channels) if channels == 3 else (size, size)
            write_png(root / f"class{c}" / f"{i:03d}.png", rng.integers(0, 256, shape) // (c + 1))
    return root


def test_a_folder_read_per_batch_gives_the_images_and_splits_it_gives_in_memory(tmp_path):
    root = _folder(tmp_path / "real")
    for seed in (0, 1):
        held = make_splits(DataSpec(source="folder", root=root), seed=seed)
        lazy = make_splits(DataSpec(source="folder", root=root, in_memory_mb=0), seed=seed)
        for part in ("train", "heldout", "test"):
            a, b = getattr(held, part), getattr(lazy, part)
            assert not is_lazy(a.images) and is_lazy(b.images)
            assert torch.equal(a.labels, b.labels) and a.shape == b.shape == (3, 8, 8)
            assert torch.equal(a.images, as_tensor(b.images))  # bit for bit


def test_a_resize_is_applied_per_batch_with_the_same_result(tmp_path):
    """data.image_size on a torchvision-like uint8 array (a user's loader) resizes per batch read, as at once."""
    from helpers import load_blobs

    images, labels = load_blobs(n=120, size=8)
    held = as_image_set((images, labels), "loader")
    lazy = ImageSet(LazyImages(ArrayStore(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))), torch.as_tensor(labels), 3)
    assert torch.equal(held.images, as_tensor(lazy.images))
    from synthdata.data import _resized

    assert torch.equal(_resized(held.images, 16), as_tensor(_resized(lazy.images, 16)))


def test_prepare_writes_a_zip_that_reads_as_the_folder_does(tmp_path, capsys):
    from synthdata.cli import main

    root = _folder(tmp_path / "real")
    out = tmp_path / "real.zip"
    assert main(["prepare", str(root), "--out", str(out), "--no-progress"]) == 0
    assert "prepared 90 images (3, 8, 8) of 3 class(es)" in capsys.readouterr().out
    with zipfile.ZipFile(out) as z:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())  # uncompressed: read by seeking
    folder = make_splits(DataSpec(source="folder", root=root), seed=0)
    for limit in (1024, 0):  # read into memory, and per batch
        zipped = make_splits(DataSpec(source="folder", root=out, in_memory_mb=limit), seed=0)
        assert is_lazy(zipped.train.images) == (limit == 0)
        assert torch.equal(folder.train.images, as_tensor(zipped.train.images))
        assert torch.equal(folder.test.labels, zipped.test.labels)


def test_a_corrupt_image_is_named_with_its_index_by_prepare_and_by_a_lazy_read(tmp_path, capsys):
    from synthdata.cli import main

    root = _folder(tmp_path / "real", per_class=5)
    bad = root / "class1" / "002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code = main(["prepare", str(root), "--out", str(tmp_path / "x.zip"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {bad} (image 7): cannot read image (UnidentifiedImageError)"]
    assert not (tmp_path / "x.zip").exists()  # nothing half-written is left where the zip would be

    # A truncated file passes the header check a lazy folder does up front; the batch that reads it names it.
    good = _folder(tmp_path / "good", per_class=5)
    victim = good / "class0" / "003.png"
    victim.write_bytes(victim.read_bytes()[:60])
    lazy = make_splits(DataSpec(source="folder", root=good, in_memory_mb=0, split={"train": 0.6, "heldout": 0.2, "test": 0.2}), seed=0)
    everything = cat_images([lazy.train.images, lazy.heldout.images, lazy.test.images])
    with pytest.raises(DataError, match=rf"^{victim} \(image 3\): cannot read image"):
        as_tensor(everything)


def test_a_lazy_view_pickles_as_paths_and_indices_not_pixels(tmp_path):
    root = _folder(tmp_path / "real", classes=2, per_class=200, size=32)
    s = make_splits(DataSpec(source="folder", root=root, in_memory_mb=0), seed=0)
    pixels = len(s.train) * 3 * 32 * 32 * 4
    view = cat_images([s.train.images[torch.arange(10, 100)], s.heldout.images]).map(lambda x, _: x.flip(-1))
    blob = cloudpickle.dumps(view)  # as Ray pickles task arguments (a mapped view holds a function)
    assert len(blob) < pixels / 20, (len(blob), pixels)
    back = pickle.loads(blob)
    assert torch.equal(as_tensor(back), as_tensor(view)) and back.shape == view.shape


def test_a_set_too_large_to_hold_is_refused_with_one_line_and_iterates_in_batches(tmp_path):
    root = _folder(tmp_path / "real", per_class=10)
    s = make_splits(DataSpec(source="folder", root=root, in_memory_mb=0), seed=0).train
    with pytest.raises(DataError, match=r"ImageSet.tensors\(\): .* more than .* to hold in memory; iterate them in batches"):
        s.tensors(max_bytes=1000)
    first = [(x.clone(), y.clone()) for x, y in s.batches(4, seed=3)]
    again = list(s.batches(4, seed=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert sum(len(y) for _, y in first) == len(s) and not torch.equal(first[0][1], next(s.batches(4, seed=4))[1])


def test_decoding_in_dataloader_workers_gives_the_same_batches(tmp_path):
    root = _folder(tmp_path / "real", per_class=10)
    files = sorted(root.rglob("*.png"))
    images = LazyImages(FileStore(files, (3, 8, 8), "RGB", None))
    batches = list(torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).split(7))
    here = list(iter_batches(images, batches, workers=0))
    there = list(iter_batches(images, batches, workers=2))
    assert len(here) == len(there) == len(batches) and all(torch.equal(a, b) for a, b in zip(here, there))


def test_a_large_dataset_from_a_loader_stays_a_dataset(tmp_path):
    from helpers import load_blobs

    images, labels = load_blobs(n=90, size=8)

    class Blobs(torch.utils.data.Dataset):
        targets = labels.tolist()

        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return images[i], int(labels[i])

    held = as_image_set(Blobs(), "loader")
    lazy = as_image_set(Blobs(), "loader", DataSpec(in_memory_mb=0))
    assert is_lazy(lazy.images) and not is_lazy(held.images) and lazy.num_classes == held.num_classes == 3
    assert torch.equal(held.images, as_tensor(lazy.images)) and torch.equal(held.labels, lazy.labels)


def test_every_detect_analysis_gives_the_same_figures_on_data_read_per_batch(tmp_path):
    """pair, real-vs-real, multiway, sample size, a frequency band and a crop: each arm's metrics are the same to the
    last digit whether the images are held in memory or read from disk a batch at a time."""
    from synthdata.detection import arms_for, run_arm
    from synthdata.sources import to_real_format

    root = _folder(tmp_path / "real", classes=2, per_class=40)
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        for i in range(50):
            write_png(tmp_path / name / f"{i:03d}.png", np.clip(rng.normal(128, 40 if name == "a" else 70, (8, 8, 3)), 0, 255))
    detect = DetectSpec(sources={"a": {"type": "folder", "path": tmp_path / "a"}, "b": {"type": "folder", "path": tmp_path / "b"}},
                        sample_sizes=(10,), bands={"radii": (0.5,)}, crop_sizes=(4,), real_vs_real=True, multiway=True)
    detector = ClassifierSpec(epochs=2, batch_size=16, width=8)
    results = {}
    for limit in (1024, 0):
        from synthdata.data import read_image_folder

        splits = make_splits(DataSpec(source="folder", root=root, in_memory_mb=limit), seed=0)
        sources = {n: to_real_format(read_image_folder(tmp_path / n, in_memory_mb=limit), splits.train, n) for n in ("a", "b")}
        assert is_lazy(sources["a"].images) == (limit == 0)
        from synthdata.data import concat

        real_eval = concat(splits.heldout, splits.test)
        results[limit] = {arm.name: run_arm(arm, detect, detector, splits.train, real_eval, sources).metrics
                          for arm in arms_for(detect, ["a", "b"])}
    assert set(results[0]) >= {"pair/a/seed0", "real_vs_real/seed0", "multiway/seed0", "size/a/n=10/seed0", "band/b/high/seed0",
                               "crop/a/size=4/seed0"}
    for arm, metrics in results[1024].items():
        # The same decisions exactly; scores to float32 rounding (a batch read into fresh memory may take another
        # vectorised path through a convolution than a slice of a held tensor).
        decisions = {k: v for k, v in metrics.items() if not any(w in k for w in ("auc", "bce", "jsd"))}
        assert decisions == {k: results[0][arm][k] for k in decisions}, arm
        assert metrics == pytest.approx(results[0][arm], rel=1e-8, nan_ok=True), arm


@pytest.mark.slow
def test_a_detect_study_on_folders_read_per_batch_runs_through_ray(local_ray, tracking_uri, tmp_path):
    """The study path: lazy real data and a lazy folder source travel to the arms (Ray tasks) as paths, and the arms'
    figures in MLflow are those of the same study held in memory."""
    from loops.study import run_study
    from synthdata.runs import finished_arms, study_run
    from synthdata.spec import parse_spec

    root = _folder(tmp_path / "real", classes=2, per_class=40)
    rng = np.random.default_rng(1)
    for i in range(60):
        write_png(tmp_path / "gen" / f"{i:03d}.png", np.clip(rng.normal(128, 60, (8, 8, 3)), 0, 255))
    figures = {}
    for limit in (1024, 0):
        study = {"name": f"lazy{limit}", "kind": "detect", "data": {"source": "folder", "root": str(root), "in_memory_mb": limit},
                 "detector": {"epochs": 2, "batch_size": 16, "width": 8},
                 "detect": {"sources": {"gen": {"type": "folder", "path": str(tmp_path / "gen")}}, "bands": {"radii": [0.5]}},
                 "tracking": {"report_dir": str(tmp_path / "runs"), "sample_grid": True}}
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
        result = run_study(parse_spec(study), tracking_uri=tracking_uri, show_progress=False)
        assert not result.failed
        parent = study_run(tracking_uri, experiment=f"lazy{limit}")
        figures[limit] = {name: metrics for name, _, metrics in finished_arms(tracking_uri, parent.info.run_id)}
    assert set(figures[0]) == set(figures[1024]) and "band/gen/high/seed0" in figures[0]
    for arm in figures[0]:
        assert figures[0][arm]["detectability"] == figures[1024][arm]["detectability"], arm


def test_generators_fit_a_set_read_per_batch_as_they_fit_it_in_memory(tmp_path):
    """The diffusion UNet and the example plug-in (a VAE) take their batches from disk when the set is lazy: the same
    weights as from the set in memory. The Gaussian, which needs every image at once, asks for them and gets them."""
    from synthdata_vae import ConditionalVAE

    from synthdata.generators import create_generator
    from synthdata.spec import parse_spec

    root = _folder(tmp_path / "real", classes=2, per_class=24)
    held = make_splits(DataSpec(source="folder", root=root), seed=0).train
    lazy = make_splits(DataSpec(source="folder", root=root, in_memory_mb=0), seed=0).train
    diffusion = parse_spec({"name": "d", "generator": {"name": "diffusion", "channels": [8, 8], "train_steps": 3, "batch_size": 8,
                                                       "attention": False}}).generator
    gaussian = parse_spec({"name": "g", "generator": {"name": "gaussian", "covariance": "diag"}}).generator
    for make in (lambda: ConditionalVAE(shape=(3, 8, 8), num_classes=2, train_steps=5, batch_size=8),
                 lambda: create_generator(diffusion, (3, 8, 8), 2), lambda: create_generator(gaussian, (3, 8, 8), 2)):
        a, b = make(), make()
        a.fit(held, seed=1)
        b.fit(lazy, seed=1)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), type(a).__name__


def test_a_flat_folder_is_one_class(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(30):
        write_png(tmp_path / "flat" / f"{i:03d}.png", rng.integers(0, 256, (8, 8)))
    for limit in (128, 0):
        s = make_splits(DataSpec(source="folder", root=tmp_path / "flat", in_memory_mb=limit), seed=0)
        assert s.train.num_classes == 1 and set(s.train.labels.tolist()) == {0} and s.train.shape == (1, 8, 8)
