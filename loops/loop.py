"""Run a loop study: arms as Ray streaming tasks, results logged to MLflow by the driver.

spec -> real data (loaded and checked once, in `loops.study`) -> the study's shared context
(feature extractor, real features) -> Ray arms (whose first generations, when they are one
computation, run once for all of them) -> per-generation events -> MLflow + progress -> a
table and figures. An arm whose generator collapses (its fit became singular) ends FINISHED
with the generation recorded (`collapsed_at_generation`, tag `synthdata.collapsed`), and a
resumed study leaves it there.
"""
from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from loops.autophagy import Arm, Collapse, GenerationResult, Progress, ResumeState, run_arm
from loops.ray_tools import arm_placement, release, short_reason, widest_node_cpus
from loops.stopping import check_stopped
from loops.study import Prepared, Study
from synthdata.autophagy import StudyContext, study_context
from synthdata.data import ImageSet, Splits
from synthdata.figures import metric_figures, sample_grid
from synthdata.generators import check_generator, pretrained_overlap
from synthdata.metrics.registry import COLLAPSED, progress_metrics
from synthdata.results import format_table, results_table  # noqa: F401  format_table: this runner's text form
from synthdata.runs import download_generator_state, download_samples, loop_rows, pretrained_weights, study_to_resume
from synthdata.shards import storage_of
from synthdata.spec import LoopStudy

RESUMABLE = True
# Generations 0 (the real reference) and 1 (trained on the real training set alone) do not
# depend on the loop type: arms that differ only in it compute them once.
SHARED_GENERATIONS = 1


def arms_of(spec: LoopStudy) -> list[Arm]:
    """One arm per loop type, swept value combination and seed, in the order the study file lists them."""
    keys = list(spec.loop.sweep)
    combos = list(itertools.product(*(spec.loop.sweep[k] for k in keys))) or [()]
    return [
        Arm(loop_type, seed, tuple(zip(keys, combo)))
        for loop_type in spec.loop.types
        for combo in combos
        for seed in spec.loop.seeds
    ]


def arm_task(spec: LoopStudy, splits: Splits, arm: Arm, context: StudyContext, resume: ResumeState | None, every_s: float = 0.5):
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


def share_groups(spec: LoopStudy, arms: list[Arm], states: dict[str, ResumeState | None]) -> list[list[Arm]]:
    """The arms, grouped where their first generations are one computation: same seed and swept
    values, neither resumed. Arms that share nothing come alone, in the study's order.

    Only trained generators share: a diffusion fit takes minutes, while a toy generator's
    takes milliseconds, less than the extra worker start that sharing costs. Arms with workers
    (`resources.workers` > 1) never share: a shared task is wider than one arm, its workers are not.
    """
    shares = spec.generator.name == "diffusion" and spec.resources.workers == 1
    groups: dict[tuple, list[Arm]] = {}
    for arm in arms:
        key = (arm.seed, arm.overrides) if shares and states.get(arm.name) is None else (arm.name,)
        groups.setdefault(key, []).append(arm)
    return list(groups.values())


def prefix_spec(spec: LoopStudy, cpus: float) -> LoopStudy:
    """The spec a shared prefix runs under: generations 0-1 only, with the CPUs of the arms it stands for."""
    loop = spec.loop.model_copy(update={"generations": min(SHARED_GENERATIONS, spec.loop.generations)})
    return spec.model_copy(update={"loop": loop, "resources": spec.resources.model_copy(update={"cpus_per_arm": cpus})})


class _Bars:
    """Progress per arm: a bar per arm over its generations on a terminal, one line per generation otherwise."""

    def __init__(self, arms: list[Arm], generations: int, enabled: bool, done: dict[str, int]) -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.width = max(len(a.name) for a in arms)
        self.total = generations
        self.quiet = len(arms) * generations > 200  # many short generations: a line each would flood the log
        self.shown = progress_metrics()
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
        summary = " ".join(f"{k}={ev.metrics[k]:.3g}" for k in self.shown if k in ev.metrics)
        if self.live:
            bar = self.bars[ev.arm]
            bar.set_postfix_str(f"gen {ev.generation}: {summary}", refresh=False)
            bar.update(1)
        elif self.enabled and (not self.quiet or ev.generation == self.total):
            secs = sum(v for k, v in ev.metrics.items() if k.startswith("time_"))
            print(f"{ev.arm.ljust(self.width)}  generation {ev.generation}/{self.total}  {summary}  ({secs:.1f}s)",
                  file=sys.stderr, flush=True)

    def collapsed(self, arm: str, generation: int, line: str) -> None:
        """An arm's generator collapsed: its bar says so, and one line says where (with or without bars)."""
        if self.live:
            self.bars[arm].set_postfix_str(f"gen {generation}: collapsed")
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _resume_states(spec: LoopStudy, uri: str, arms: list[Arm], real: ImageSet) -> Prepared:
    """The run to continue and each arm's ResumeState; UserError when there is nothing that matches."""
    found = study_to_resume(spec, uri)
    states: dict[str, ResumeState | None] = {}
    for arm in arms:
        done = found.done.get(arm.name, -1)
        if done < 0 or arm.name in found.collapsed:  # nothing done yet, or a collapsed arm (ended: nothing to download)
            states[arm.name] = None
            continue
        keep = range(1, done + 1) if arm.loop_type == "accumulate" else range(max(1, done), done + 1)
        history = [download_samples(uri, found.arm_runs[arm.name], g) for g in keep if g >= 1]
        warm = spec.loop.init == "previous" and done >= 1
        state = download_generator_state(uri, found.arm_runs[arm.name], done, spec.generator, real.shape,
                                         real.num_classes) if warm else None
        states[arm.name] = ResumeState(done + 1, history, state)
    return Prepared(found, states)


@dataclass
class LoopPlan:
    """What the driver starts from: each resumed arm's state, and generation 1's pretrained weights."""

    states: dict[str, ResumeState | None]
    pretrained: dict | None = None


def prepare(spec: LoopStudy, splits: dict[int, Splits], uri: str, resume: bool) -> Prepared:
    """Check the generator against the data, read the pretrained weights once (weights that do not fit the generator,
    or an MLflow URI that names nothing, stop the study here in one line) and, with --resume, find where every arm
    stopped."""
    real = splits[spec.loop.seeds[0]].train
    check_generator(spec.generator, real.shape)
    pretrained = None
    if spec.loop.pretrained is not None:
        pretrained = pretrained_weights(spec.loop.pretrained, uri, spec.generator, real.shape, real.num_classes)
        _warn_of_overlap(spec, splits)
    found = _resume_states(spec, uri, arms_of(spec), real) if resume else Prepared(None, {})
    return Prepared(found.resume, LoopPlan(found.state, pretrained))


def _warn_of_overlap(spec: LoopStudy, splits: dict[int, Splits]) -> None:
    """Say so when a pretrained model trained on images a seed evaluates on: its detectability and downstream
    accuracy would then be measured partly on the generator's own training data."""
    if not isinstance(spec.loop.pretrained, Path):
        return
    record, overlap = pretrained_overlap(spec.loop.pretrained, splits)
    for seed, (n, total) in overlap.items():
        if n:
            print(f"WARNING: seed {seed}: {n} of its {total} held-out and test images were in loop.pretrained's "
                  f"training data (study {record.get('study')!r}, seed {record.get('seed')}); use the split it was "
                  f"pretrained on (data.split_seed: {record.get('split_seed')})", file=sys.stderr, flush=True)


class _Driver:
    """The driver's side of a loop study: launches arm streams, logs their events, restarts lost workers."""

    def __init__(self, study: Study) -> None:
        import ray

        spec, tracker = study.spec, study.tracker
        self.study, self.spec, self.tracker = study, spec, tracker
        self.arms, self.states = arms_of(spec), study.prepared.states
        found = tracker.resumed
        self.done: dict[str, int] = dict(found.done) if found else {}
        # Arms whose generator collapsed (earlier, before a resume, or in this run): ended, never relaunched.
        self.collapsed: dict[str, int] = dict(found.collapsed) if found else {}
        self.kept = {name: list(state.history) for name, state in self.states.items() if state is not None}
        # The latest weights of each arm whose generations warm-start: a continuation starts from them.
        self.weights = {name: state.state for name, state in self.states.items() if state is not None and state.state is not None}
        self.retries: dict[str, int] = {}
        self.streams: dict[Any, list[Arm]] = {}  # a running arm task -> the arms its events stand for (several: a shared prefix)
        self.pending: list = []
        self.placement: dict = {}  # a running arm task -> the placement group it and its sampling workers hold
        # Each seed's real split and what is measured against it (the feature space trained on it), put once.
        pretrained = study.prepared.pretrained
        storage = storage_of(spec)  # samples too large to hold
        self.refs = {seed: (ray.put(split), ray.put(replace(study_context(spec, split, seed, pretrained), storage=storage)))
                     for seed, split in study.splits.items()}
        if found:  # generations before the resume
            study.results.extend(loop_rows(study.uri, tracker.parent_id))
        self.bars = _Bars(self.arms, spec.loop.generations, study.show_progress, self.done)

    def launch(self, group: list[Arm], state: ResumeState | None = None) -> None:
        """Start a stream for one arm, or the shared first generations of a group (on the CPUs the group would hold)."""
        import ray

        res = self.spec.resources
        width = min(res.cpus_per_arm * len(group), widest_node_cpus()) if len(group) > 1 else res.cpus_per_arm
        options, group_pg = arm_placement(res, width)  # the arm and its sampling and training workers, together
        task = ray.remote(arm_task).options(num_cpus=width, num_gpus=res.gpus_per_arm, max_retries=0, **options)
        # Ray's own task retries would rerun a dead arm from generation 0 and log its
        # generations twice; the driver restarts it instead, from its last finished generation.
        spec = prefix_spec(self.spec, width) if len(group) > 1 else self.spec
        splits_ref, context_ref = self.refs[group[0].seed]
        stream = task.remote(spec, splits_ref, group[0], context_ref, None if len(group) > 1 else state)
        self.streams[stream] = group
        if group_pg is not None:
            self.placement[stream] = group_pg
        self.pending.append(stream)

    def start(self) -> None:
        """Open every arm's run and launch what is left to do."""
        generations = self.spec.loop.generations
        for arm in self.arms:
            self.tracker.start_arm(arm.name, arm.params())
            if self.done.get(arm.name, -1) >= generations or arm.name in self.collapsed:
                self.tracker.end_arm(arm.name, "FINISHED")
        for group in share_groups(self.spec, [a for a in self.arms if a.name not in self.collapsed], self.states):
            if len(group) == 1 and self.done.get(group[0].name, -1) >= generations:
                continue
            if len(group) > 1:
                names = ", ".join(a.name for a in group)
                for arm in group:
                    self.tracker.set_tag("synthdata.shared_generations", f"0-{SHARED_GENERATIONS} computed once for {names}", arm.name)
            self.launch(group, self.states.get(group[0].name))

    def ended(self, group: list[Arm]) -> None:
        """A stream ran out: its arms are finished, or a shared prefix hands each arm on to its own stream."""
        for arm in group:
            if len(group) > 1 and 0 <= self.done.get(arm.name, -1) < self.spec.loop.generations and arm.name not in self.collapsed:
                self.launch([arm], ResumeState(self.done[arm.name] + 1, self.kept.get(arm.name, []), self.weights.get(arm.name)))
            else:
                self.tracker.end_arm(arm.name, "FINISHED")

    def fail(self, group: list[Arm], reason: str) -> None:
        for arm in group:
            self.study.failed[arm.name] = reason
            self.tracker.end_arm(arm.name, "FAILED", reason)

    def lost(self, group: list[Arm], err: Exception) -> None:
        """The worker or its node died: restart each arm from its last finished generation, a few times."""
        limit = self.spec.resources.max_arm_retries
        for arm in group:
            if arm.name in self.collapsed:  # it had ended before its worker went: nothing to redo
                self.tracker.end_arm(arm.name, "FINISHED")
                continue
            self.retries[arm.name] = self.retries.get(arm.name, 0) + 1
            if self.retries[arm.name] > limit:
                self.fail([arm], f"{short_reason(err)} (gave up after {limit} retries)")
                continue
            last = self.done.get(arm.name, -1)
            self.tracker.note_retry(arm.name, self.retries[arm.name], f"{type(err).__name__}: {short_reason(err)}")
            print(f"{arm.name}: worker lost ({type(err).__name__}); retry {self.retries[arm.name]} from generation {last + 1}",
                  file=sys.stderr, flush=True)
            self.launch([arm], ResumeState(last + 1, self.kept.get(arm.name, []), self.weights.get(arm.name)) if last >= 0 else None)

    def log(self, group: list[Arm], events: list) -> None:
        """Progress to the bars; each finished generation (or collapse) into every arm's run it stands for."""
        for event in events:
            if isinstance(event, Progress):
                for arm in group:
                    self.bars.progress(replace(event, arm=arm.name))
                continue
            if isinstance(event, Collapse):
                for arm in group:
                    self.collapse(arm, event)
                continue
            grid = sample_grid(event.grid[0]) if self.spec.tracking.sample_grid and event.grid is not None else None
            for arm in group:  # a shared generation is logged in each arm's run, as if it had run there
                self.tracker.log_generation(arm.name, event.generation, event.metrics, grid, event.samples,
                                            event.checkpoint, keep_checkpoint=self.spec.tracking.checkpoints,
                                            checkpoint_every=self.spec.tracking.checkpoint_every,
                                            all_samples=arm.loop_type == "accumulate")  # --resume reads all of them
                self.study.results.append({**arm.row(event.generation), **event.metrics})
                self.done[arm.name] = event.generation
                if event.state is not None:
                    self.weights[arm.name] = event.state
                if event.samples is not None:  # what a restart of this arm would need
                    history = self.kept.get(arm.name, []) if arm.loop_type == "accumulate" else []
                    self.kept[arm.name] = history + [event.samples]
                self.bars.done(replace(event, arm=arm.name))

    def collapse(self, arm: Arm, event: Collapse) -> None:
        """The arm's generator collapsed: a result, not a failure. The generation goes into its run (metric
        `collapsed_at_generation` at that step, tag `synthdata.collapsed` with the reason and the last finite
        metrics) and the table; the stream ends next and the arm with it, FINISHED."""
        t = event.generation
        self.collapsed[arm.name] = t
        last = next((r for r in reversed(self.study.results) if r["arm"] == arm.name and r["generation"] == t - 1), {})
        shown = " ".join(f"{k}={last[k]:.3g}" for k in (*self.bars.shown, "w2_to_truth") if k in last)
        note = (f"collapsed at generation {t}: {event.reason}; its last finite metrics are generation {t - 1}'s"
                + (f" ({shown})" if shown else ""))
        self.tracker.log_metrics(arm.name, {COLLAPSED: float(t)}, step=t)
        self.tracker.set_tag("synthdata.collapsed", note, arm.name)
        self.study.results.append({**arm.row(t), COLLAPSED: float(t)})
        self.bars.collapsed(arm.name, t, f"{arm.name}: {note}; the arm ends FINISHED")

    def release(self, stream) -> None:
        """A stream that ended: no longer waited on, and its placement group (if any) handed back."""
        self.pending.remove(stream)
        release(self.placement.pop(stream, None))

    def run(self) -> None:
        import ray

        try:
            while self.pending:
                ready, _ = ray.wait(self.pending, num_returns=1, timeout=self.tracker.flush_every_s)
                check_stopped()
                self.tracker.flush_due()  # what has waited long enough in the buffer goes out, busy or not
                for stream in ready:
                    group = self.streams[stream]
                    try:
                        events = ray.get(next(stream))
                    except StopIteration:
                        self.release(stream)
                        self.ended(group)
                        continue
                    except ray.exceptions.RayTaskError as err:  # the arm's own code raised: not worth retrying
                        self.release(stream)
                        self.fail(group, short_reason(err))
                        continue
                    except ray.exceptions.RayError as err:  # the worker or its node died
                        self.release(stream)
                        self.lost(group, err)
                        continue
                    self.log(group, events)
        finally:
            self.bars.close()


def schedule(study: Study) -> None:
    """Run every arm of the loop study on Ray, logging each generation as it finishes."""
    driver = _Driver(study)
    driver.start()
    driver.run()


def table(study: Study) -> pd.DataFrame:
    return results_table(study.results)



def figures(study: Study, table: pd.DataFrame) -> list[Path]:
    return metric_figures(table, study.out_dir / "figures", title=study.spec.name)
