"""Sections every study kind shares: the real data, classifiers, tracking and resources.

Unknown keys are refused everywhere, so a typo never silently falls back to a default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator


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

MLFLOW_URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def is_mlflow_uri(text: object) -> bool:
    """An MLflow artifact URI (`runs:/<run_id>/<path>`, ...): read through the study's tracking store, not the disk."""
    return isinstance(text, str) and text.startswith(MLFLOW_URI_SCHEMES)


def _path_or_mlflow_uri(value: object) -> object:
    if is_mlflow_uri(value):
        if value in MLFLOW_URI_SCHEMES or value.rstrip("/").endswith(":"):
            raise ValueError(f"{value!r}: name the run and the artifact, e.g. runs:/<run_id>/checkpoints/generation_001/generator")
        return value
    if isinstance(value, (str, Path)) and not Path(value).exists():
        raise ValueError(f"does not exist: {value} (make one with `synthdata pretrain STUDY --out {value}`, "
                         "or name a checkpoint in MLflow: runs:/<run_id>/checkpoints/generation_001/generator)")
    return Path(value) if isinstance(value, str) else value


# A local file or directory (checked when the file is validated), or an MLflow artifact URI (read when the study starts).
ExistingPathOrUri = Annotated[Path | str, BeforeValidator(_path_or_mlflow_uri)]


class Strict(BaseModel):
    """A spec section: unknown keys refused, frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(v: tuple) -> tuple:
    if len(set(v)) != len(v):
        raise ValueError("entries must be unique")
    return v


Unique = AfterValidator(_unique)  # `Annotated[tuple[...], Unique]`: the entries of a list are distinct


class SplitSpec(Strict):
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


class ToyDataSpec(Strict):
    """A known distribution for checking loops against theory: class k is N(mu_k, std^2 I) in `dim` dimensions."""

    dim: int = Field(2, ge=1, le=1024, description="Dimension of each sample.")
    classes: int = Field(1, ge=1, le=100, description="Number of classes (Gaussians), means spread `separation` apart.")
    std: float = Field(1.0, gt=0, description="Standard deviation of every coordinate.")
    separation: float = Field(4.0, ge=0, description="Distance between neighbouring class means.")
    train: int = Field(100, ge=2, description="Real training samples (the first generation's n).")
    heldout: int = Field(1000, ge=2, description="Held-out real samples (detectability, feature metrics).")
    test: int = Field(1000, ge=2, description="Real test samples (downstream accuracy).")


DataSource = Literal["digits", "mnist", "fashion_mnist", "cifar10", "folder", "gaussian"]
DATA_SOURCES: tuple[str, ...] = get_args(DataSource)
TORCHVISION_SOURCES = ("mnist", "fashion_mnist", "cifar10")  # the torchvision data sets (synthdata.data loads them)


class DataSpec(Strict):
    """Where the real images come from."""

    source: str = Field(
        "digits", description="digits (scikit-learn, embedded), a torchvision data set (mnist, fashion_mnist, cifar10), "
        "folder (an image folder), gaussian (a toy), or your own loader: a name a package registers (entry point group "
        "synthdata.data) or an import path package.module:load, called as load(**params).",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of your own loader (`source`).")
    toy: ToyDataSpec = Field(default_factory=ToyDataSpec, description="The toy distribution (source: gaussian).")
    root: Path | None = Field(
        None, description="Directory of a torchvision data set; for folder: an image folder (one sub-folder per class, "
        "or flat: one class) or a zip written by `synthdata prepare`.",
    )
    download: bool = Field(False, description="Let torchvision download the data set into `root` (needs a network).")
    image_size: int | None = Field(None, ge=4, le=512, description="Resize images to this square size.")
    limit: int | None = Field(None, ge=20, description="Use at most this many images per split (for quick runs).")
    in_memory_mb: float = Field(
        32, ge=0, description="Real data up to this size as float32 is read into memory at the start (fastest); a "
        "larger set stays on disk (or as uint8) and is read a batch at a time.",
    )
    loader_workers: int = Field(0, ge=0, le=64, description="DataLoader processes that decode a large set's training "
                                "batches (0: in the training process; worth it for JPEGs and big images).")
    split: SplitSpec = Field(default_factory=SplitSpec)
    split_seed: Literal["per_seed"] | int = Field(
        "per_seed", description="per_seed: every seed of the study draws its own train / held-out / test split (a toy "
        "source: its own sample of the truth), so replicates replicate the real data too; an integer: one split, drawn "
        "with that seed, for every seed (the real data held fixed; 0 is the split of studies before split_seed).",
    )

    @model_validator(mode="after")
    def _root_exists(self) -> "DataSpec":
        if self.source not in DATA_SOURCES:  # a loader of the user's: it must resolve now, it is called when the study runs
            from synthdata.errors import SpecError
            from synthdata.plugins import check_params, is_import_path, registered, resolve

            if not is_import_path(self.source) and self.source not in registered("data"):
                known = ", ".join([*DATA_SOURCES, *registered("data")])
                raise ValueError(f"source: unknown source {self.source!r} (choose {known}, or your own loader as package.module:load)")
            try:
                loader = resolve("data", self.source, "source")
                if not callable(loader):
                    raise SpecError(f"source: {self.source!r} is not callable (a loader is called as load(**params))")
                check_params(loader, self.source, self.params)
            except SpecError as err:  # its message starts with the field, so the file's reads data.source / data.params
                raise ValueError(str(err)) from None
            return self
        if self.params:
            raise ValueError(f"params: only your own loader takes params; source {self.source!r} is built in")
        if self.source in ("digits", "gaussian"):
            return self
        if self.root is None:
            raise ValueError(f"data.root: required for source '{self.source}'")
        if self.source == "folder" and self.root.is_file() and self.root.suffix.lower() == ".zip":
            return self
        if not self.download and not self.root.is_dir():
            raise ValueError(f"data.root: directory does not exist: {self.root}")
        return self


class AugmentSpec(Strict):
    """Training-time augmentation of a classifier's inputs."""

    crop_padding: int = Field(0, ge=0, le=16, description="Random crops after reflect-padding by this many pixels (0: off).")
    flip: bool = Field(False, description="Random horizontal flips (off for digits: a flipped digit is another shape).")


class ClassifierSpec(Strict):
    """A classifier: the detector (real vs generated), the downstream model, or the study's feature space."""

    name: str = Field(
        "cnn", description="cnn (the small CNN) or a timm model name (resnet18, resnet50, convnext_tiny, "
        "vit_small_patch16_224, ...), trained from scratch unless `pretrained` names a local weights file.",
    )
    pretrained: ExistingFile | None = Field(None, description="timm models: a local weights file to start from.")
    width: int = Field(32, ge=4, le=512, description="Channels of the first conv layer (cnn).")
    epochs: int = Field(15, ge=1)
    train_steps: int | None = Field(
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
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of your own classifier factory "
                                   "(`name: package.module:factory`, called as factory(in_channels=, num_classes=, "
                                   "image_size=, **params) and returning an nn.Module that gives logits).")

    @model_validator(mode="after")
    def _known_model(self) -> "ClassifierSpec":
        from synthdata.plugins import is_import_path, registered

        if is_import_path(self.name) or self.name in registered("classifier"):
            _check_factory(self.name, self.params)
        elif self.params:
            raise ValueError(f"params: only your own classifier takes params; {self.name!r} is built in")
        elif self.name not in ("cnn", "inception"):
            import timm

            if not timm.is_model(self.name):
                import difflib

                close = ", ".join(difflib.get_close_matches(self.name, timm.list_models(), n=4)) or "see timm.list_models()"
                raise ValueError(f"name: '{self.name}' is neither cnn nor a timm model (close: {close})")
        if self.patience is not None and self.val_fraction == 0:
            raise ValueError("patience: early stopping needs a validation split (set val_fraction, e.g. 0.1)")
        return self


def _check_factory(name: str, params: dict[str, Any]) -> None:
    """A classifier factory must import and take (in_channels, num_classes, image_size, **params)."""
    from synthdata.errors import SpecError
    from synthdata.plugins import check_params, resolve

    try:
        check_params(resolve("classifier", name, "name"), name, params, in_channels=1, num_classes=2, image_size=8)
    except SpecError as err:  # as a ValueError, so that the message names the section's field
        raise ValueError(str(err)) from None


class FeatureSpec(ClassifierSpec):
    """The study's feature space for FID/KID/PRDC: a CNN trained on the real data, or Inception with local weights."""

    name: Literal["cnn", "inception"] = Field("cnn", description="cnn (trained once per study) or inception (frozen).")
    weights: Path | None = Field(
        None, description="inception: a local FID Inception-v3 weights file (torch-fidelity's pt_inception-2015-12-05)."
    )

    @model_validator(mode="after")
    def _weights_exist(self) -> "FeatureSpec":
        if self.name == "inception":
            if self.weights is None:
                raise ValueError("features.weights: required for inception (nothing is downloaded at run time)")
            if not self.weights.is_file():
                raise ValueError(f"features.weights: file does not exist: {self.weights}")
        return self


class TrackingSpec(Strict):
    """Where results go. The tracking URI comes from MLFLOW_TRACKING_URI unless set here."""

    experiment: str | None = Field(None, min_length=1, description="MLflow experiment (default: the study name).")
    uri: str | None = Field(None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
    sample_grid: bool = Field(True, description="Log a grid of samples per generation as an image artifact.")
    checkpoints: bool = Field(
        True, description="Keep generations' generator weights and samples as artifacts (needed by --resume).")
    checkpoint_every: int = Field(
        10, ge=1, description="Which generations' checkpoints stay: every k-th (10, 20, ...) and always the latest; an "
        "accumulate arm also keeps every generation's samples (its later generations train on them). 1: every generation.")
    report_dir: Path = Field(Path("runs"), description="Figures and tables are also written to REPORT_DIR/<study name>/.")
    outage_limit_s: float = Field(
        600, gt=0, description="How long a tracking server may be away mid-study, in seconds. Meanwhile arms keep "
        "computing and what the study cannot write (metrics, params, tags, artifacts and checkpoints, run ends) waits in "
        "REPORT_DIR/<study name>/spool/, to be sent once, in order, when the server answers again; one line says when it "
        "went and one when it is back. Past the limit the study stops (exit code 75, its runs left resumable), and "
        "`synthdata run --resume` with the server back sends the spool first and continues.")
    storage: str | None = Field(
        None, description="Where sample sets too large to hold (over data.in_memory_mb) are written as uint8 shards: a "
        "directory or an fsspec URL (s3://bucket/path, gs://...; its package installed). Default: REPORT_DIR/<study name>/samples.",
    )


class ResourcesSpec(Strict):
    """Ray resources for each arm."""

    cpus_per_arm: float = Field(1, gt=0, description="CPUs Ray reserves for each arm; torch uses as many threads.")
    gpus_per_arm: float = Field(0, ge=0, description="GPUs for each arm (0 on CPU-only machines).")
    sampling_workers: int = Field(
        1, ge=1, le=1024,
        description="Workers that draw a loop arm's samples each generation, a mix study's pools and a detect study's "
        "generator and weights-file sources: the arm (or task) itself and sampling_workers - 1 Ray actors of 1 CPU (and "
        "gpus_per_arm GPUs) each, reserved together with it (one placement group), so two half-started arms never wait "
        "on each other. Every image has its own seed: the samples do not depend on this number. 1: alone. Guided "
        "samples, diffusers pipelines and diffusers-format checkpoints are drawn in the arm.",
    )
    workers_per_arm: int = Field(
        1, ge=1, le=1024,
        description="Workers that train each of an arm's models data-parallel (DDP: gloo on CPUs, NCCL on GPUs): the "
        "generator when it trains data-parallel (diffusion, and plug-ins that say so), the detector and the downstream "
        "classifier. The arm itself and workers_per_arm - 1 Ray actors of cpus_per_arm CPUs (and gpus_per_arm GPUs) each, reserved "
        "with the arm (one placement group, shared with its sampling workers: the arm holds max(sampling_workers, "
        "workers_per_arm) workers). Each takes its part of every batch, so the steps are one process's. 1: the arm "
        "trains alone.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast and TF32 on GPUs that support them, fp32 on CPUs; fp32 or bf16 everywhere.")
    address: str | None = Field(None, description="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
    max_arm_retries: int = Field(
        2, ge=0, le=100,
        description="Times an arm whose worker died (node lost, process killed) is restarted from its last finished "
        "generation. Errors in the arm itself (bad data, a diverging generator) fail it at once.",
    )

    @property
    def workers(self) -> int:
        """The workers one arm is, itself included: its sampling and training workers are the same actors."""
        return max(self.sampling_workers, self.workers_per_arm)

    @property
    def worker_cpus(self) -> float:
        """The CPUs of each of an arm's actors: the arm's own when they train with it (data-parallel workers must be
        equal, or all wait for the slowest), 1 when they only sample."""
        return self.cpus_per_arm if self.workers_per_arm > 1 else 1

    @model_validator(mode="after")
    def _one_gpu_per_training_worker(self) -> "ResourcesSpec":
        if self.workers_per_arm > 1 and 0 < self.gpus_per_arm < 1:
            raise ValueError(f"workers_per_arm: {self.workers_per_arm} workers with gpus_per_arm {self.gpus_per_arm:g} could "
                             "share a GPU, which NCCL refuses; data-parallel workers need a whole GPU each (gpus_per_arm: 1)")
        return self

