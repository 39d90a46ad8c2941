"""The self-consuming (autophagy) loop for one arm: a loop type and a seed.

Generation t trains a fresh generator G_t on a training set D_t, samples S_t from it,
and measures S_t. How D_t is built is the loop type:

- `replace`: D_1 = real train, D_t = S_{t-1} (fully synthetic);
- `augment`: D_t = real train + S_{t-1} (the real set stays fixed).

`run_arm` is a plain Python generator of events, so it runs in-process for tests and
as a Ray streaming task in a study (see `loops/runner.py`). Generation 0 carries the
real-data reference values.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator

import torch

from synthdata.data import ImageSet, Splits, class_balanced_labels, concat, quantize
from synthdata.generators import create_generator
from synthdata.metrics.detectability import detectability, real_vs_real
from synthdata.metrics.downstream import downstream_accuracy
from synthdata.spec import StudySpec


@dataclass(frozen=True)
class Arm:
    loop_type: str
    seed: int

    @property
    def name(self) -> str:
        """Run name in MLflow, so that arms line up in the UI: `replace/seed0`."""
        return f"{self.loop_type}/seed{self.seed}"


@dataclass
class Progress:
    """Where an arm is: `stage` of `generation`, `fraction` done."""

    arm: str
    generation: int
    stage: str
    fraction: float = 0.0


@dataclass
class GenerationResult:
    """Everything measured for one generation of one arm."""

    arm: str
    generation: int
    metrics: dict[str, float]
    samples: torch.Tensor | None = None  # a few samples for the grid image (uint8-safe range [-1, 1])
    sample_labels: torch.Tensor | None = None
    info: dict[str, str] = field(default_factory=dict)


def build_training_set(loop_type: str, real: ImageSet, previous: ImageSet | None) -> ImageSet:
    """D_t for the loop type, given the real training set and the previous generation's samples."""
    if previous is None:
        return real
    if loop_type == "replace":
        return previous
    if loop_type == "augment":
        return concat(real, previous)
    raise ValueError(f"unknown loop type {loop_type!r}")


def device_for(gpus: float) -> str:
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


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
    yield Progress(arm, generation, stage, 0.0)
    while thread.is_alive():
        thread.join(interval)
        yield Progress(arm, generation, stage, state["fraction"])
    if "error" in state:
        raise state["error"]
    return state["value"]


def _grid_subset(images: torch.Tensor, labels: torch.Tensor, per_class: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `per_class` images of each class, ordered by class, for a readable grid."""
    picks = [torch.nonzero(labels == k).flatten()[:per_class] for k in labels.unique().sort().values]
    idx = torch.cat(picks)
    return images[idx], labels[idx]


def run_arm(spec: StudySpec, splits: Splits, arm: Arm, device: str = "cpu") -> Iterator[Progress | GenerationResult]:
    """Run the generations of one arm in order, yielding progress events and one result per generation."""
    loop, real = spec.loop, splits.train
    wants = set(spec.metrics)
    k = real.num_classes

    def seed_of(generation: int, purpose: int) -> int:
        # Distinct, reproducible streams per (arm seed, generation, purpose).
        return (arm.seed * 1_000_003 + generation * 1_009 + purpose) % (2**31)

    # Generation 0: reference values on real data only.
    yield Progress(arm.name, 0, "real-data reference")
    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    if "detectability" in wants:
        metrics.update(real_vs_real(real.images, splits.heldout.images, spec.detector, seed=seed_of(0, 1), device=device).as_metrics())
    if "downstream" in wants:
        acc = downstream_accuracy(
            real.images, real.labels, splits.test.images, splits.test.labels, k, spec.downstream, seed=seed_of(0, 2), device=device
        )
        metrics.update(downstream_accuracy=acc.value, downstream_accuracy_ci_low=acc.ci_low, downstream_accuracy_ci_high=acc.ci_high)
    metrics["time_metrics_s"] = time.perf_counter() - t0
    yield GenerationResult(arm.name, 0, metrics, *_grid_subset(real.images, real.labels), info={"source": "real"})

    previous: ImageSet | None = None
    n_eval = len(splits.heldout)
    for t in range(1, loop.generations + 1):
        train_set = build_training_set(arm.loop_type, real, previous)
        generator = create_generator(spec.generator, real.shape, k, device)
        metrics = {"train_set_size": float(len(train_set))}

        start = time.perf_counter()
        fit_info = yield from _with_progress(
            lambda report: generator.fit(train_set, seed=seed_of(t, 3), progress=report), arm.name, t, "training generator"
        )
        metrics["time_fit_s"] = time.perf_counter() - start
        metrics.update({k_: float(v) for k_, v in fit_info.items()})
        yield Progress(arm.name, t, "sampling")

        start = time.perf_counter()
        labels = class_balanced_labels(loop.samples_per_generation + n_eval, real.labels, k, torch.Generator().manual_seed(seed_of(t, 4)))
        images = quantize(generator.sample(labels, seed=seed_of(t, 5)), real.levels)
        metrics["time_sample_s"] = time.perf_counter() - start
        n = loop.samples_per_generation
        samples = ImageSet(images[:n], labels[:n], k, real.levels)
        held_out_fakes = images[n:]  # never trained on, by the detector or the next generator
        yield Progress(arm.name, t, "metrics")

        start = time.perf_counter()
        if "detectability" in wants:
            d = detectability(real.images, samples.images, splits.heldout.images, held_out_fakes, spec.detector, seed=seed_of(t, 6), device=device)
            metrics.update(d.as_metrics())
        if "downstream" in wants:
            acc = downstream_accuracy(
                samples.images, samples.labels, splits.test.images, splits.test.labels, k, spec.downstream, seed=seed_of(t, 7), device=device
            )
            metrics.update(downstream_accuracy=acc.value, downstream_accuracy_ci_low=acc.ci_low, downstream_accuracy_ci_high=acc.ci_high)
        metrics["time_metrics_s"] = time.perf_counter() - start
        yield GenerationResult(arm.name, t, metrics, *_grid_subset(samples.images, samples.labels))
        previous = samples
