"""kind: guide — guided against unguided sampling across detector-guidance scales."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from synthdata.spec.base import Strict, Unique
from synthdata.spec.study import MeasuredStudy


class GuideSpec(Strict):
    """Guided against unguided sampling (kind: guide). Per seed, one generator and one guiding classifier are
    trained; every scale then samples from the same noise and labels, and each is judged by fresh detectors."""

    scales: tuple[float, ...] = Field((0.0, 0.5, 1.0, 2.0), min_length=2, description="Guidance scales; 0 (unguided) "
                                      "must be among them: it is the baseline every other scale is compared with.")
    seeds: Annotated[tuple[int, ...], Unique] = Field((0,), min_length=1, description="One generator and guiding classifier per seed.")
    samples_per_scale: int = Field(1000, ge=10, description="Samples per scale and seed for the metrics' training sets "
                                   "(the fresh detector's and the downstream classifier's), besides the held-out ones.")

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s < 0 or s > 50 for s in v) or len(set(v)) != len(v):
            raise ValueError("scales must be distinct, each in [0, 50]")
        if 0 not in v:
            raise ValueError("include 0: the unguided samples every scale is compared with")
        return tuple(sorted(v))


class GuideStudy(MeasuredStudy):
    """A guide study file."""

    kind: Literal["guide"] = Field(..., description="guide: guided against unguided sampling (section `guide`).")
    guide: GuideSpec = Field(default_factory=GuideSpec, description="The scales compared.")

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.guide.seeds

    def _guided(self) -> bool:
        return True

    @model_validator(mode="after")
    def _scales_not_scale(self) -> "GuideStudy":
        if "scale" in self.guidance.model_fields_set and self.guidance.scale != 0:  # 0 (the default) says nothing
            raise ValueError("guidance.scale: a guide study samples at every one of guide.scales; set those instead")
        return self
