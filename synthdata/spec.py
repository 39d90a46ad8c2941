"""The study file: YAML validated into a typed spec before any compute starts.

Every field is documented here; `synthdata validate FILE` checks a file against it.
Unknown keys are refused everywhere, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synthdata.errors import SpecError

LoopType = Literal["replace", "augment", "fresh", "accumulate"]
Metric = Literal["detectability", "downstream", "features", "toy"]
METRICS: tuple[str, ...] = ("detectability", "downstream")


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"file does not exist: {path}")
    return path


def _existing_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"directory does not exist: {path}")
    return path


# Paths checked when the study file is validated, so a typo fails before anything runs.
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
ExistingDir = Annotated[Path, AfterValidator(_existing_dir)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSpec(_Strict):
    """Fractions of the real data for each role. The three parts never overlap."""

    train: float = Field(0.6, gt=0, lt=1, description="Real images the first generator trains on.")
    heldout: float = Field(
        0.2, gt=0, lt=1, description="Real images no generator ever sees; detectability is evaluated on them."
    )
    test: float = Field(
        0.2, gt=0, lt=1, description="Real images for downstream accuracy (ignored when the source has an official test split)."
    )

    @model_validator(mode="after")
    def _sums_to_at_most_one(self) -> "SplitSpec":
        if self.train + self.heldout + self.test > 1.0 + 1e-9:
            raise ValueError("train + heldout + test must be at most 1")
        return self


class ToyDataSpec(_Strict):
    """A known distribution for checking loops against theory: class k is N(mu_k, std^2 I) in `dim` dimensions."""

    dim: int = Field(2, ge=1, le=1024, description="Dimension of each sample.")
    classes: int = Field(1, ge=1, le=100, description="Number of classes (Gaussians), means spread `separation` apart.")
    std: float = Field(1.0, gt=0, description="Standard deviation of every coordinate.")
    separation: float = Field(4.0, ge=0, description="Distance between neighbouring class means.")
    train: int = Field(100, ge=2, description="Real training samples (the first generation's n).")
    heldout: int = Field(1000, ge=2, description="Held-out real samples (detectability, feature metrics).")
    test: int = Field(1000, ge=2, description="Real test samples (downstream accuracy).")


class DataSpec(_Strict):
    """Where the real images come from."""

    source: Literal["digits", "mnist", "fashion_mnist", "cifar10", "folder", "gaussian"] = Field(
        "digits", description="digits (scikit-learn, embedded), a torchvision data set, an image folder, or a toy Gaussian."
    )
    toy: ToyDataSpec = Field(default_factory=ToyDataSpec, description="The toy distribution (source: gaussian).")
    root: Path | None = Field(
        None, description="Directory of a torchvision data set or of an image folder (one sub-folder per class)."
    )
    download: bool = Field(False, description="Let torchvision download the data set into `root` (needs a network).")
    image_size: int | None = Field(None, ge=4, le=512, description="Resize images to this square size.")
    limit: int | None = Field(None, ge=20, description="Use at most this many images per split (for quick runs).")
    split: SplitSpec = Field(default_factory=SplitSpec)

    @model_validator(mode="after")
    def _root_exists(self) -> "DataSpec":
        if self.source in ("digits", "gaussian"):
            return self
        if self.root is None:
            raise ValueError(f"data.root: required for source '{self.source}'")
        if not self.download and not self.root.is_dir():
            raise ValueError(f"data.root: directory does not exist: {self.root}")
        return self


class DiffusionSpec(_Strict):
    """A class-conditional diffusers UNet2DModel trained from scratch (DDPM), sampled with DDIM."""

    name: Literal["diffusion"] = "diffusion"
    channels: tuple[int, ...] = Field((32, 64, 64), min_length=1, max_length=5, description="UNet block widths.")
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = Field(True, description="Self-attention in the lowest-resolution blocks.")
    train_steps: int = Field(3000, ge=1, description="Optimizer steps per generation.")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, lt=1)
    warmup_steps: int = Field(200, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the weights used for sampling (0 turns it off).")
    train_timesteps: int = Field(1000, ge=10, description="DDPM noise-schedule length.")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    sampling_steps: int = Field(25, ge=1, le=1000, description="DDIM steps when sampling.")
    sample_batch_size: int = Field(512, ge=1)
    cond_dropout: float = Field(
        0.0, ge=0, lt=1, description="Fraction of training steps with the label dropped (needed for guidance)."
    )
    guidance_scale: float = Field(
        1.0, ge=0, le=20, description="Sampling bias: classifier-free guidance scale (1 = plain conditional sampling)."
    )

    @model_validator(mode="after")
    def _guidance_needs_dropout(self) -> "DiffusionSpec":
        if self.guidance_scale != 1.0 and self.cond_dropout == 0:
            raise ValueError("guidance_scale != 1 needs an unconditional model: set cond_dropout > 0 (e.g. 0.1)")
        return self


class GaussianSpec(_Strict):
    """Toy generator: one Gaussian per class over flattened images, fitted by maximum likelihood."""

    name: Literal["gaussian"] = "gaussian"
    covariance: Literal["full", "diag"] = Field("full", description="Full or diagonal covariance.")
    ridge: float = Field(1e-3, ge=0, description="Added to the covariance diagonal so that it stays invertible.")
    unbiased: bool = Field(False, description="Refit with the (n-1) covariance instead of the ML (n) one.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling bias: sample from N(mu, temperature * Sigma).")


class GMMSpec(_Strict):
    """Toy generator: a Gaussian mixture per class (scikit-learn, EM)."""

    name: Literal["gmm"] = "gmm"
    components: int = Field(3, ge=1, le=100, description="Mixture components per class.")
    covariance: Literal["full", "diag"] = "full"
    ridge: float = Field(1e-3, ge=0, description="Added to every covariance diagonal (scikit-learn's reg_covar).")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling bias: component covariances scaled by this.")


GENERATOR_NAMES = ("diffusion", "gaussian", "gmm")
GeneratorSpec = Annotated[Union[DiffusionSpec, GaussianSpec, GMMSpec], Field(discriminator="name")]


_NOT_GUIDABLE = "guidance: detector guidance steers a diffusion generator's sampling; generator is '{}'"


class GuidanceSpec(_Strict):
    """Detector guidance of diffusion sampling: a noise-aware real-vs-generated classifier steers every DDIM step.

    After a diffusion generator is trained, a small classifier D(x_t, t, y) learns to tell
    noised real training images from noised unguided samples at the sampler's timesteps.
    Its logit estimates log p_real(x_t|y) / p_gen(x_t|y), so adding `scale` times its
    gradient to the generator's score moves samples toward the real data (discriminator
    guidance): scale 1 is the exact correction for a perfect classifier, above 1 over-steers.
    """

    scale: float = Field(0.0, ge=0, le=50, description="Guidance scale w (0: off, plain sampling; 1: the density-ratio "
                         "correction; > 1 steers harder).")
    train_samples: int | None = Field(None, ge=10, description="Unguided samples the guiding classifier trains on "
                                      "(default: as many as the real images it sees).")
    width: int = Field(32, ge=4, le=256, description="Channels of its first stage (doubled at each halving, up to 4x).")
    steps: int = Field(1500, ge=1, description="Optimizer steps (each: a batch of real and a batch of generated images).")
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0, lt=1)
    val_fraction: float = Field(0.0, ge=0, le=0.5, description="Hold out this share of the real and the generated "
                                "images and keep the weights with the lowest validation loss (0: the last weights). "
                                "Guards a long schedule against memorising the real images.")
    class_conditional: bool = Field(True, description="Condition on the class label too: the ratio p_real(x|y)/p_gen(x|y) "
                                    "of a class-conditional generator.")


class AugmentSpec(_Strict):
    """Training-time augmentation of a classifier's inputs."""

    crop_padding: int = Field(0, ge=0, le=16, description="Random crops after reflect-padding by this many pixels (0: off).")
    flip: bool = Field(False, description="Random horizontal flips (off for digits: a flipped digit is another shape).")


class ClassifierSpec(_Strict):
    """A classifier: the detector (real vs generated) or the downstream model."""

    name: str = Field(
        "cnn", description="cnn (the small CNN) or a timm model name (resnet18, resnet50, convnext_tiny, "
        "vit_small_patch16_224, ...), trained from scratch unless `pretrained` names a local weights file.",
    )
    pretrained: ExistingFile | None = Field(None, description="timm models: a local weights file to start from.")
    width: int = Field(32, ge=4, le=512, description="Channels of the first conv layer (cnn).")
    epochs: int = Field(15, ge=1)
    steps: int | None = Field(
        None, ge=1,
        description="Train for exactly this many optimizer steps instead of `epochs` passes: the same compute "
        "whatever the training set's size (mix studies compare sets of different sizes).",
    )
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    val_fraction: float = Field(0.0, ge=0, le=0.5, description="Hold out this share of the training images to pick "
                                "the best epoch by validation loss (0: train on all, keep the last epoch).")
    patience: int | None = Field(None, ge=1, description="Stop after this many validation checks (about one per epoch) "
                                 "without a better validation loss.")

    @model_validator(mode="after")
    def _known_model(self) -> "ClassifierSpec":
        if self.name not in ("cnn", "inception"):
            import timm

            if not timm.is_model(self.name):
                import difflib

                close = ", ".join(difflib.get_close_matches(self.name, timm.list_models(), n=4)) or "see timm.list_models()"
                raise ValueError(f"name: '{self.name}' is neither cnn nor a timm model (close: {close})")
        if self.patience is not None and self.val_fraction == 0:
            raise ValueError("patience: early stopping needs a validation split (set val_fraction, e.g. 0.1)")
        return self


class FeatureSpec(ClassifierSpec):
    """The study's feature space for FID/KID/PRDC: a CNN trained on the real data, or Inception with local weights."""

    name: Literal["cnn", "inception"] = Field("cnn", description="cnn (trained once per study) or inception (frozen).")
    weights: Path | None = Field(
        None, description="inception: a local FID Inception-v3 weights file (torch-fidelity's pt_inception-2015-12-05)."
    )
    epochs: int = Field(15, ge=1)

    @model_validator(mode="after")
    def _weights_exist(self) -> "FeatureSpec":
        if self.name == "inception":
            if self.weights is None:
                raise ValueError("features.weights: required for inception (nothing is downloaded at run time)")
            if not self.weights.is_file():
                raise ValueError(f"features.weights: file does not exist: {self.weights}")
        return self


SWEEPABLE = (
    "generator.guidance_scale",
    "guidance.scale",
    "generator.temperature",
    "loop.real_fraction",
    "loop.samples_per_generation",
)


class LoopSpec(_Strict):
    """The self-consuming loop: which loop types, for how many generations, with which seeds."""

    types: tuple[LoopType, ...] = Field(("replace", "augment"), min_length=1, description="Loop types to run, one arm each per seed.")
    generations: int = Field(3, ge=1, le=10_000, description="Generations T per arm.")
    samples_per_generation: int = Field(1000, ge=2, description="Samples each generation adds to the next training set.")
    real_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="augment/fresh: the real share of each training set from generation 2 on. "
        "Default: augment keeps the whole real training set, fresh draws as many real images as samples (0.5).",
    )
    seeds: tuple[int, ...] = Field((0,), min_length=1, description="One arm per loop type and seed.")
    sweep: dict[str, tuple[float, ...]] = Field(
        default_factory=dict,
        description="Extra arm dimensions: a dotted spec field and its values, e.g. {generator.temperature: [0.9, 1.0]}.",
    )

    @field_validator("types", "seeds")
    @classmethod
    def _unique(cls, v: tuple) -> tuple:
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v

    @field_validator("sweep")
    @classmethod
    def _sweepable(cls, v: dict) -> dict:
        for key, values in v.items():
            if key not in SWEEPABLE:
                raise ValueError(f"cannot sweep {key!r}; sweepable fields: {', '.join(SWEEPABLE)}")
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{key}: give one or more distinct values")
        return v


MixMode = Literal["augment", "replace"]
KINDS = ("loop", "mix", "detect", "guide")  # each kind's section has the kind's name


class SearchSpec(_Strict):
    """How Ray Tune picks the mix trials."""

    type: Literal["grid", "random"] = Field(
        "grid", description="grid: every mode x ratio x seed; random: `num_samples` trials, ratio ~ U(ratio_range)."
    )
    num_samples: int = Field(20, ge=1, le=10_000, description="random: number of trials.")
    ratio_range: tuple[float, float] = Field((0.0, 1.0), description="random: the ratio's range (at most 1 when replace is swept).")

    @model_validator(mode="after")
    def _range(self) -> "SearchSpec":
        lo, hi = self.ratio_range
        if not 0 <= lo < hi:
            raise ValueError("ratio_range: give [low, high] with 0 <= low < high")
        return self


class MixSpec(_Strict):
    """Real/synthetic mixes for a downstream classifier (kind: mix), swept as Ray Tune trials.

    With N real training images and ratio r: `augment` trains on all N real images plus
    r*N synthetic ones; `replace` on N images of which a fraction r is synthetic (r = 1 is
    synthetic-only at size N, the far end). r = 0 is the real-only baseline in both modes.
    """

    modes: tuple[MixMode, ...] = Field(("augment", "replace"), min_length=1, description="Mix modes to sweep.")
    ratios: tuple[float, ...] = Field(
        (0.0, 0.25, 0.5, 1.0), min_length=1, description="grid: values of r (replace trials use those <= 1)."
    )
    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1, description="One synthetic pool (generator) per seed.")
    real_size: int | None = Field(
        None, ge=2, description="N: real images per seed; its generator and all its trials use these (default: all of train)."
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

    @field_validator("modes", "seeds")
    @classmethod
    def _distinct(cls, v: tuple) -> tuple:
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v

    @model_validator(mode="after")
    def _usable(self) -> "MixSpec":
        if self.search.type == "random" and "replace" in self.modes and self.search.ratio_range[1] > 1:
            raise ValueError("search.ratio_range: replace needs ratios <= 1; sweep augment alone for larger ones")
        if self.search.type == "grid" and self.modes == ("replace",) and not any(r <= 1 for r in self.ratios):
            raise ValueError("ratios: replace needs ratios <= 1 (r is the synthetic share of N)")
        return self

    def max_ratio(self) -> float:
        """The largest synthetic share any trial asks for."""
        hi = self.search.ratio_range[1] if self.search.type == "random" else max(self.ratios)
        return hi if "augment" in self.modes else min(hi, 1.0)


class GeneratorSource(_Strict):
    """A generator of this project, trained here on the real training split, then sampled."""

    type: Literal["generator"]
    generator: GeneratorSpec = Field(..., description="As in a loop study's `generator` section.")
    size: int | None = Field(None, ge=10, description="Images to draw (default: as many as the real training split).")
    guidance: GuidanceSpec | None = Field(None, description="Draw them with detector guidance (diffusion only), its "
                                          "classifier trained on the same real images as the generator.")

    @model_validator(mode="after")
    def _guided_diffusion(self) -> "GeneratorSource":
        if self.guidance is not None and self.guidance.scale > 0 and self.generator.name != "diffusion":
            raise ValueError(_NOT_GUIDABLE.format(self.generator.name))
        return self


class SamplesSource(_Strict):
    """A saved sample set (samples.safetensors from a study's checkpoint or pool)."""

    type: Literal["samples"]
    path: ExistingFile


class FolderSource(_Strict):
    """A folder of images (PNG, JPEG, ...), flat or in sub-folders; resized to the real images' size."""

    type: Literal["folder"]
    path: ExistingDir


class PipelineSource(_Strict):
    """A pretrained diffusers pipeline (DDPMPipeline, DDIMPipeline, ...) from a local directory or a hub id."""

    type: Literal["pipeline"]
    path: str = Field(..., min_length=1, description="A local directory saved with save_pretrained, or a hub id (needs a network).")
    size: int = Field(1000, ge=10, description="Images to draw.")
    steps: int = Field(50, ge=1, le=4000, description="Denoising steps per image.")
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


class CheckpointSource(_Strict):
    """A generator checkpoint of this project (generator.safetensors from a loop study's artifacts)."""

    type: Literal["checkpoint"]
    path: ExistingFile
    generator: GeneratorSpec = Field(..., description="The generator section of the study that saved it.")
    size: int | None = Field(None, ge=10, description="Images to draw (default: as many as the real training split).")


SOURCE_TYPES = ("generator", "samples", "folder", "pipeline", "checkpoint")
SourceSpec = Annotated[
    Union[GeneratorSource, SamplesSource, FolderSource, PipelineSource, CheckpointSource], Field(discriminator="type")
]


class BandSpec(_Strict):
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


class DetectSpec(_Strict):
    """The detectability instrument (kind: detect): a detector told real from each source, and what it keys on."""

    sources: dict[str, SourceSpec] = Field(..., min_length=1, description="Generated image sources, by name.")
    seeds: tuple[int, ...] = Field((0,), min_length=1, description="One detector per seed for every analysis.")
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


class GuideSpec(_Strict):
    """Guided against unguided sampling (kind: guide). Per seed, one generator and one guiding classifier are
    trained; every scale then samples from the same noise and labels, and each is judged by fresh detectors."""

    scales: tuple[float, ...] = Field((0.0, 0.5, 1.0, 2.0), min_length=2, description="Guidance scales; 0 (unguided) "
                                      "must be among them: it is the baseline every other scale is compared with.")
    seeds: tuple[int, ...] = Field((0,), min_length=1, description="One generator and guiding classifier per seed.")
    samples: int = Field(1000, ge=10, description="Samples per scale and seed for the metrics' training sets "
                         "(the fresh detector's and the downstream classifier's), besides the held-out ones.")

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s < 0 or s > 50 for s in v) or len(set(v)) != len(v):
            raise ValueError("scales must be distinct, each in [0, 50]")
        if 0 not in v:
            raise ValueError("include 0: the unguided samples every scale is compared with")
        return tuple(sorted(v))

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: tuple) -> tuple:
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v


class TrackingSpec(_Strict):
    """Where results go. The tracking URI comes from MLFLOW_TRACKING_URI unless set here."""

    experiment: str | None = Field(None, min_length=1, description="MLflow experiment (default: the study name).")
    uri: str | None = Field(None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
    sample_grid: bool = Field(True, description="Log a grid of samples per generation as an image artifact.")
    checkpoints: bool = Field(
        True, description="Keep each generation's generator weights and samples as artifacts (needed by --resume)."
    )
    report_dir: Path = Field(Path("runs"), description="Figures and tables are also written to REPORT_DIR/<study name>/.")


class ResourcesSpec(_Strict):
    """Ray resources for each arm."""

    cpus_per_arm: float = Field(1, gt=0, description="CPUs Ray reserves for each arm; torch uses as many threads.")
    gpus_per_arm: float = Field(0, ge=0, description="GPUs for each arm (0 on CPU-only machines).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast and TF32 on GPUs that support them, fp32 on CPUs; fp32 or bf16 everywhere.")
    address: str | None = Field(None, description="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
    max_arm_retries: int = Field(
        2, ge=0, le=100,
        description="Times an arm whose worker died (node lost, process killed) is restarted from its last finished "
        "generation. Errors in the arm itself (bad data, a diverging generator) fail it at once.",
    )


class StudySpec(_Strict):
    """A whole study, as written in a YAML study file."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="Study name (letters, digits, _ . -).")
    kind: Literal["loop", "mix", "detect", "guide"] = Field(
        "loop", description="loop: self-consuming loops (section `loop`); mix: real/synthetic mixes (section `mix`); "
        "detect: the detectability instrument on given sources (section `detect`); guide: guided against unguided "
        "sampling across guidance scales (section `guide`).",
    )
    description: str = ""
    data: DataSpec = Field(default_factory=DataSpec)
    generator: GeneratorSpec = Field(default_factory=DiffusionSpec)
    detector: ClassifierSpec = Field(default_factory=lambda: ClassifierSpec(epochs=10))
    downstream: ClassifierSpec = Field(default_factory=ClassifierSpec)
    loop: LoopSpec = Field(default_factory=LoopSpec)
    mix: MixSpec = Field(default_factory=MixSpec, description="The mix sweep (kind: mix).")
    detect: DetectSpec | None = Field(None, description="The sources and analyses (kind: detect).")
    guide: GuideSpec = Field(default_factory=GuideSpec, description="The scales compared (kind: guide).")
    guidance: GuidanceSpec = Field(default_factory=GuidanceSpec, description="Detector guidance of the diffusion "
                                   "generator's sampling (loop and mix studies: at `scale`; guide studies: at each of `guide.scales`).")
    metrics: tuple[Metric, ...] = Field(
        METRICS,
        min_length=1,
        description="Per-generation metrics: detectability, downstream, features (FID, KID, precision/recall/"
        "density/coverage, diversity), toy (fitted mean/variance and distance to the truth; gaussian data only).",
    )
    features: FeatureSpec = Field(
        default_factory=FeatureSpec, description="The study's feature space (metric: features)."
    )
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @model_validator(mode="after")
    def _consistent(self) -> "StudySpec":
        for other in KINDS:
            if other != self.kind and other in self.model_fields_set:
                raise ValueError(f"{other}: not used by a {self.kind} study (set kind: {other}, or remove the section)")
        if self.kind == "detect" and self.detect is None:
            raise ValueError("detect: required for a detect study (its `sources`)")
        if "toy" in self.metrics and self.data.source != "gaussian":
            raise ValueError("metrics: 'toy' needs data.source: gaussian (a known true distribution)")
        if self.data.source == "gaussian" and self.generator.name == "diffusion":
            raise ValueError("generator: the toy gaussian source is vectors, not images; use gaussian or gmm")
        guided = self.kind == "guide" or self.guidance.scale > 0 or "guidance.scale" in self.loop.sweep
        if guided and self.generator.name != "diffusion":
            raise ValueError(_NOT_GUIDABLE.format(self.generator.name))
        if self.kind == "guide" and "scale" in self.guidance.model_fields_set:
            raise ValueError("guidance.scale: a guide study samples at every one of guide.scales; set those instead")
        for key, values in self.loop.sweep.items():
            section, field = key.split(".")
            target = getattr(self, section)
            if field not in type(target).model_fields:
                raise ValueError(f"loop.sweep: {key} does not apply to generator {self.generator.name!r}")
            for value in values:  # every swept value must make a valid spec
                with_value(self, key, value)
        return self


def with_value(spec: "StudySpec", key: str, value: Any) -> "StudySpec":
    """A copy of `spec` with the dotted field `key` set to `value`, validated."""
    section, field = key.split(".")
    data = spec.model_dump()
    if field == "samples_per_generation":
        value = int(value)
    data[section][field] = value
    data["loop"]["sweep"] = {}
    for other in KINDS:  # the other kinds' sections stay at their defaults
        if other != spec.kind:
            data.pop(other)
    return StudySpec.model_validate(data)


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic puts the discriminator tag in the location ("generator.diffusion.lr"); drop it.
    # So is a source's type tag ("detect.sources.NAME.samples.path").
    parts = []
    for i, p in enumerate(loc):
        after_generator = i >= 1 and loc[i - 1] == "generator" and p in GENERATOR_NAMES
        after_source = i >= 2 and loc[i - 2] == "sources" and p in SOURCE_TYPES
        if not (after_generator or after_source):
            parts.append(str(p))
    return ".".join(parts) or "(top level)"


def _format_error(source: str | Path, err: ValidationError) -> str:
    first = err.errors()[0]
    msg = first["msg"].removeprefix("Value error, ").replace("Tuple should", "List should")  # YAML has lists
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "union_tag_invalid":
        msg = f"unknown name {first.get('ctx', {}).get('tag')!r} (choose {first.get('ctx', {}).get('expected_tags')})"
    path = _field_path(first["loc"])
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
    """Validate a mapping into a StudySpec; raise SpecError naming the source and field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the study file must be a mapping of keys to values")
    try:
        return StudySpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_error(source, err)) from None


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
    import hashlib
    import json

    data = spec.model_dump(mode="json", exclude={"tracking", "resources", "description"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


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
