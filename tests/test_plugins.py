"""Bring your own model: generator plug-ins by registered name, import path or object, through Ray into MLflow.

The example plug-in (`examples/synthdata-vae`, installed by `make install` as a user's package
would be) registers `vae` through the entry point group `synthdata.generators`.
"""
from __future__ import annotations

import re

import pytest
import torch
from docblocks import blocks, pages
from helpers import tiny_study
from mlflow.tracking import MlflowClient

from synthdata.errors import SpecError
from synthdata.plugins import registered, resolve
from synthdata.spec import PluginSpec, parse_spec

VAE = {"name": "vae", "params": {"latent": 8, "hidden": 64, "train_steps": 150}}


def test_builtins_and_installed_plugins_resolve_through_one_registry():
    names = registered("generator")
    assert {"diffusion", "gaussian", "gmm", "vae"} <= set(names)  # vae: the installed example's entry point
    from synthdata_vae import ConditionalVAE

    from synthdata.generators.gaussian import GaussianGenerator

    assert resolve("generator", "gaussian", "generator.name") is GaussianGenerator
    assert resolve("generator", "vae", "generator.name") is ConditionalVAE
    assert resolve("generator", "synthdata_vae:ConditionalVAE", "generator.name") is ConditionalVAE
    spec = parse_spec(tiny_study(generator=VAE)).generator
    assert isinstance(spec, PluginSpec) and spec.params["latent"] == 8


@pytest.mark.parametrize("name, message", [
    ("gan", "unknown generator 'gan' (known: diffusion, gaussian, gmm"),
    ("no_such_package.models:GAN", "cannot import 'no_such_package.models' (ModuleNotFoundError"),
    ("synthdata_vae:TinyGAN", "module 'synthdata_vae' has no attribute 'TinyGAN'"),
    ("collections:OrderedDict", "'OrderedDict' is not a generator: it has no fit, sample, state_dict"),
])
def test_a_plugin_that_cannot_be_a_generator_is_refused_when_the_file_is_validated(name, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(tiny_study(generator={"name": name}))


def test_the_vae_plugin_fits_and_samples_reproducibly(digits_splits):
    from synthdata.generators import create_generator

    train = digits_splits.train
    spec = parse_spec(tiny_study(generator=VAE)).generator
    a, b = (create_generator(spec, train.shape, train.num_classes) for _ in range(2))
    assert a.fit(train, seed=3)["final_loss"] == b.fit(train, seed=3)["final_loss"]
    labels = torch.arange(20) % 10
    x = a.sample(labels, seed=1)
    assert x.shape == (20, *train.shape) and x.min() >= -1 and x.max() <= 1 and torch.equal(x, b.sample(labels, seed=1))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.sample(labels, seed=2), b.sample(labels, seed=2))


@pytest.fixture(scope="module")
def digits_splits():
    from synthdata.data import make_splits
    from synthdata.spec import DataSpec

    return make_splits(DataSpec(limit=300), seed=0)


def _statuses(uri: str, parent_id: str) -> dict[str, str]:
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_run(parent_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.info.run_name: r.info.status for r in runs}


def test_a_plugin_generator_runs_a_loop_through_ray_like_a_builtin(local_ray, tracking_uri, tmp_path):
    """`name: vae` (installed, by entry point) in a loop study: every arm and generation logged as for a built-in."""
    import synthdata

    study = tiny_study(name="vae_loop", generator=VAE, data={"limit": 300}, tracking={"report_dir": str(tmp_path / "runs")},
                       loop={"types": ["replace", "augment"], "generations": 2, "samples_per_generation": 200})
    result = synthdata.run(study, tracking_uri=tracking_uri, progress=False)
    assert not result.failed and set(_statuses(tracking_uri, result.parent_run_id).values()) == {"FINISHED"}
    table = result.table
    assert sorted(table["generation"].unique()) == [0, 1, 2] and table["detectability"].notna().all()
    fitted = table[table["generation"] >= 1]
    assert fitted["final_loss"].notna().all() and fitted["downstream_accuracy"].between(0, 1).all()  # the plug-in's own figures too
    c = MlflowClient(tracking_uri)
    parent = c.get_run(result.parent_run_id)
    assert parent.data.params["generator.name"] == "vae" and parent.data.params["generator.params.latent"] == "8"


def test_a_generator_class_given_as_an_object_and_a_plugin_that_fails_in_one_arm(local_ray, tracking_uri, tmp_path):
    """The Python API takes a class (here defined in the test, so Ray ships it by value). Its fit raises on the larger
    training sets `augment` builds: that arm ends FAILED with the reason, the `replace` arm finishes, the study is FAILED."""
    from synthdata_vae import ConditionalVAE

    import synthdata

    class Fussy(ConditionalVAE):
        def fit(self, data, *, seed, progress=None):
            if len(data.images) > 250:
                raise ValueError(f"Fussy will not train on {len(data.images)} images")
            return super().fit(data, seed=seed, progress=progress)

    study = tiny_study(name="fussy", data={"limit": 200}, tracking={"report_dir": str(tmp_path / "runs")},
                       loop={"types": ["replace", "augment"], "generations": 2, "samples_per_generation": 150})
    result = synthdata.run(study, generator=Fussy, params=VAE["params"], tracking_uri=tracking_uri, progress=False)
    assert set(result.failed) == {"augment/seed0"} and "Fussy will not train on" in result.failed["augment/seed0"]
    statuses = _statuses(tracking_uri, result.parent_run_id)
    assert statuses == {"augment/seed0": "FAILED", "replace/seed0": "FINISHED"}
    assert MlflowClient(tracking_uri).get_run(result.parent_run_id).info.status == "FAILED"


def test_detectability_in_one_call_on_tensors_and_folders(tmp_path):
    """Identical distributions give ~0.5; a known corruption is detected, from tensors and from folders of PNGs."""
    import numpy as np
    from helpers import write_png

    import synthdata

    g = torch.Generator().manual_seed(0)
    real, same = (torch.rand(400, 1, 8, 8, generator=g) * 2 - 1 for _ in range(2))
    null = synthdata.detectability(real, same, detector={"epochs": 5})
    assert null.ci_low <= 0.5 <= null.ci_high and null.auc_ci_low <= 0.5 <= null.auc_ci_high
    for i, image in enumerate(real[:200]):
        write_png(tmp_path / "real" / f"{i}.png", ((image[0].numpy() + 1) * 127.5).round())
        write_png(tmp_path / "dim" / f"{i}.png", ((image[0].numpy() * 0.3 + 1) * 127.5).round())
    found = synthdata.detectability(tmp_path / "real", tmp_path / "dim", detector={"epochs": 5})
    # A short training ranks the dimmed images apart before its threshold settles: the scores' test sees more.
    assert found.auc > 0.95 and found.auc_p_value < 1e-10 and found.p_value < 0.01
    assert np.isclose(found.n_eval, 2 * round(200 * 0.3))


@pytest.mark.parametrize("block", [b for page in pages() for b in blocks(page, "python") if b.mark == "ray"],
                         ids=lambda b: b.page.stem)
def test_the_manuals_study_examples_run(block, tmp_path, monkeypatch, local_ray):
    """Every Python example of the manual that runs a study (marked `<!-- test: ray -->`: the "your own generator"
    one among them), executed as written in a temporary directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    namespace: dict = {}
    exec(compile(block.code, str(block.page), "exec"), namespace)
    assert not namespace["result"].failed and len(namespace["result"].table) > 0


def test_a_plugin_generator_is_a_detect_source_through_ray(local_ray, tracking_uri, tmp_path):
    """`type: generator` with the installed `vae`: fitted on Ray per seed, then told apart from real digits."""
    import synthdata

    study = {"name": "vae_detect", "kind": "detect", "data": {"limit": 300}, "detector": {"epochs": 3, "batch_size": 64},
             "detect": {"sources": {"vae": {"type": "generator", "generator": VAE}}, "real_vs_real": False},
             "tracking": {"report_dir": str(tmp_path / "runs")}}
    result = synthdata.run(study, tracking_uri=tracking_uri, progress=False)
    row = result.table.set_index("arm").loc["pair/vae/seed0"]
    assert not result.failed and 0.5 <= row["detectability"] <= 1 and row["n_train_per_class"] > 0


def test_your_own_data_loader_in_every_layout_and_its_bad_returns():
    """`data.source: package.module:load` with `params`: uint8 in any layout, a Dataset of PIL images, floats in [-1, 1]."""
    import numpy as np
    from PIL import Image

    from synthdata.data import as_image_set, make_splits, study_splits
    from synthdata.errors import DataError
    from synthdata.spec import DataSpec

    spec = DataSpec(source="helpers:load_blobs", params={"n": 120})
    splits = make_splits(spec, seed=0)
    assert splits.train.shape == (3, 8, 8) and splits.train.num_classes == 3 and splits.train.levels == 256
    assert len(splits.train) + len(splits.heldout) + len(splits.test) == 120
    per_seed = study_splits(spec, [0, 1])
    assert not torch.equal(per_seed[0].train.images, per_seed[1].train.images)  # the split is per seed, as for built-ins
    import helpers

    hwc, labels = helpers.load_blobs(n=30)
    chw = as_image_set(helpers.load_blobs(n=30, channels_last=False), "x")
    assert torch.equal(as_image_set((hwc, labels), "x").images, chw.images)  # (N, H, W, C) and (N, C, H, W) alike
    pil = [(Image.fromarray(im), int(k)) for im, k in zip(hwc, labels)]
    assert torch.equal(as_image_set(pil, "x").images, chw.images)  # a Dataset (here a list) of PIL images
    floats = as_image_set((chw.images, labels), "x")
    assert floats.levels is None and torch.equal(floats.images, chw.images)
    grey = as_image_set((hwc[..., 0], labels), "x")
    assert grey.shape == (1, 8, 8)
    for bad, message in [((chw.images * 3, labels), "float images must be finite and in [-1, 1]"),
                         ((hwc, labels[:-1]), "30 images and 29 labels"),
                         ("images", "returned str"),
                         ((np.zeros((4, 8, 8, 5), np.uint8), np.arange(4)), "1 or 3 channels")]:
        with pytest.raises(DataError, match=re.escape(message)):
            as_image_set(bad, "x")
    with pytest.raises(DataError, match=re.escape("data.source: helpers:failing_loader raised FileNotFoundError: no such archive")):
        make_splits(DataSpec(source="helpers:failing_loader"))


@pytest.mark.parametrize("data, message", [
    ({"source": "mnst"}, "data.source: unknown source 'mnst' (choose digits, mnist"),
    ({"source": "no_such_package.data:load"}, "data.source: cannot import 'no_such_package.data'"),
    ({"source": "helpers:load_blobz"}, "data.source: module 'helpers' has no attribute 'load_blobz'"),
    ({"source": "digits", "params": {"n": 3}}, "data.params: only your own loader takes params"),
    ({"source": "helpers:load_blobs", "params": {"nn": 3}}, "data.params: got an unexpected keyword argument 'nn' (helpers:load_blobs)"),
])
def test_a_data_source_that_cannot_load_is_refused_when_the_file_is_validated(data, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(tiny_study(data=data))


def test_a_study_on_your_own_data_through_ray(local_ray, tracking_uri, tmp_path):
    import synthdata

    study = tiny_study(name="blobs", data={"source": "helpers:load_blobs", "params": {"n": 300}}, downstream={"epochs": 30},
                       tracking={"report_dir": str(tmp_path / "runs")},
                       loop={"types": ["replace"], "generations": 1, "samples_per_generation": 100})
    result = synthdata.run(study, tracking_uri=tracking_uri, progress=False)
    assert not result.failed and list(result.table["generation"]) == [0, 1]
    assert result.table.loc[0, "downstream_accuracy"] > 0.9  # the squares' places are easy to learn from real images


def test_your_own_classifier_factory_trains_as_detector_or_downstream_model(digits_splits):
    from synthdata.metrics.downstream import downstream_accuracy

    spec = parse_spec(tiny_study(downstream={"name": "helpers:tiny_mlp", "params": {"hidden": 32}, "epochs": 20})).downstream
    train, test = digits_splits.train, digits_splits.test
    acc = downstream_accuracy(train.images, train.labels, test.images, test.labels, 10, spec, seed=0)
    assert acc.value > 0.8  # an MLP learns the digits
    with pytest.raises(SpecError, match=re.escape("detector.params: got an unexpected keyword argument 'hiden' (helpers:tiny_mlp)")):
        parse_spec(tiny_study(detector={"name": "helpers:tiny_mlp", "params": {"hiden": 32}}))
    with pytest.raises(SpecError, match=re.escape("detector.name: cannot import 'no_such_package.nets'")):
        parse_spec(tiny_study(detector={"name": "no_such_package.nets:ResNet"}))
    with pytest.raises(SpecError, match=re.escape("detector.params: only your own classifier takes params; 'cnn' is built in")):
        parse_spec(tiny_study(detector={"name": "cnn", "params": {"hidden": 3}}))


def test_a_plugin_source_whose_fit_raises_stops_a_detect_study_with_one_line(local_ray, tracking_uri, tmp_path):
    """A detect source is every arm's input: its failure ends the study (exit 2 from the CLI), naming the source."""
    import synthdata
    from synthdata.errors import UserError

    study = {"name": "bad_source", "kind": "detect", "data": {"limit": 200}, "detector": {"epochs": 1},
             "detect": {"sources": {"vae": {"type": "generator", "generator": {"name": "vae", "params": {"lr": float("nan")}}}},
                        "real_vs_real": False}, "tracking": {"report_dir": str(tmp_path / "runs")}}
    with pytest.raises(UserError, match=r"detect.sources.vae: seed 0: "):
        synthdata.run(study, tracking_uri=tracking_uri, progress=False)
