"""The study file: YAML validated into a typed spec before any compute starts.

One spec class per study kind (`LoopStudy`, `MixStudy`, `DetectStudy`, `GuideStudy`),
picked by the file's `kind` key (default: loop) from `STUDY_KINDS`, the one registry of
kinds. Every field is documented in these modules; `synthdata validate FILE` checks a
file against them. Unknown keys are refused everywhere, so a typo never silently falls
back to a default.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import ValidationError

from synthdata.errors import SpecError
from synthdata.spec.base import (
    AugmentSpec,
    ClassifierSpec,
    DataSpec,
    ExistingDir,
    ExistingFile,
    FeatureSpec,
    ResourcesSpec,
    SplitSpec,
    Strict,
    ToyDataSpec,
    TrackingSpec,
)
from synthdata.spec.detect import (
    SOURCE_TYPES,
    BandSpec,
    CheckpointSource,
    DetectSpec,
    DetectStudy,
    FolderSource,
    GeneratorSource,
    PipelineSource,
    SamplesSource,
    SourceSpec,
)
from synthdata.spec.generators import (
    GENERATOR_NAMES,
    DiffusionSpec,
    GaussianSpec,
    GeneratorSpec,
    GMMSpec,
    GuidanceSpec,
    PluginSpec,
)
from synthdata.spec.guide import GuideSpec, GuideStudy
from synthdata.spec.loop import SWEEPABLE, LoopSpec, LoopStudy, LoopType, with_value
from synthdata.spec.mix import MixMode, MixSpec, MixStudy, SearchSpec
from synthdata.spec.study import METRICS, GeneratorStudy, MeasuredStudy, Metric, StudyBase

# The one registry of study kinds: each kind's spec class; its section has the kind's name.
STUDY_KINDS: dict[str, type[StudyBase]] = {"loop": LoopStudy, "mix": MixStudy, "detect": DetectStudy, "guide": GuideStudy}
KINDS: tuple[str, ...] = tuple(STUDY_KINDS)
StudySpec = Union[LoopStudy, MixStudy, DetectStudy, GuideStudy]

__all__ = [
    "AugmentSpec", "BandSpec", "CheckpointSource", "ClassifierSpec", "FolderSource", "GeneratorSource", "PipelineSource",
    "SamplesSource", "DataSpec", "DetectSpec", "DetectStudy", "DiffusionSpec", "ExistingDir",
    "ExistingFile", "FeatureSpec", "GENERATOR_NAMES", "GMMSpec", "GaussianSpec", "GeneratorSpec", "GeneratorStudy", "PluginSpec",
    "GuidanceSpec", "GuideSpec", "GuideStudy", "KINDS", "LoopSpec", "LoopStudy", "LoopType", "METRICS", "MeasuredStudy",
    "Metric", "MixMode", "MixSpec", "MixStudy", "ResourcesSpec", "SOURCE_TYPES", "STUDY_KINDS", "SWEEPABLE", "SearchSpec",
    "SourceSpec", "SplitSpec", "Strict", "StudyBase", "StudySpec", "ToyDataSpec", "TrackingSpec", "flat_params",
    "load_spec", "parse_spec", "spec_hash", "spec_yaml", "with_value",
]


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic puts the discriminator tag in the location ("generator.diffusion.lr"); drop it.
    # So is a source's type tag ("detect.sources.NAME.samples.path").
    parts = []
    for i, p in enumerate(loc):
        after_generator = i >= 1 and loc[i - 1] == "generator" and (p in GENERATOR_NAMES or p == "plugin")
        after_source = i >= 2 and loc[i - 2] == "sources" and p in SOURCE_TYPES
        if not (after_generator or after_source):
            parts.append(str(p))
    return ".".join(parts) or "(top level)"


def _format_error(source: str | Path, err: ValidationError, kind: str) -> str:
    first = err.errors()[0]
    msg = first["msg"].removeprefix("Value error, ").replace("Tuple should", "List should")  # YAML has lists
    loc = first["loc"]
    if first["type"] == "extra_forbidden" and len(loc) == 1 and loc[0] in STUDY_KINDS:
        msg = f"not used by a {kind} study (set kind: {loc[0]}, or remove the section)"
    elif first["type"] == "extra_forbidden" and len(loc) == 1 and any(loc[0] in c.model_fields for c in STUDY_KINDS.values()):
        msg = f"not used by a {kind} study"
    elif first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing" and loc == (kind,):
        msg = f"required for a {kind} study"
    elif first["type"] == "union_tag_invalid":
        msg = f"unknown name {first.get('ctx', {}).get('tag')!r} (choose {first.get('ctx', {}).get('expected_tags')})"
    path = _field_path(loc)
    # Cross-field checks name their own field ("loop.sweep: ..."); use it when it is more precise.
    named = re.match(r"^([A-Za-z_][\w.]*): (.*)$", msg, re.S)
    if named and (path == "(top level)" or named.group(1).startswith(path)):
        path, msg = named.groups()
    elif named:  # a section's check naming one of its own fields ("ratios: ...")
        path, msg = f"{path}.{named.group(1)}", named.group(2)
    more = len(err.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {path}: {msg}{suffix}"


def parse_spec(data: Any, source: str | Path = "<study>") -> StudySpec:
    """Validate a mapping into the spec of its `kind`; raise SpecError naming the source and field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the study file must be a mapping of keys to values")
    kind = data.get("kind", "loop")
    if kind not in STUDY_KINDS:
        raise SpecError(f"{source}: kind: unknown kind {kind!r} (choose {', '.join(KINDS)})")
    try:
        return STUDY_KINDS[kind].model_validate({**data, "kind": kind})
    except ValidationError as err:
        raise SpecError(_format_error(source, err, kind)) from None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a YAML study file (relative data roots are relative to the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: study file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SpecError(f"{path}: not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file") from None
    return parse_spec(data, path)


def spec_hash(spec: StudySpec) -> str:
    """A short fingerprint of what the study computes (tracking and resources excluded), to match a resume."""
    data = spec.model_dump(mode="json", exclude={"tracking", "resources", "description"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def spec_yaml(spec: StudySpec) -> str:
    """The validated spec as a study file, every default filled in (`synthdata validate` prints it; runs keep it)."""
    dump = spec.model_dump(mode="json")
    return yaml.safe_dump({"name": dump["name"], "kind": dump["kind"], **dump}, sort_keys=False)


def flat_params(spec: StudySpec) -> dict[str, str]:
    """The spec as dotted MLflow params (`generator.train_steps` -> '3000')."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    walk("", spec.model_dump(mode="json"))
    return out
