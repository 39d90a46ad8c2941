"""Bad input: every malformed study file or data directory exits 2 with one line naming the field or file.

The cases run the CLI in-process (the same `main` the console script calls), so that
forty of them cost seconds; `test_cli.py` runs the installed command as a subprocess.
After each, no MLflow run is left RUNNING.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from helpers import tiny_study, write_png

from synthdata.cli import main

DIFFUSION = {"name": "diffusion", "channels": [16, 32], "train_steps": 5}


def _folder(root: Path, classes: int = 2, per_class: int = 10, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            write_png(root / f"c{c}" / f"{i}.png", rng.integers(0, 256, (size, size)))
    return root


def _corrupt(root: Path) -> Path:
    _folder(root)
    (root / "c1" / "3.png").write_bytes(b"garbage, not a PNG")
    return root / "c1" / "3.png"


def _truncated(root: Path) -> Path:
    _folder(root, size=32)
    path = root / "c0" / "5.png"
    path.write_bytes(path.read_bytes()[:60])
    return path


def _mixed_sizes(root: Path) -> Path:
    _folder(root)
    write_png(root / "c1" / "odd.png", np.zeros((12, 12)))
    return root / "c1" / "odd.png"


def _no_images(root: Path) -> Path:
    _folder(root)
    (root / "c2").mkdir()
    (root / "c2" / "notes.txt").write_text("not an image")
    return root / "c2"


def _one_class(root: Path) -> Path:
    _folder(root, classes=1)
    return root


def _empty(root: Path) -> Path:
    root.mkdir(parents=True)
    return root


def _bytes(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def folder_study(**data) -> dict:
    return tiny_study(data={"source": "folder", "root": "data", **data})


# (id, study (dict or raw text; None: no file), data setup, the text the one line must contain)
SPEC_CASES: list[tuple[str, object, str]] = [
    ("unknown-top-level-key", {**tiny_study(), "nmae": "x"}, "nmae: unknown key"),
    ("unknown-nested-key", tiny_study(loop={"generatons": 3}), "loop.generatons: unknown key"),
    ("wrong-type", tiny_study(loop={"generations": "three"}), "loop.generations: Input should be a valid integer"),
    ("zero-generations", tiny_study(loop={"generations": 0}), "loop.generations: Input should be greater than or equal to 1"),
    ("real-fraction-above-1", tiny_study(loop={"real_fraction": 1.5}), "loop.real_fraction: Input should be less than 1"),
    ("real-fraction-zero", tiny_study(loop={"real_fraction": 0}), "loop.real_fraction: Input should be greater than 0"),
    ("splits-over-1", tiny_study(data={"split": {"train": 0.8}}), "data.split: train + heldout + test must be at most 1"),
    ("negative-lr", tiny_study(generator={**DIFFUSION, "lr": -0.1}), "generator.lr: Input should be greater than 0"),
    ("unknown-generator", tiny_study(generator={"name": "gan"}), "generator: unknown generator 'gan'"),
    ("plugin-does-not-import", tiny_study(generator={"name": "no_such_package.models:GAN"}),
     "generator: cannot import 'no_such_package.models' (ModuleNotFoundError"),
    ("plugin-missing-attribute", tiny_study(generator={"name": "synthdata_vae:TinyGAN"}),
     "generator: module 'synthdata_vae' has no attribute 'TinyGAN'"),
    ("plugin-not-a-generator", tiny_study(generator={"name": "collections:OrderedDict"}),
     "generator: 'OrderedDict' is not a generator: it has no fit, sample, state_dict, load_state_dict"),
    ("init-previous-toy", tiny_study(loop={"init": "previous"}), "loop.init: generator 'gaussian' cannot start from given weights"),
    ("plugin-unknown-param-key", tiny_study(generator={"name": "vae", "parms": {}}), "generator.parms: unknown key"),
    ("plugin-wrong-param", tiny_study(generator={"name": "vae", "params": {"latnt": 8}}),
     "generator.params: got an unexpected keyword argument 'latnt' (vae)"),
    ("unknown-loop-type", tiny_study(loop={"types": ["replace", "recycle"]}), "loop.types.1: Input should be"),
    ("empty-loop-types", tiny_study(loop={"types": []}), "loop.types: List should have at least 1 item"),
    ("duplicate-seeds", tiny_study(loop={"seeds": [0, 0]}), "loop.seeds: entries must be unique"),
    ("unsweepable", tiny_study(loop={"sweep": {"detector.epochs": [1, 2]}}), "loop.sweep: cannot sweep 'detector.epochs'"),
    ("sweep-wrong-generator", tiny_study(loop={"sweep": {"generator.cfg_scale": [1, 2]}}),
     "loop.sweep: generator.cfg_scale does not apply to generator 'gaussian'"),
    ("sweep-invalid-value", tiny_study(loop={"sweep": {"loop.real_fraction": [0.5, 2]}}), "loop.real_fraction: Input should be less than 1"),
    ("missing-name", {k: v for k, v in tiny_study().items() if k != "name"}, "name: Field required"),
    ("bad-name", tiny_study(name="my study!"), "name: String should match pattern"),
    ("guidance-without-dropout", tiny_study(generator={**DIFFUSION, "cfg_scale": 3}), "generator: cfg_scale != 1 needs"),
    ("toy-metric-on-images", tiny_study(metrics=["toy"]), "metrics: 'toy' needs data.source: gaussian"),
    ("inception-without-weights", tiny_study(metrics=["features"], features={"name": "inception"}), "features.weights: required"),
    ("inception-missing-weights", tiny_study(metrics=["features"], features={"name": "inception", "weights": "nope.pth"}),
     "features.weights: file does not exist: nope.pth"),
    ("limit-too-small", tiny_study(data={"limit": 5}), "data.limit: Input should be greater than or equal to 20"),
    ("zero-cpus", tiny_study(resources={"cpus_per_arm": 0}), "resources.cpus_per_arm: Input should be greater than 0"),
    ("training-workers-sharing-a-gpu", tiny_study(resources={"workers_per_arm": 2, "gpus_per_arm": 0.5}),
     "resources.workers_per_arm: 2 workers with gpus_per_arm 0.5 could share a GPU, which NCCL refuses"),
    ("negative-retries", tiny_study(resources={"max_arm_retries": -1}), "resources.max_arm_retries:"),
    ("zero-temperature", tiny_study(generator={"name": "gaussian", "temperature": 0}), "generator.temperature: Input should be greater than 0"),
    ("not-a-mapping", "- name: a\n- name: b\n", "the study file must be a mapping"),
    ("empty-file", "", "the study file must be a mapping"),
    ("invalid-yaml", "name: s\n  bad: [indent\n", "not valid YAML (line 2)"),
    ("binary-file", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00", "not a text file"),
    ("no-study-file", None, "study file not found"),
    ("missing-data-root", folder_study(root="no/such/folder"), "data.root: directory does not exist: no/such/folder"),
    ("missing-mnist-root", tiny_study(data={"source": "mnist"}), "data.root: required for source 'mnist'"),
    ("mix-section-in-loop-study", {**tiny_study(), "mix": {"ratios": [0, 1]}}, "mix: not used by a loop study"),
    ("loop-section-in-mix-study", {**tiny_study(), "kind": "mix"}, "loop: not used by a mix study"),
    ("negative-mix-ratio", {"name": "m", "kind": "mix", "mix": {"ratios": [0, -0.5]}}, "mix.ratios: ratios must be distinct and >= 0"),
    ("replace-only-above-1", {"name": "m", "kind": "mix", "mix": {"modes": ["replace"], "ratios": [2, 4]}},
     "mix.ratios: replace needs ratios <= 1"),
    ("mix-samples-missing", {"name": "m", "kind": "mix", "mix": {"samples": "pool.safetensors"}},
     "mix.samples: file does not exist: pool.safetensors"),
    ("guide-without-unguided", {"name": "g", "kind": "guide", "guide": {"scales": [1, 2]}},
     "guide.scales: include 0: the unguided samples every scale is compared with"),
    ("guide-negative-scale", {"name": "g", "kind": "guide", "guide": {"scales": [0, -1]}}, "guide.scales: scales must be distinct"),
    ("guidance-on-a-toy", tiny_study(guidance={"scale": 1}), "guidance: detector guidance steers a diffusion generator"),
    ("unknown-precision", tiny_study(resources={"precision": "fp8"}), "resources.precision: Input should be 'auto', 'fp32' or 'bf16'"),
    ("guided-toy-source", {"name": "d", "kind": "detect", "detect": {"sources": {"g": {
        "type": "generator", "generator": {"name": "gaussian"}, "guidance": {"scale": 1}}}}},
     "detect.sources.g.guidance: detector guidance steers a diffusion generator's sampling; generator is 'gaussian'"),
    ("guidance-unknown-key", tiny_study(generator=DIFFUSION, guidance={"scael": 1}), "guidance.scael: unknown key"),
    ("random-replace-above-1", {"name": "m", "kind": "mix", "mix": {"search": {"type": "random", "ratio_range": [0, 2]}}},
     "mix.search.ratio_range: replace needs ratios <= 1"),
    ("detect-without-section", {"name": "d", "kind": "detect"}, "detect: required for a detect study"),
    ("detect-samples-missing", {"name": "d", "kind": "detect", "detect": {"sources": {"g": {"type": "samples", "path": "no.safetensors"}}}},
     "detect.sources.g.path: file does not exist: no.safetensors"),
    ("detect-unknown-source-type", {"name": "d", "kind": "detect", "detect": {"sources": {"g": {"type": "gan"}}}},
     "detect.sources.g: unknown name 'gan'"),
    ("detect-pipeline-missing", {"name": "d", "kind": "detect", "detect": {"sources": {"p": {"type": "pipeline", "path": "./ddpm"}}}},
     "detect.sources.p.path: directory does not exist: ./ddpm"),
    ("detect-pipeline-without-index", {"name": "d", "kind": "detect", "detect": {"sources": {"p": {"type": "pipeline", "path": "."}}}},
     "detect.sources.p.path: . has no model_index.json"),
    ("detect-checkpoint-dir-not-a-generator", {"name": "d", "kind": "detect", "detect": {"sources": {"c": {"type": "checkpoint", "path": "."}}}},
     "detect.sources.c.path: . is not a generator checkpoint directory (no synthdata.json)"),
    ("detect-checkpoint-file-without-generator", {"name": "d", "kind": "detect", "detect": {"sources": {"c": {"type": "checkpoint",
                                                                                                    "path": "study.yaml"}}}},
     "detect.sources.c.generator: required for a .safetensors checkpoint"),
    ("detect-bad-bands", {"name": "d", "kind": "detect", "detect": {"sources": {"f": {"type": "folder", "path": "."}},
                                                                    "bands": {"radii": [0.5, 0.25]}}},
     "detect.bands.radii: radii must be increasing"),
    ("unknown-detector", tiny_study(detector={"name": "resnet19"}), "detector.name: 'resnet19' is neither cnn nor a timm model"),
    ("patience-without-validation", tiny_study(detector={"patience": 2}), "detector.patience: early stopping needs a validation split"),
    ("random-search-bad-range", {"name": "m", "kind": "mix", "mix": {"search": {"type": "random", "ratio_range": [1, 0.5]}}},
     "mix.search.ratio_range: give [low, high]"),
]

# Problems only reading the data (or shaping a model for it) reveals: `run` refuses them before any run opens.
DATA_CASES: list[tuple[str, dict, Callable[[Path], Path] | None, str]] = [
    ("empty-data-folder", folder_study(), _empty, "data.root: {root} has no images: give one sub-folder per class (at least two)"),
    ("one-class-folder", folder_study(), _one_class, "data.root: {root} needs at least two class sub-folders, found 1"),
    ("class-folder-without-images", folder_study(), _no_images, "data.root: class folder has no images: {path}"),
    ("corrupt-image", folder_study(), _corrupt, "{path} (image 13): cannot read image (UnidentifiedImageError)"),
    ("truncated-image", folder_study(), _truncated, "{path} (image 5): cannot read image"),
    ("mixed-image-sizes", folder_study(), _mixed_sizes, "{path}: image size (12, 12) differs from (8, 8)"),
    ("too-few-images", folder_study(), lambda root: _folder(root, per_class=2), "data: 4 images are too few to split"),
    ("mnist-not-there", tiny_study(data={"source": "mnist", "root": "data"}), _empty, "data.root: mnist not found under data"),
    ("corrupt-sample-set", {"name": "m", "kind": "mix", "mix": {"samples": "data/pool.safetensors"}},
     lambda root: _bytes(root / "pool.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"),
     "{path}: cannot read sample set"),
    ("detect-corrupt-generated-image", {"name": "d", "kind": "detect", "detect": {"sources": {"g": {"type": "folder", "path": "data"}}}},
     lambda root: _bytes(root / "gen" / "7.png", b"garbage, not a PNG"), "{path} (image 0): cannot read image"),
    ("detect-crop-larger-than-images", {"name": "d", "kind": "detect", "detect": {"sources": {"g": {"type": "folder", "path": "data"}},
                                                                                 "crop_sizes": [4, 12]}},
     lambda root: write_png(root / "gen" / "1.png", np.zeros((8, 8))) or root, "detect.crop_sizes: 12 exceeds the images' 8x8"),
    ("unwritable-sample-storage", tiny_study(tracking={"storage": "data/taken/samples"}),
     lambda root: _bytes(root / "taken", b"a file where the storage's folder would be"), "tracking.storage: cannot write to data/taken/samples"),
    ("corrupt-image-in-a-large-folder", folder_study(in_memory_mb=0), _corrupt, "{path} (image 13): cannot read image (UnidentifiedImageError)"),
    ("unet-too-deep-for-8px", tiny_study(generator={**DIFFUSION, "channels": [8, 8, 8, 8, 8]}), None,
     "generator.channels: 5 UNet levels need an image size divisible by 16, the data is 8x8"),
]


def _call(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _assert_refused(code: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err


def _assert_nothing_running(tmp_path: Path) -> None:
    """Either nothing was tracked, or every run is closed: no half-written run is claimed as live."""
    db = tmp_path / "mlflow.db"
    if not db.exists():
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exps = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(exps, "attributes.status = 'RUNNING'")


def _write(tmp_path: Path, study) -> str:
    path = tmp_path / "study.yaml"
    if isinstance(study, dict):
        path.write_text(yaml.safe_dump(study))
    elif isinstance(study, bytes):
        path.write_bytes(study)
    elif isinstance(study, str):
        path.write_text(study)
    return str(path)


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("study, needle", [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_bad_study_file(tmp_path, monkeypatch, capsys, command, study, needle):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, study)
    code, err = _call([command, path], capsys)
    _assert_refused(code, err, needle)
    assert path in err  # the line names the file
    _assert_nothing_running(tmp_path)


@pytest.mark.parametrize("study, setup, needle", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data(tmp_path, monkeypatch, capsys, study, setup, needle):
    monkeypatch.chdir(tmp_path)
    root = Path("data")
    bad = setup(root) if setup else None
    path = _write(tmp_path, study)
    code, err = _call(["validate", "-q", path], capsys)
    assert code == 0, err  # the file itself is fine; the data is not
    code, err = _call(["run", path, "--no-progress", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], capsys)
    _assert_refused(code, err, needle.format(root=root, path=bad))
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was tracked


def test_resume_of_a_different_study_is_refused(local_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    toy = {"name": "toy", "data": {"source": "gaussian"}, "generator": {"name": "gaussian"}, "metrics": ["toy"],
           "loop": {"types": ["replace"], "generations": 2}}
    path = _write(tmp_path, toy)
    uri = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    code, err = _call(["run", path, "--no-progress", *uri], capsys)
    assert code == 0, err

    code, err = _call(["run", _write(tmp_path, {**toy, "loop": {"generations": 3}}), "--resume", *uri], capsys)
    _assert_refused(code, err, "--resume: the latest run of study 'toy'")
    assert "was made from a different study file" in err
    code, err = _call(["run", _write(tmp_path, {**toy, "name": "other"}), "--resume", *uri], capsys)
    _assert_refused(code, err, "--resume: no earlier run of study 'other'")
    _assert_nothing_running(tmp_path)


@pytest.mark.parametrize("argv, needle", [
    (["detect"], "detect: give a study file, or --generated NAME=PATH"),
    (["detect", "--generated", "g=notes.txt"], "--generated g=notes.txt: not a diffusers pipeline directory"),
    (["detect", "--generated", "g=.", "--sizes", "10,many"], "--sizes: give comma-separated numbers"),
    (["detect", "--generated", "g=.", "--bands", "0.5,0.25"], "synthdata detect: detect.bands.radii: radii must be increasing"),
    (["detect", "--generated", "g=.", "--detector", "resnet19"], "detector.name: 'resnet19' is neither cnn nor a timm model"),
], ids=["nothing", "unknown-source", "bad-sizes", "bad-bands", "bad-detector"])
def test_bad_detect_command_line(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, err = _call(argv, capsys)
    _assert_refused(code, err, needle)
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_report_requests(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _assert_refused(*_call(["report"], capsys), "report: name a study file, an experiment, or --run RUN_ID")
    _assert_refused(*_call(["report", "quickstart"], capsys), "mlflow.db: no MLflow store there")
    from synthdata.tracking import get_or_create_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    get_or_create_experiment(uri, "empty")
    _assert_refused(*_call(["report", "nope", "--tracking-uri", uri], capsys), "experiment 'nope': not found in")
    _assert_refused(*_call(["report", "empty", "--tracking-uri", uri], capsys), "experiment 'empty': holds no synthdata study run")
    _assert_refused(*_call(["report", "--run", "0123abcd", "--tracking-uri", uri], capsys), "run '0123abcd': not found")


def test_a_checkpoint_of_another_model_is_refused_naming_the_source(local_ray, tmp_path, monkeypatch, capsys):
    """Sampled on Ray, so the error comes back from a worker: still one line and exit 2, nothing tracked."""
    import torch
    from safetensors.torch import save_file

    monkeypatch.chdir(tmp_path)
    save_file({"not.a.weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    study = {"name": "d", "kind": "detect", "detect": {"sources": {"c": {
        "type": "checkpoint", "path": "other.safetensors", "generator": {"name": "gaussian"}}}}}
    code, err = _call(["run", _write(tmp_path, study), "--no-progress", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], capsys)
    _assert_refused(code, err, "detect.sources.c: other.safetensors: not a checkpoint of this generator")
    # The worker read the file although the session's Ray started in another directory: the reason is the weights.
    assert "FileNotFoundError" not in err and "KeyError" in err, err
    assert not (tmp_path / "mlflow.db").exists()
