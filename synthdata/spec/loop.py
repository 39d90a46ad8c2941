"""kind: loop — self-consuming loops: loop types x swept values x seeds, generation after generation."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from synthdata.spec.base import ExistingPathOrUri, Strict, Unique
from synthdata.spec.generators import PluginSpec
from synthdata.spec.study import MeasuredStudy

LoopType = Literal["replace", "augment", "fresh", "accumulate"]

SWEEPABLE = (
    "generator.cfg_scale",
    "guidance.scale",
    "generator.temperature",
    "loop.real_fraction",
    "loop.samples_per_generation",
)


class LoopSpec(Strict):
    """The self-consuming loop: which loop types, for how many generations, with which seeds."""

    types: Annotated[tuple[LoopType, ...], Unique] = Field(("replace", "augment"), min_length=1, description="Loop types to run, one arm each per seed.")
    generations: int = Field(3, ge=1, le=10_000, description="Generations T per arm.")
    samples_per_generation: int = Field(1000, ge=2, description="Samples each generation adds to the next training set.")
    real_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="augment/fresh: the real share of each training set from generation 2 on. "
        "Default: augment keeps the whole real training set, fresh draws as many real images as samples (0.5).",
    )
    seeds: Annotated[tuple[int, ...], Unique] = Field((0,), min_length=1, description="One arm per loop type and seed.")
    sweep: dict[str, tuple[float, ...]] = Field(
        default_factory=dict,
        description="Extra arm dimensions: a dotted spec field and its values, e.g. {generator.temperature: [0.9, 1.0]}.",
    )
    init: Literal["scratch", "previous"] = Field(
        "scratch", description="scratch: every generation trains a fresh generator; previous: generation t starts from "
        "G(t-1)'s weights and fine-tunes on D(t) (Bertrand et al., ICLR 2024). Needs a generator that can warm start.",
    )
    pretrained: ExistingPathOrUri | None = Field(
        None, description="Generation 1 starts from these weights and fine-tunes on the real data: a generator checkpoint "
        "directory (diffusers save_pretrained, as this project and `synthdata pretrain` write them), a .safetensors state "
        "of `generator`, or either of them in MLflow (runs:/<run_id>/checkpoints/generation_003/generator).",
    )
    pretrained_steps: int | None = Field(
        None, ge=0, description="Optimizer steps of generation 1's fine-tune from `pretrained` (default: the generator's "
        "own train_steps; 0: sample the pretrained model as it is).",
    )

    @model_validator(mode="after")
    def _pretrained_steps(self) -> "LoopSpec":
        if self.pretrained_steps is not None and self.pretrained is None:
            raise ValueError("pretrained_steps: applies with loop.pretrained only")
        return self

    @field_validator("sweep")
    @classmethod
    def _sweepable(cls, v: dict) -> dict:
        for key, values in v.items():
            if key not in SWEEPABLE:
                raise ValueError(f"cannot sweep {key!r}; sweepable fields: {', '.join(SWEEPABLE)}")
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{key}: give one or more distinct values")
        return v


class LoopStudy(MeasuredStudy):
    """A loop study file."""

    kind: Literal["loop"] = Field("loop", description="loop: self-consuming loops (section `loop`).")
    loop: LoopSpec = Field(default_factory=LoopSpec)

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.loop.seeds

    def _guided(self) -> bool:
        return self.guidance.scale > 0 or "guidance.scale" in self.loop.sweep

    @model_validator(mode="after")
    def _can_warm_start(self) -> "LoopStudy":
        from synthdata.spec.generators import warm_startable

        for key, why in (("init", self.loop.init == "previous"), ("pretrained", self.loop.pretrained is not None)):
            if why and not warm_startable(self.generator):
                raise ValueError(f"loop.{key}: generator {self.generator.name!r} cannot start from given weights "
                                 "(its fit takes no init=state)")
        if self.loop.pretrained_steps and isinstance(self.generator, PluginSpec):  # the fine-tune sets params.train_steps
            from synthdata.errors import SpecError
            from synthdata.plugins import check_params, resolve

            cls = self.generator._factory or resolve("generator", self.generator.name, "generator.name")
            try:
                check_params(cls, self.generator.name, {**self.generator.params, "train_steps": 1}, shape=(1, 1, 1),
                             num_classes=1, device="cpu")
            except SpecError:
                raise ValueError(f"loop.pretrained_steps: generator {self.generator.name!r} takes no train_steps") from None
        return self

    @model_validator(mode="after")
    def _sweep_applies(self) -> "LoopStudy":
        for key, values in self.loop.sweep.items():
            section, field = key.split(".")
            if field not in type(getattr(self, section)).model_fields:
                raise ValueError(f"loop.sweep: {key} does not apply to generator {self.generator.name!r}")
            for value in values:  # every swept value must make a valid spec
                with_value(self, key, value)
        return self


def with_value(spec: LoopStudy, key: str, value: Any) -> LoopStudy:
    """A copy of `spec` with the dotted field `key` set to `value`, validated (and no sweep of its own)."""
    section, field = key.split(".")
    data = spec.model_dump()
    if field == "samples_per_generation":
        value = int(value)
    data[section][field] = value
    data["loop"]["sweep"] = {}
    return LoopStudy.model_validate(data)
