"""One arm of a loop study: a loop type, a seed, and any swept values, generation after generation.

`run_arm` is a plain Python generator of events, so it runs in-process for tests and as a
Ray streaming task in a study (see `loops/loop.py`). The science (each generation's
training set, fit then guide, the measurements) is `synthdata.autophagy` and
`synthdata.generators`; this module puts it in order. Generation 0 carries the real-data
reference values. A resumed arm starts after its last finished generation. A generator
whose fit becomes singular (`synthdata.generators.Collapsed`: a Gaussian's variance
collapsed to 0) ends the arm with a `Collapse` event: the loop's finding, not an error.

With `guidance.scale` > 0, S_t is drawn with detector guidance: a guiding classifier
trained on the real training set against G_t's unguided samples steers G_t's sampling (so
even a `replace` loop then sees real data, through the classifier's gradient).
"""
from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator

import torch

from synthdata.autophagy import StudyContext, build_training_set, grid_subset, measure_samples
from synthdata.data import ImageSet, Splits
from synthdata.fitting import fit_generator
from synthdata.generators import Collapsed, checkpoint_files, draw_samples
from synthdata.metrics.toy import toy_metrics
from synthdata.parallel import WorkerLost
from synthdata.seeds import Purpose, stream_seed
from synthdata.spec import LoopStudy, with_value


@dataclass(frozen=True)
class Arm:
    """One line of a loop study: a loop type and a seed, plus the swept values it runs with."""

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

    def row(self, generation: int) -> dict:
        """The columns that say which arm a table row is (as `synthdata.runs.loop_rows` reads them back)."""
        return {"arm": self.name, "group": self.group, "loop_type": self.loop_type, "seed": self.seed, "generation": generation}

    def spec_for(self, spec: LoopStudy) -> LoopStudy:
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
    checkpoint: dict[str, bytes] | None = None  # the generator's files (synthdata.generators.checkpoint_files)
    state: dict[str, torch.Tensor] | None = None  # G_t's weights, where the next generation starts from them (loop.init: previous)


@dataclass
class Collapse:
    """The arm's last event when its generator collapsed at `generation` (its fit became singular): the arm ends
    there, FINISHED, and its last finite metrics are generation - 1's. `reason`: what became singular."""

    arm: str
    generation: int
    reason: str


@dataclass
class ResumeState:
    """Where a resumed arm picks up: the next generation and the samples it needs."""

    start_generation: int
    history: list[ImageSet] = field(default_factory=list)  # S_1..S_{start-1} (only the latest unless accumulate)
    state: dict[str, torch.Tensor] | None = None  # G_{start-1}'s weights (loop.init: previous)


def _with_progress(
    fn: Callable[[Callable[[str, float], None]], Any], arm: str, generation: int, interval: float = 2.0
) -> Generator[Progress, None, Any]:
    """Run `fn(report)` in a thread and yield its reported (stage, fraction) every `interval` seconds.

    A generator cannot yield from inside a callback, so long steps (generator training)
    run beside the arm's event stream instead. Returns what `fn` returns.
    """
    state: dict[str, Any] = {"stage": "training generator", "fraction": 0.0}

    def target() -> None:
        try:
            state["value"] = fn(lambda stage, f: state.update(stage=stage, fraction=f))
        except BaseException as err:  # re-raised in the arm's thread below
            state["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(interval)  # quick steps (toy fits) finish here and report nothing
    while thread.is_alive():
        yield Progress(arm, generation, state["stage"], state["fraction"])
        thread.join(interval)
    if "error" in state:
        raise state["error"]
    return state["value"]


def _reference(spec: LoopStudy, splits: Splits, context: StudyContext, arm: Arm, device: str) -> GenerationResult:
    """Generation 0: the real-data reference values (real vs real, a classifier trained on real images)."""
    real = splits.train
    t0 = time.perf_counter()
    metrics = measure_samples(spec, splits, context, real, splits.heldout.images, lambda p: stream_seed(arm.seed, p, 0),
                              device, real_reference=True)
    metrics["time_metrics_s"] = time.perf_counter() - t0
    return GenerationResult(arm.name, 0, metrics, grid_subset(real.images, real.labels))


def _training_group(spec: LoopStudy, real: ImageSet, device: str) -> Any:
    """The arm's training group when `resources.workers_per_arm` > 1 (its actors also sample), else None."""
    from synthdata.sampling import arm_training_group

    return arm_training_group(spec.generator, real, spec.resources, device)


def run_arm(
    spec: LoopStudy,
    splits: Splits,
    arm: Arm,
    device: str = "cpu",
    context: StudyContext | None = None,
    resume: ResumeState | None = None,
) -> Iterator[Progress | GenerationResult | Collapse]:
    """Run the generations of one arm in order, yielding progress events and one result per generation.

    A generation whose generator collapses (`Collapsed`, from its fit or its sampling) yields a `Collapse` and
    ends the arm; at generation 1, which fits the real training set, a singular fit is the model's misfit to the
    data, not a loop's collapse, and raises ValueError (the arm fails with the reason).
    """
    spec = arm.spec_for(spec)
    context = context or StudyContext()
    if spec.loop.pretrained is not None and context.pretrained is None:
        raise ValueError("loop.pretrained: pass the study context that holds its weights (synthdata.autophagy.study_context)")
    loop, real = spec.loop, splits.train

    def seed_of(generation: int, purpose: Purpose) -> int:
        return stream_seed(arm.seed, purpose, generation)

    fixed_order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed_of(0, Purpose.ORDER)))
    history: list[ImageSet] = list(resume.history) if resume else []
    first = resume.start_generation if resume else 0
    # More than one worker per arm: this arm and k - 1 actors train each model data-parallel (synthdata.parallel), the
    # reference's too; the same actors sample. Started now, stopped with the arm.
    group = _training_group(spec, real, device)
    if first == 0:
        yield Progress(arm.name, 0, "real-data reference")
        for attempt in (1, 2):  # a worker lost: once more, on a new group
            try:
                with group.active() if group is not None else nullcontext():
                    reference = _reference(spec, splits, context, arm, device)
                break
            except BaseException as err:
                if group is not None:
                    group.close()
                if not isinstance(err, WorkerLost) or attempt == 2:
                    raise
                yield Progress(arm.name, 0, f"{err}: the reference starts again")
                group = _training_group(spec, real, device)
        yield reference
        first = 1

    n, n_eval = loop.samples_per_generation, len(splits.heldout)
    guidance = spec.guidance if spec.guidance.scale > 0 else None
    previous = resume.state if resume else None  # G_{t-1}'s weights, kept when generations warm-start
    # More than one sampling worker: this arm and k - 1 actors in its placement group draw each generation's samples
    # (the same images: per-image seeds). Started at the first sampling, stopped with the arm.
    workers = max(spec.resources.sampling_workers, spec.resources.workers_per_arm) if guidance is None else 1
    pool = None

    def draw(generator: Any, t: int) -> ImageSet:
        nonlocal pool
        kw = dict(label_seed=seed_of(t, Purpose.LABELS), sample_seed=seed_of(t, Purpose.SAMPLES),
                  context=f"generator diverged at generation {t}", storage=context.sample_storage(arm.name, t),
                  in_memory_mb=spec.data.in_memory_mb)
        if workers == 1:
            return draw_samples(generator, n + n_eval, real, **kw)
        if pool is None:
            from synthdata.sampling import SamplingPool

            pool = SamplingPool(spec.generator, real.shape, real.num_classes, workers,
                                cpus_per_worker=spec.resources.worker_cpus, gpus_per_worker=spec.resources.gpus_per_arm, local=True,
                                actors=group.actors if group is not None else None)
        return pool.draw(generator, n + n_eval, real, **kw)

    def _restart(group: Any, pool: Any, active: Any) -> tuple[Any, None, Any]:
        """A new training group (and sampling pool, made when next needed) for the arm, the old one's actors gone."""
        active.__exit__(None, None, None)
        if pool is not None:
            pool.close()
        if group is not None:
            group.close()
        group = _training_group(spec, real, device)
        active = group.active() if group is not None else nullcontext()
        active.__enter__()
        return group, None, active

    active = group.active() if group is not None else nullcontext()
    try:
        active.__enter__()
        for t in range(first, loop.generations + 1):
            train_set = build_training_set(
                arm.loop_type, splits, history, real_fraction=loop.real_fraction,
                generator=torch.Generator().manual_seed(seed_of(t, Purpose.FRESH)), fixed_order=fixed_order,
            )
            if t == 1:  # from the pretrained weights, if any; generation 1 always trains on the real data
                init, steps = context.pretrained, loop.pretrained_steps
            else:
                init, steps = (previous if loop.init == "previous" else None), None
            for attempt in (1, 2):  # a worker lost mid-generation: the generation once more, on a new group
                try:
                    try:
                        generator, info = yield from _with_progress(
                            lambda report: fit_generator(spec.generator, train_set, seed=arm.seed, generation=t, device=device,
                                                         guidance=guidance, real=real, progress=report, init=init, train_steps=steps,
                                                         storage=context.sample_storage(arm.name, t, "guidance"),
                                                         in_memory_mb=spec.data.in_memory_mb),
                            arm.name, t)
                        metrics: dict[str, float] = {"train_set_size": float(len(train_set)), **info}
                        slow = metrics["time_fit_s"] > 1.0  # worth telling the driver about stages only when generations are slow
                        if slow:
                            yield Progress(arm.name, t, "sampling")
                        start = time.perf_counter()
                        drawn = draw(generator, t)
                    except Collapsed as err:
                        if t == 1:
                            raise ValueError(f"generation 1 (fitted on the real training set): {err}; "
                                             "a loop needs a fit of the real data that is not singular (gaussian: generator.ridge above 0)") from err
                        yield Collapse(arm.name, t, str(err))
                        return
                    if loop.init == "previous":
                        kept = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
                    metrics["time_sample_s"] = time.perf_counter() - start
                    samples = drawn.subset(torch.arange(n))
                    held_out_fakes = drawn.images[n:]  # never trained on, by the detector or the next generator
                    if slow:
                        yield Progress(arm.name, t, "metrics")

                    start = time.perf_counter()
                    metrics.update(measure_samples(spec, splits, context, samples, held_out_fakes, lambda p: seed_of(t, p), device))
                    if "toy" in spec.metrics and splits.truth is not None:
                        metrics.update(toy_metrics(splits.truth, *generator.moments()))
                    metrics["time_metrics_s"] = time.perf_counter() - start
                    break
                except WorkerLost as err:
                    if attempt == 2:
                        raise
                    yield Progress(arm.name, t, f"{err}: generation {t} starts again")
                    group, pool, active = _restart(group, pool, active)
            if loop.init == "previous":
                previous = kept  # after the generation stands: a redone one starts from the same weights
            files = checkpoint_files(generator) if spec.tracking.checkpoints else None
            yield GenerationResult(arm.name, t, metrics, grid_subset(samples.images, samples.labels), samples, files,
                                   previous if loop.init == "previous" else None)
            history = history + [samples] if arm.loop_type == "accumulate" else [samples]
    finally:
        active.__exit__(None, None, None)
        if pool is not None:
            pool.close()
        if group is not None:
            group.close()
