"""The self-consuming (autophagy) loop for one arm: a loop type, a seed, and any swept values.

Generation t trains a fresh generator G_t on a training set D_t, samples S_t from it,
and measures S_t. How D_t is built is the loop type (D_1 is always the real training set):

- `replace`:    D_t = S_{t-1} (fully synthetic);
- `augment`:    D_t = real train (fixed) + S_{t-1};
- `fresh`:      D_t = a new real draw + S_{t-1};
- `accumulate`: D_t = real train + S_1 + ... + S_{t-1}.

With `guidance.scale` > 0, S_t is drawn with detector guidance: a classifier trained on
the real training set against G_t's unguided samples steers G_t's sampling (so even a
`replace` loop then sees real data, through the classifier's gradient).

`run_arm` is a plain Python generator of events, so it runs in-process for tests and
as a Ray streaming task in a study (see `loops/runner.py`). Generation 0 carries the
real-data reference values. A resumed arm starts after its last finished generation.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator

import torch

from synthdata.data import ImageSet, Splits, class_balanced_labels, concat, sample_truth
from synthdata.generators import create_generator, draw_samples
from synthdata.metrics.detectability import detectability, real_vs_real
from synthdata.metrics.downstream import downstream_accuracy
from synthdata.metrics.features import FeatureExtractor, RealReference, feature_metrics
from synthdata.metrics.toy import toy_metrics
from synthdata.spec import StudySpec, with_value


@dataclass(frozen=True)
class Arm:
    """One line of a study: a loop type and a seed, plus the swept values it runs with."""

    loop_type: str
    seed: int
    overrides: tuple[tuple[str, float], ...] = ()

    @property
    def name(self) -> str:
        """Run name in MLflow, so that arms line up in the UI: `replace/seed0`, `replace/temperature=0.9/seed0`."""
        swept = "".join(f"{key.split('.')[-1]}={value:g}/" for key, value in self.overrides)
        return f"{self.loop_type}/{swept}seed{self.seed}"

    @property
    def group(self) -> str:
        """The arm without its seed: one line in a figure, with a band over seeds."""
        return " ".join([self.loop_type, *(f"{key.split('.')[-1]}={value:g}" for key, value in self.overrides)])

    def params(self) -> dict[str, str]:
        """What the arm's MLflow run holds besides the study's params; `group` lets the UI colour runs by line."""
        return {"loop_type": self.loop_type, "seed": str(self.seed), "arm": self.name, "group": self.group, **{k: f"{v:g}" for k, v in self.overrides}}

    def spec_for(self, spec: StudySpec) -> StudySpec:
        """The study spec with this arm's swept values filled in."""
        for key, value in self.overrides:
            spec = with_value(spec, key, value)
        return spec


@dataclass
class Progress:
    """Where an arm is: `stage` of `generation`, `fraction` done."""

    arm: str
    generation: int
    stage: str
    fraction: float = 0.0


@dataclass
class GenerationResult:
    """Everything measured and kept for one generation of one arm."""

    arm: str
    generation: int
    metrics: dict[str, float]
    grid: tuple[torch.Tensor, torch.Tensor] | None = None  # a few (images, labels) for the sample grid
    samples: ImageSet | None = None  # S_t, what later generations train on (the checkpoint)
    generator_state: dict[str, torch.Tensor] | None = None


@dataclass
class StudyContext:
    """What every arm of a study shares, computed once in the driver."""

    reference: RealReference | None = None  # real held-out features (metric: features)
    extractor: FeatureExtractor | None = None  # None: the data are vectors, used as their own features


@dataclass
class ResumeState:
    """Where a resumed arm picks up: the next generation and the samples it needs."""

    start_generation: int
    history: list[ImageSet] = field(default_factory=list)  # S_1..S_{start-1} (only the latest unless accumulate)


def stream_seed(seed: int, generation: int, purpose: int) -> int:
    """The seed of one random stream of an arm: distinct and reproducible per (arm seed, generation,
    purpose), so that a resumed generation draws exactly what it would have drawn in one go."""
    return (seed * 1_000_003 + generation * 1_009 + purpose) % (2**31)


def _real_share(n_synthetic: int, real_fraction: float, available: int) -> int:
    return min(available, round(n_synthetic * real_fraction / (1 - real_fraction)))


def build_training_set(
    loop_type: str,
    splits: Splits,
    history: list[ImageSet],
    *,
    real_fraction: float | None = None,
    generator: torch.Generator | None = None,
    fixed_order: torch.Tensor | None = None,
) -> ImageSet:
    """D_t for the loop type, given the real data and the samples of the generations so far.

    `fixed_order` is a permutation of the real training set drawn once per arm, so that
    `augment` with a real fraction keeps the same real images every generation;
    `generator` draws `fresh`'s new real images (new samples of the true distribution for
    toy sources, a new subset of the real training set otherwise).
    """
    real = splits.train
    if not history:
        return real
    latest = history[-1]
    if loop_type == "replace":
        return latest
    if loop_type == "accumulate":
        return concat(real, *history)
    if loop_type == "augment":
        if real_fraction is None:
            return concat(real, latest)
        order = fixed_order if fixed_order is not None else torch.arange(len(real))
        return concat(real.subset(order[: _real_share(len(latest), real_fraction, len(real))]), latest)
    if loop_type == "fresh":
        g = generator or torch.Generator().manual_seed(0)
        fraction = 0.5 if real_fraction is None else real_fraction
        if splits.truth is not None:
            n = round(len(latest) * fraction / (1 - fraction))
            labels = class_balanced_labels(n, real.labels, real.num_classes, g)
            return concat(sample_truth(splits.truth, labels, g), latest)
        n = _real_share(len(latest), fraction, len(real))
        return concat(real.subset(torch.randperm(len(real), generator=g)[:n]), latest)
    raise ValueError(f"unknown loop type {loop_type!r}")


def _with_progress(
    fn: Callable[[Callable[[float], None]], Any], arm: str, generation: int, stage: str, interval: float = 2.0
) -> Generator[Progress, None, Any]:
    """Run `fn(report)` in a thread and yield its reported progress every `interval` seconds.

    A generator cannot yield from inside a callback, so long steps (generator training)
    run beside the arm's event stream instead. Returns what `fn` returns.
    """
    state: dict[str, Any] = {"fraction": 0.0}

    def target() -> None:
        try:
            state["value"] = fn(lambda f: state.__setitem__("fraction", f))
        except BaseException as err:  # re-raised in the arm's thread below
            state["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(interval)  # quick steps (toy fits) finish here and report nothing
    while thread.is_alive():
        yield Progress(arm, generation, stage, state["fraction"])
        thread.join(interval)
    if "error" in state:
        raise state["error"]
    return state["value"]


def _grid_subset(images: torch.Tensor, labels: torch.Tensor, per_class: int = 8) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Up to `per_class` images of each class, ordered by class, for a readable grid (images only)."""
    if images.shape[-1] == 1:  # vectors, not images
        return None
    picks = [torch.nonzero(labels == k).flatten()[:per_class] for k in labels.unique().sort().values]
    idx = torch.cat(picks)
    return images[idx], labels[idx]


def _measure(
    spec: StudySpec,
    splits: Splits,
    context: StudyContext,
    images: torch.Tensor,
    labels: torch.Tensor,
    eval_images: torch.Tensor,
    seed_of: Callable[[int], int],
    device: str,
    real_reference_run: bool = False,
) -> dict[str, float]:
    """The per-generation metrics of `images` (S_t), with `eval_images` as held-out samples for detectability."""
    wants, out = set(spec.metrics), {}
    if "detectability" in wants:
        if real_reference_run:
            d = real_vs_real(splits.train.images, splits.heldout.images, spec.detector, seed=seed_of(1), device=device)
        else:
            d = detectability(splits.train.images, images, splits.heldout.images, eval_images, spec.detector, seed=seed_of(1), device=device)
        out.update(d.as_metrics())
    if "downstream" in wants:
        acc = downstream_accuracy(images, labels, splits.test.images, splits.test.labels, splits.train.num_classes, spec.downstream, seed=seed_of(2), device=device)
        out.update(downstream_accuracy=acc.value, downstream_accuracy_ci_low=acc.ci_low, downstream_accuracy_ci_high=acc.ci_high)
    if "features" in wants and context.reference is not None:
        # The extractor was built once in the driver, on the CPU; features are cheap there.
        feats = context.extractor.embed(images.cpu()) if context.extractor is not None else images.flatten(1)
        out.update(feature_metrics(context.reference, feats, labels))
    return out


def run_arm(
    spec: StudySpec,
    splits: Splits,
    arm: Arm,
    device: str = "cpu",
    context: StudyContext | None = None,
    resume: ResumeState | None = None,
) -> Iterator[Progress | GenerationResult]:
    """Run the generations of one arm in order, yielding progress events and one result per generation."""
    spec = arm.spec_for(spec)
    context = context or StudyContext()
    loop, real = spec.loop, splits.train
    k = real.num_classes

    def seed_of(generation: int, purpose: int) -> int:
        return stream_seed(arm.seed, generation, purpose)

    fixed_order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed_of(0, 9)))
    history: list[ImageSet] = list(resume.history) if resume else []
    first = resume.start_generation if resume else 0

    if first == 0:  # generation 0: reference values on real data only
        yield Progress(arm.name, 0, "real-data reference")
        t0 = time.perf_counter()
        metrics = _measure(spec, splits, context, real.images, real.labels, splits.heldout.images,
                           lambda p: seed_of(0, p), device, real_reference_run=True)
        metrics["time_metrics_s"] = time.perf_counter() - t0
        yield GenerationResult(arm.name, 0, metrics, _grid_subset(real.images, real.labels))
        first = 1

    n, n_eval = loop.samples_per_generation, len(splits.heldout)
    for t in range(first, loop.generations + 1):
        train_set = build_training_set(
            arm.loop_type, splits, history, real_fraction=loop.real_fraction,
            generator=torch.Generator().manual_seed(seed_of(t, 8)), fixed_order=fixed_order,
        )
        generator = create_generator(spec.generator, real.shape, k, device)
        metrics: dict[str, float] = {"train_set_size": float(len(train_set))}

        start = time.perf_counter()
        fit_info = yield from _with_progress(
            lambda report: generator.fit(train_set, seed=seed_of(t, 3), progress=report), arm.name, t, "training generator"
        )
        metrics["time_fit_s"] = time.perf_counter() - start
        metrics.update({key: float(v) for key, v in fit_info.items()})
        if spec.guidance.scale > 0:  # detector guidance: steer this generation's sampling toward the real data
            from synthdata.guidance import guide_generator

            start, fitted = time.perf_counter(), generator
            generator, guide_info = yield from _with_progress(
                lambda report: guide_generator(fitted, spec.guidance, real, seed=seed_of(t, 6), device=device, progress=report),
                arm.name, t, "training guiding classifier",
            )
            metrics["time_guide_s"] = time.perf_counter() - start
            metrics.update(guide_info)
        if metrics["time_fit_s"] > 1.0:  # worth telling the driver only when generations are slow
            yield Progress(arm.name, t, "sampling")

        start = time.perf_counter()
        drawn = draw_samples(generator, n + n_eval, real, label_seed=seed_of(t, 4), sample_seed=seed_of(t, 5),
                             context=f"generator diverged at generation {t}")
        images, labels = drawn.images, drawn.labels
        metrics["time_sample_s"] = time.perf_counter() - start
        samples = ImageSet(images[:n], labels[:n], k, real.levels)
        held_out_fakes = images[n:]  # never trained on, by the detector or the next generator
        if metrics["time_fit_s"] > 1.0:
            yield Progress(arm.name, t, "metrics")

        start = time.perf_counter()
        metrics.update(_measure(spec, splits, context, samples.images, samples.labels, held_out_fakes, lambda p: seed_of(t, p), device))
        if "toy" in spec.metrics and splits.truth is not None:
            metrics.update(toy_metrics(splits.truth, *generator.moments()))
        metrics["time_metrics_s"] = time.perf_counter() - start

        state = generator.state_dict() if spec.tracking.checkpoints else None
        yield GenerationResult(arm.name, t, metrics, _grid_subset(samples.images, samples.labels), samples, state)
        history = history + [samples] if arm.loop_type == "accumulate" else [samples]
