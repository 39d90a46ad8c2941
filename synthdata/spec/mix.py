"""kind: mix — real/synthetic training mixes for the downstream classifier, swept with Ray Tune."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from synthdata.spec.base import ExistingFile, Strict, Unique
from synthdata.spec.study import GeneratorStudy

MixMode = Literal["augment", "replace"]


class SearchSpec(Strict):
    """How Ray Tune picks the mix arms."""

    type: Literal["grid", "random"] = Field(
        "grid", description="grid: every mode x ratio x seed; random: `num_samples` arms, ratio ~ U(ratio_range)."
    )
    num_samples: int = Field(20, ge=1, le=10_000, description="random: number of arms.")
    ratio_range: tuple[float, float] = Field((0.0, 1.0), description="random: the ratio's range (at most 1 when replace is swept).")

    @model_validator(mode="after")
    def _range(self) -> "SearchSpec":
        lo, hi = self.ratio_range
        if not 0 <= lo < hi:
            raise ValueError("ratio_range: give [low, high] with 0 <= low < high")
        return self


class MixSpec(Strict):
    """Real/synthetic mixes for a downstream classifier (kind: mix), each mix an arm run as a Ray Tune trial.

    With N real training images and ratio r: `augment` trains on all N real images plus
    r*N synthetic ones; `replace` on N images of which a fraction r is synthetic (r = 1 is
    synthetic-only at size N, the far end). r = 0 is the real-only baseline in both modes.
    """

    modes: Annotated[tuple[MixMode, ...], Unique] = Field(("augment", "replace"), min_length=1, description="Mix modes to sweep.")
    ratios: tuple[float, ...] = Field(
        (0.0, 0.25, 0.5, 1.0), min_length=1, description="grid: values of r (replace arms use those <= 1)."
    )
    seeds: Annotated[tuple[int, ...], Unique] = Field((0, 1, 2), min_length=1, description="One synthetic pool (generator) per seed.")
    real_size: int | None = Field(
        None, ge=2, description="N: real images per seed; its generator and all its arms use these (default: all of train)."
    )
    samples: ExistingFile | None = Field(
        None,
        description="A saved sample set (samples.safetensors from a checkpoint or an earlier mix study) used as the "
        "pool of every seed, instead of training the generator.",
    )
    pool_size: int | None = Field(None, ge=1, description="Synthetic images drawn per seed (default: what the largest ratio needs).")
    search: SearchSpec = Field(default_factory=SearchSpec)

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(r < 0 for r in v) or len(set(v)) != len(v):
            raise ValueError("ratios must be distinct and >= 0")
        return v

    @model_validator(mode="after")
    def _usable(self) -> "MixSpec":
        if self.search.type == "random" and "replace" in self.modes and self.search.ratio_range[1] > 1:
            raise ValueError("search.ratio_range: replace needs ratios <= 1; sweep augment alone for larger ones")
        if self.search.type == "grid" and self.modes == ("replace",) and not any(r <= 1 for r in self.ratios):
            raise ValueError("ratios: replace needs ratios <= 1 (r is the synthetic share of N)")
        return self

    def max_ratio(self) -> float:
        """The largest synthetic share any arm asks for."""
        hi = self.search.ratio_range[1] if self.search.type == "random" else max(self.ratios)
        return hi if "augment" in self.modes else min(hi, 1.0)


class MixStudy(GeneratorStudy):
    """A mix study file."""

    kind: Literal["mix"] = Field(..., description="mix: real/synthetic mixes (section `mix`).")
    mix: MixSpec = Field(default_factory=MixSpec, description="The mix sweep.")

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.mix.seeds
