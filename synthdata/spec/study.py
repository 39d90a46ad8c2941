"""What every study file holds, whatever its kind; each kind's module adds its own section."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from synthdata.spec.base import ClassifierSpec, DataSpec, FeatureSpec, ResourcesSpec, Strict, TrackingSpec
from synthdata.spec.generators import GUIDABLE, DiffusionSpec, GeneratorSpec, GuidanceSpec, not_guidable

Metric = Literal["detectability", "downstream", "features", "toy"]
METRICS: tuple[str, ...] = ("detectability", "downstream")


class StudyBase(Strict):
    """The keys of every study file: its name, the real data, the detector, tracking and resources."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="Study name (letters, digits, _ . -).")
    description: str = Field("", description="What the study asks; the MLflow study run's description.")
    data: DataSpec = Field(default_factory=DataSpec)
    detector: ClassifierSpec = Field(default_factory=lambda: ClassifierSpec(epochs=10),
                                     description="The real-vs-generated classifier behind detectability.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def seeds(self) -> tuple[int, ...]:
        """The study's replicate seeds (its kind's section says them): each draws its own real split by default."""
        raise NotImplementedError


class GeneratorStudy(StudyBase):
    """A study that trains the generator it measures (loop, mix, guide)."""

    generator: GeneratorSpec = Field(default_factory=DiffusionSpec)
    downstream: ClassifierSpec = Field(default_factory=ClassifierSpec,
                                       description="The classifier behind downstream accuracy (tested on the real test set).")
    guidance: GuidanceSpec = Field(default_factory=GuidanceSpec, description="Detector guidance of the diffusion "
                                   "generator's sampling (loop and mix studies: at `scale`; guide studies: at each of `guide.scales`).")

    def _guided(self) -> bool:
        return self.guidance.scale > 0

    @model_validator(mode="after")
    def _generator_fits(self) -> "GeneratorStudy":
        if self.data.source == "gaussian" and self.generator.name == "diffusion":
            raise ValueError("generator: the toy gaussian source is vectors, not images; use gaussian or gmm")
        if self._guided() and self.generator.name not in GUIDABLE:
            raise ValueError(not_guidable(self.generator.name))
        return self


class MeasuredStudy(GeneratorStudy):
    """A study that measures generated sample sets with the per-generation metrics (loop, guide)."""

    metrics: tuple[Metric, ...] = Field(
        METRICS,
        min_length=1,
        description="Metrics of every sample set: detectability, downstream, features (FID, KID, precision/recall/"
        "density/coverage, diversity), toy (fitted mean/variance and distance to the truth; gaussian data only).",
    )
    features: FeatureSpec = Field(default_factory=FeatureSpec, description="The study's feature space (metric: features).")

    @model_validator(mode="after")
    def _toy_needs_truth(self) -> "MeasuredStudy":
        if "toy" in self.metrics and self.data.source != "gaussian":
            raise ValueError("metrics: 'toy' needs data.source: gaussian (a known true distribution)")
        return self
