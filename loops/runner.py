"""Run a loop study: arms as Ray streaming tasks, results logged to MLflow by the driver.

study file -> spec (validated) -> real data (loaded and checked here, once) -> the
study's shared context (feature extractor, real features) -> Ray arms (whose first
generations, when they are one computation, run once for all of them) -> per-generation
events -> MLflow + progress -> a table and figures.
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from loops.autophagy import Arm, GenerationResult, Progress, ResumeState, StudyContext, run_arm
from synthdata.data import Splits, make_splits
from synthdata.errors import UserError
from synthdata.generators import check_generator
from synthdata.metrics.features import RealReference, train_feature_extractor
from synthdata.figures import metric_figures
from synthdata.results import format_table, loop_rows_from_mlflow, results_table
from synthdata.spec import StudySpec, flat_params, spec_hash
from synthdata.tracking import StudyTracker, download_samples, find_resumable, resolve_tracking_uri, sample_grid


def arms_of(spec: StudySpec) -> list[Arm]:
    """One arm per loop type, swept value combination and seed, in the order the study file lists them."""
    keys = list(spec.loop.sweep)
    combos = list(itertools.product(*(spec.loop.sweep[k] for k in keys))) or [()]
    return [
        Arm(loop_type, seed, tuple(zip(keys, combo)))
        for loop_type in spec.loop.types
        for combo in combos
        for seed in spec.loop.seeds
    ]


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a running cluster (address or $RAY_ADDRESS), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=True, logging_level="ERROR")
    # "local" always starts a new Ray here; without it, ray.init() would join whatever
    # cluster `ray start` last left running on this machine.
    ray.init(address=address or "local", num_cpus=None if address else num_cpus, **kwargs)


def study_context(spec: StudySpec, splits: Splits) -> StudyContext:
    """What all arms share, computed once: the frozen feature extractor and the real features."""
    if "features" not in spec.metrics:
        return StudyContext()
    heldout = splits.heldout
    if heldout.images.shape[-1] == 1:  # toy vectors are their own features
        return StudyContext(RealReference.build(None, heldout.images.flatten(1), heldout.labels))
    extractor = train_feature_extractor(splits.train.images, splits.train.labels, splits.train.num_classes, spec.features, seed=0)
    return StudyContext(RealReference.build(extractor, heldout.images, heldout.labels), extractor)


def _arm_task(spec: StudySpec, splits: Splits, arm: Arm, context: StudyContext, resume: ResumeState | None, every_s: float = 0.5):
    """The body of one arm's Ray task: pin torch threads to the CPUs Ray gave us, then stream events.

    Events go out in lists, at most one every `every_s` seconds, except that a slow
    generation's result (one that took `every_s` or more) leaves at once: a toy loop's
    thousands of fast generations cost a few hundred Ray objects instead of one each, and
    no finished generation waits in a list for whatever event comes next.
    """
    from synthdata.compute import configure_worker

    device = configure_worker(spec.resources)
    batch: list = []
    sent = finished = time.monotonic()
    try:
        for event in run_arm(spec, splits, arm, device=device, context=context, resume=resume):
            batch.append(event)
            now = time.monotonic()
            slow = isinstance(event, GenerationResult) and now - finished >= every_s
            if isinstance(event, GenerationResult):
                finished = now
            if slow or now - sent >= every_s:
                yield batch
                batch, sent = [], now
    except Exception:
        if batch:  # the generations that finished before the error still count
            yield batch
        raise
    if batch:
        yield batch


# Generations 0 (the real reference) and 1 (trained on the real training set alone) do not
# depend on the loop type: arms that differ only in it compute them once.
SHARED_GENERATIONS = 1


def share_groups(spec: StudySpec, arms: list[Arm], states: dict[str, ResumeState | None]) -> list[list[Arm]]:
    """The arms, grouped where their first generations are one computation: same seed and swept
    values, neither resumed. Arms that share nothing come alone, in the study's order.

    Only trained generators share: a diffusion fit takes minutes, while a toy generator's
    takes milliseconds, less than the extra worker start that sharing costs.
    """
    shares = spec.generator.name == "diffusion"
    groups: dict[tuple, list[Arm]] = {}
    for arm in arms:
        key = (arm.seed, arm.overrides) if shares and states.get(arm.name) is None else (arm.name,)
        groups.setdefault(key, []).append(arm)
    return list(groups.values())


def prefix_spec(spec: StudySpec, cpus: float) -> StudySpec:
    """The spec a shared prefix runs under: generations 0-1 only, with the CPUs of the arms it stands for."""
    loop = spec.loop.model_copy(update={"generations": min(SHARED_GENERATIONS, spec.loop.generations)})
    return spec.model_copy(update={"loop": loop, "resources": spec.resources.model_copy(update={"cpus_per_arm": cpus})})


def _widest_node_cpus() -> float:
    """The most CPUs one live node has: a task asking for more would never be scheduled."""
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)


@dataclass
class StudyResult:
    table: pd.DataFrame
    parent_run_id: str
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    figures: list[Path] = field(default_factory=list)


class _Bars:
    """Progress per arm: a bar per arm over its generations on a terminal, one line per generation otherwise."""

    def __init__(self, arms: list[Arm], generations: int, enabled: bool, done: dict[str, int]) -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.width = max(len(a.name) for a in arms)
        self.total = generations
        self.quiet = len(arms) * generations > 200  # many short generations: a line each would flood the log
        self.bars = {
            a.name: tqdm(total=generations + 1, initial=done.get(a.name, -1) + 1, desc=a.name.ljust(self.width), position=i,
                         unit="gen", leave=True, dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
            for i, a in enumerate(arms)
        } if self.live else {}

    def progress(self, ev: Progress) -> None:
        if self.live:
            bar = self.bars[ev.arm]
            bar.set_postfix_str(f"gen {ev.generation}: {ev.stage} {ev.fraction:4.0%}", refresh=False)
            bar.refresh()

    def done(self, ev: GenerationResult) -> None:
        shown = {k: v for k, v in ev.metrics.items() if k in ("detectability", "downstream_accuracy", "fid", "fitted_variance")}
        summary = " ".join(f"{k}={v:.3g}" for k, v in shown.items())
        if self.live:
            bar = self.bars[ev.arm]
            bar.set_postfix_str(f"gen {ev.generation}: {summary}", refresh=False)
            bar.update(1)
        elif self.enabled and (not self.quiet or ev.generation == self.total):
            secs = sum(v for k, v in ev.metrics.items() if k.startswith("time_"))
            print(f"{ev.arm.ljust(self.width)}  generation {ev.generation}/{self.total}  {summary}  ({secs:.1f}s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _prepare_resume(spec: StudySpec, uri: str, arms: list[Arm]):
    """The run to continue and each arm's ResumeState; UserError when there is nothing that matches."""
    found, fingerprint = find_resumable(uri, spec.experiment_name, spec.name)
    if found is None:
        raise UserError(f"--resume: no earlier run of study '{spec.name}' in experiment '{spec.experiment_name}' at {uri}")
    if fingerprint != spec_hash(spec):
        raise UserError(
            f"--resume: the latest run of study '{spec.name}' ({found.parent_id}) was made from a different study file; "
            "run without --resume, or give the study another name"
        )
    states: dict[str, ResumeState | None] = {}
    for arm in arms:
        done = found.done.get(arm.name, -1)
        if done < 0:
            states[arm.name] = None
            continue
        keep = range(1, done + 1) if arm.loop_type == "accumulate" else range(max(1, done), done + 1)
        history = [download_samples(uri, found.arm_runs[arm.name], g) for g in keep if g >= 1]
        states[arm.name] = ResumeState(done + 1, history)
    return found, states


def _row_base(arm: Arm, generation: int) -> dict:
    return {"arm": arm.name, "group": arm.group, "loop_type": arm.loop_type, "seed": arm.seed, "generation": generation}


def run_loop_study(
    spec: StudySpec,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    show_progress: bool = True,
    resume: bool = False,
) -> StudyResult:
    """Run every arm of a loop study on Ray and log it to MLflow. Returns the per-generation table."""
    import ray

    start = time.perf_counter()
    splits = make_splits(spec.data, seed=0)  # data errors surface here, before Ray or MLflow
    check_generator(spec.generator, splits.train.shape)
    arms = arms_of(spec)
    uri = resolve_tracking_uri(tracking_uri or spec.tracking.uri)
    found, states = _prepare_resume(spec, uri, arms) if resume else (None, {})

    init_ray(address or spec.resources.address)
    context = study_context(spec, splits)
    tracker = StudyTracker(
        uri, spec.experiment_name, spec.name, flat_params(spec),
        tags={"synthdata.kind": spec.kind, "synthdata.spec_hash": spec_hash(spec)}, resume=found,
    )
    # Ray's own task retries would rerun a dead arm from generation 0 and log its
    # generations twice; the driver restarts it instead, from its last finished generation.
    remote = ray.remote(_arm_task).options(
        num_cpus=spec.resources.cpus_per_arm, num_gpus=spec.resources.gpus_per_arm, max_retries=0
    )
    splits_ref, context_ref = ray.put(splits), ray.put(context)
    streams: dict[Any, list[Arm]] = {}  # a running arm task -> the arms its events stand for (several: a shared prefix)
    pending: list = []
    done = dict(found.done) if found else {}
    kept = {name: list(state.history) for name, state in states.items() if state is not None}
    retries: dict[str, int] = {}
    rows: list[dict] = loop_rows_from_mlflow(uri, tracker.parent_id) if found else []  # generations before the resume

    def launch(group: list[Arm], state: ResumeState | None = None) -> None:
        if len(group) > 1:  # their shared first generations, once, on the CPUs the group would hold
            width = min(spec.resources.cpus_per_arm * len(group), _widest_node_cpus())
            task = ray.remote(_arm_task).options(num_cpus=width, num_gpus=spec.resources.gpus_per_arm, max_retries=0)
            stream = task.remote(prefix_spec(spec, width), splits_ref, group[0], context_ref, None)
        else:
            stream = remote.remote(spec, splits_ref, group[0], context_ref, state)
        streams[stream] = group
        pending.append(stream)

    for arm in arms:
        tracker.start_arm(arm.name, arm.params())
        if done.get(arm.name, -1) >= spec.loop.generations:
            tracker.end_arm(arm.name, "FINISHED")
    for group in share_groups(spec, arms, states):
        if len(group) == 1 and done.get(group[0].name, -1) >= spec.loop.generations:
            continue
        if len(group) > 1:
            names = [a.name for a in group]
            for arm in group:
                tracker.tag_arm(arm.name, "synthdata.shared_generations",
                                f"0-{SHARED_GENERATIONS} computed once for " + ", ".join(names))
        launch(group, states.get(group[0].name))

    bars = _Bars(arms, spec.loop.generations, show_progress, done)
    failed: dict[str, str] = {}
    status = "FAILED"
    try:
        while pending:
            ready, _ = ray.wait(pending, num_returns=1, timeout=tracker.flush_every_s)
            tracker.flush_due()  # what has waited long enough in the buffer goes out, busy or not
            for stream in ready:
                group = streams[stream]
                try:
                    events = ray.get(next(stream))
                except StopIteration:
                    pending.remove(stream)
                    for arm in group:
                        if len(group) > 1 and 0 <= done.get(arm.name, -1) < spec.loop.generations:  # a shared prefix ended
                            launch([arm], ResumeState(done[arm.name] + 1, kept.get(arm.name, [])))  # on alone
                        else:
                            tracker.end_arm(arm.name, "FINISHED")
                    continue
                except ray.exceptions.RayTaskError as err:  # the arm's own code raised: not worth retrying
                    pending.remove(stream)
                    for arm in group:
                        failed[arm.name] = _short_reason(err)
                        tracker.end_arm(arm.name, "FAILED", failed[arm.name])
                    continue
                except ray.exceptions.RayError as err:  # the worker or its node died
                    pending.remove(stream)
                    for arm in group:
                        retries[arm.name] = retries.get(arm.name, 0) + 1
                        if retries[arm.name] > spec.resources.max_arm_retries:
                            failed[arm.name] = f"{_short_reason(err)} (gave up after {spec.resources.max_arm_retries} retries)"
                            tracker.end_arm(arm.name, "FAILED", failed[arm.name])
                            continue
                        last = done.get(arm.name, -1)
                        tracker.note_retry(arm.name, retries[arm.name], f"{type(err).__name__}: {_short_reason(err)}")
                        print(f"{arm.name}: worker lost ({type(err).__name__}); retry {retries[arm.name]} from generation {last + 1}",
                              file=sys.stderr, flush=True)
                        launch([arm], ResumeState(last + 1, kept.get(arm.name, [])) if last >= 0 else None)
                    continue
                for event in events:
                    if isinstance(event, Progress):
                        for arm in group:
                            bars.progress(replace(event, arm=arm.name))
                        continue
                    grid = sample_grid(event.grid[0]) if spec.tracking.sample_grid and event.grid is not None else None
                    for arm in group:  # a shared generation is logged in each arm's run, as if it had run there
                        tracker.log_generation(arm.name, event.generation, event.metrics, grid, event.samples,
                                               event.generator_state, keep_samples=spec.tracking.checkpoints)
                        rows.append({**_row_base(arm, event.generation), **event.metrics})
                        done[arm.name] = event.generation
                        if event.samples is not None:  # what a restart of this arm would need
                            history = kept.get(arm.name, []) if arm.loop_type == "accumulate" else []
                            kept[arm.name] = history + [event.samples]
                        bars.done(replace(event, arm=arm.name))
        status = "FAILED" if failed else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bars.close()
        table = results_table(rows)
        figures: list[Path] = []
        if not table.empty:
            out_dir = Path(spec.tracking.report_dir) / spec.name
            tracker.save_results(out_dir, table, format_table(table))
            if status != "KILLED":
                figures = metric_figures(table, out_dir / "figures", title=spec.name)
                tracker.log_figures(figures)
        tracker.end(status)
    return StudyResult(table, tracker.parent_id, failed, time.perf_counter() - start, figures)


def wait_cells(refs: dict, tracker: StudyTracker, on_result: Callable[[Any, Any], str], *, desc: str,
               show_progress: bool) -> dict[str, str]:
    """Wait for cell tasks (`refs`: task ref -> a cell with a `name` and an open run), in the order they finish.

    A cell whose task raised is ended FAILED with the reason; otherwise `on_result(cell,
    value)` logs it and returns a progress line, and its run is ended FINISHED. Progress
    is a bar on a terminal, one line per cell in a log. Returns the failures by cell name.
    """
    import ray
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(total=len(refs), desc=desc, unit="cell", disable=not (show_progress and tty), file=sys.stderr)
    failed: dict[str, str] = {}
    done = 0
    try:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            cell = refs[ready[0]]
            try:
                value = ray.get(ready[0])
            except ray.exceptions.RayError as err:
                failed[cell.name] = _short_reason(err)
                tracker.end_arm(cell.name, "FAILED", failed[cell.name])
                continue
            line = on_result(cell, value)
            tracker.end_arm(cell.name, "FINISHED")
            done += 1
            bar.set_postfix_str(line)
            bar.update()
            if show_progress and not tty:
                print(f"[{done}/{len(refs)}] {line}", file=sys.stderr, flush=True)
    finally:
        bar.close()
    return failed


def _short_reason(err: Exception) -> str:
    """The last line of a worker's error: the exception type and message, not the Ray traceback."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__
