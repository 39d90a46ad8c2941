"""kind: detect — the detectability instrument: a detector told real from each source, and what it keys on."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union, get_args

from pydantic import Field, field_validator, model_validator

from synthdata.spec.base import ExistingDir, ExistingFile, Strict, Unique
from synthdata.spec.generators import GUIDABLE, GeneratorSpec, GuidanceSpec, not_guidable
from synthdata.spec.study import StudyBase


class GeneratorSource(Strict):
    """A generator of this project, trained here on the real training split, then sampled."""

    type: Literal["generator"]
    generator: GeneratorSpec = Field(..., description="As in a loop study's `generator` section.")
    size: int | None = Field(None, ge=10, description="Images to draw (default: as many as the real training split).")
    guidance: GuidanceSpec | None = Field(None, description="Draw them with detector guidance (diffusion only), its "
                                          "classifier trained on the same real images as the generator.")

    @model_validator(mode="after")
    def _guided_diffusion(self) -> "GeneratorSource":
        if self.guidance is not None and self.guidance.scale > 0 and self.generator.name not in GUIDABLE:
            raise ValueError(not_guidable(self.generator.name))
        return self


class SamplesSource(Strict):
    """A saved sample set (samples.safetensors from a study's checkpoint or pool)."""

    type: Literal["samples"]
    path: ExistingFile


class FolderSource(Strict):
    """A folder of images (PNG, JPEG, ...), flat or in sub-folders; resized to the real images' size."""

    type: Literal["folder"]
    path: ExistingDir


class PipelineSource(Strict):
    """A pretrained diffusers pipeline (DDPMPipeline, DDIMPipeline, ...) from a local directory or a hub id."""

    type: Literal["pipeline"]
    path: str = Field(..., min_length=1, description="A local directory saved with save_pretrained, or a hub id (needs a network).")
    size: int = Field(1000, ge=10, description="Images to draw.")
    sampling_steps: int = Field(50, ge=1, le=4000, description="Denoising steps per image.")
    batch_size: int = Field(250, ge=1)

    @model_validator(mode="after")
    def _where(self) -> "PipelineSource":
        local = Path(self.path)
        if local.is_dir():
            if not (local / "model_index.json").is_file():
                raise ValueError(f"path: {self.path} has no model_index.json (save the pipeline with save_pretrained)")
        elif self.path.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.\-]+/[\w.\-]+", self.path):
            raise ValueError(f"path: directory does not exist: {self.path}")
        return self


class CheckpointSource(Strict):
    """A generator checkpoint of this project from a loop study's artifacts: a diffusion generator's directory
    (`checkpoints/generation_XXX/generator/`, diffusers' format: it says what it is), or a `generator.safetensors`
    file with the `generator:` section of the study that saved it."""

    type: Literal["checkpoint"]
    path: Path
    generator: GeneratorSpec | None = Field(None, description="The generator section of the study that saved it "
                                            "(needed for a .safetensors file).")
    size: int | None = Field(None, ge=10, description="Images to draw (default: as many as the real training split).")

    @model_validator(mode="after")
    def _loadable(self) -> "CheckpointSource":
        if self.path.is_dir():
            if not (self.path / "synthdata.json").is_file():
                raise ValueError(f"path: {self.path} is not a generator checkpoint directory (no synthdata.json)")
        elif not self.path.is_file():
            raise ValueError(f"path: does not exist: {self.path}")
        elif self.generator is None:
            raise ValueError("generator: required for a .safetensors checkpoint (the generator section that saved it)")
        return self


SOURCE_SPECS = (GeneratorSource, SamplesSource, FolderSource, PipelineSource, CheckpointSource)
SOURCE_TYPES: tuple[str, ...] = tuple(get_args(s.model_fields["type"].annotation)[0] for s in SOURCE_SPECS)
SourceSpec = Annotated[
    Union[GeneratorSource, SamplesSource, FolderSource, PipelineSource, CheckpointSource], Field(discriminator="type")
]


class BandSpec(Strict):
    """Frequency bands for the band analysis: radii as fractions of the Nyquist frequency."""

    radii: tuple[float, ...] = Field(
        (), description="Cut-offs in (0, 1): radii [a, b] give bands low (< a), a-b (a to b) and high (> b). Empty: off."
    )

    @field_validator("radii")
    @classmethod
    def _increasing(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < r < 1 for r in v) or list(v) != sorted(set(v)):
            raise ValueError("radii must be increasing, each in (0, 1)")
        return v


class DetectSpec(Strict):
    """The sources and analyses of a detect study."""

    sources: dict[str, SourceSpec] = Field(..., min_length=1, description="Generated image sources, by name.")
    seeds: Annotated[tuple[int, ...], Unique] = Field((0,), min_length=1, description="One detector per seed for every analysis.")
    train_size: int | None = Field(
        None, ge=10, description="Training images per class (real and generated) for the detector (default: all there are)."
    )
    eval_fraction: float = Field(0.3, gt=0, lt=1, description="Share of each generated source held out for evaluation.")
    real_vs_real: bool = Field(True, description="Run the real-vs-real baseline alongside (it must come out near 0.5).")
    multiway: bool = Field(True, description="With two or more sources: one detector over real + every source, with a confusion matrix.")
    sample_sizes: tuple[int, ...] = Field((), description="Accuracy against training images per class: these sizes (empty: off).")
    bands: BandSpec = Field(default_factory=BandSpec, description="Accuracy per frequency band (FFT masks).")
    crop_sizes: tuple[int, ...] = Field((), description="Accuracy on random crops of these sizes, in pixels (empty: off).")
    examples: int = Field(16, ge=0, le=256, description="Most and least confident real and generated examples shown per source.")

    @field_validator("sources")
    @classmethod
    def _names(cls, v: dict) -> dict:
        for name in v:
            if not name or not all(ch.isalnum() or ch in "_-." for ch in name) or name == "real":
                raise ValueError(f"source name '{name}': use letters, digits, _ - . (and not 'real')")
        return v

    @field_validator("sample_sizes", "crop_sizes")
    @classmethod
    def _sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(x < 2 for x in v) or len(set(v)) != len(v):
            raise ValueError("sizes must be distinct and >= 2")
        return tuple(sorted(v))


class DetectStudy(StudyBase):
    """A detect study file."""

    kind: Literal["detect"] = Field(..., description="detect: the detectability instrument (section `detect`).")
    detect: DetectSpec = Field(..., description="The sources and analyses.")

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.detect.seeds
