from pathlib import Path

import pytest
import yaml
from helpers import REPO, tiny_study

from synthdata.errors import SpecError
from synthdata.spec import STUDY_KINDS, flat_params, load_spec, parse_spec


def write(tmp_path: Path, data) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_defaults_are_a_valid_study():
    spec = parse_spec({"name": "s"})
    assert spec.data.source == "digits"
    assert spec.generator.name == "diffusion"
    assert spec.loop.types == ("replace", "augment")
    assert spec.experiment_name == "s"


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_validate(path, tmp_path, monkeypatch):
    # GPU-sized studies name a data root the user provides (data/cifar10), and pretrained_digits a model that
    # `synthdata pretrain` makes first (its weights are checked when the study starts): empty ones stand in here.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    (tmp_path / "data" / "scale" / "real_60000_32").mkdir(parents=True)  # scale_loop's: `python -m bench.scale --data-only`
    (tmp_path / "runs" / "pretrained" / "digits_unet").mkdir(parents=True)
    assert isinstance(load_spec(path), tuple(STUDY_KINDS.values()))


@pytest.mark.parametrize(
    "study, field, words",
    [
        ({"name": "s", "loop": {"generatons": 3}}, "loop.generatons", "unknown key"),
        ({"name": "s", "colour": "red"}, "colour", "unknown key"),
        ({"name": "s", "loop": {"generations": "three"}}, "loop.generations", "integer"),
        ({"name": "s", "loop": {"generations": 0}}, "loop.generations", "greater than or equal to 1"),
        ({"name": "s", "loop": {"types": ["replace", "shuffle"]}}, "loop.types.1", "replace"),
        ({"name": "s", "loop": {"seeds": [1, 1]}}, "loop.seeds", "unique"),
        ({"name": "s", "generator": {"name": "gan"}}, "generator", "unknown generator 'gan'"),
        ({"name": "s", "generator": {"name": "diffusion", "lr": 5}}, "generator.lr", "less than 1"),
        ({"name": "s", "generator": {"name": "gaussian", "lr": 0.1}}, "generator.lr", "unknown key"),
        ({"name": "s", "data": {"source": "folder"}}, "data.root", "required for source 'folder'"),
        ({"name": "s", "data": {"source": "folder", "root": "/no/such/dir"}}, "data.root", "does not exist: /no/such/dir"),
        ({"name": "s", "loop": {"types": ["replace"], "sweep": {"generator.lr": [0.1]}}}, "loop.sweep", "cannot sweep"),
        ({"name": "s", "loop": {"sweep": {"generator.temperature": [0.9]}}}, "loop.sweep", "does not apply to generator 'diffusion'"),
        ({"name": "s", "loop": {"real_fraction": 1.5}}, "loop.real_fraction", "less than 1"),
        ({"name": "s", "metrics": ["toy"]}, "metrics", "needs data.source: gaussian"),
        ({"name": "s", "generator": {"name": "diffusion", "cfg_scale": 3}}, "generator", "set cond_dropout > 0"),
        ({"name": "s", "data": {"split": {"train": 0.8, "heldout": 0.2, "test": 0.2}}}, "data.split", "at most 1"),
        ({"name": "bad name!"}, "name", "pattern"),
        ({"loop": {}}, "name", "required"),
    ],
)
def test_bad_fields_are_named(tmp_path, study, field, words):
    path = write(tmp_path, study)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {field}: "), msg
    assert words in msg
    assert "\n" not in msg


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match=r"not valid YAML \(line \d+\)"):
        load_spec(write(tmp_path, "name: s\nloop: [unclosed\n"))
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(SpecError, match="study file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_flat_params_are_dotted_strings():
    params = flat_params(parse_spec(tiny_study()))
    assert params["generator.name"] == "gaussian"
    assert params["loop.types"] == "replace,augment"
    assert params["loop.generations"] == "2"
    assert all(isinstance(v, str) for v in params.values())


# The study-file reference (every key with its default) is written from the spec: tests/test_docs.py checks it.
