"""Run a loop study: arms as Ray streaming tasks, results logged to MLflow by the driver.

study file -> spec (validated) -> real data (loaded and checked here, once) -> Ray arms
-> per-generation events -> MLflow + progress bars -> a table on the terminal.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import pandas as pd

from loops.autophagy import Arm, GenerationResult, Progress, device_for, run_arm
from synthdata.data import Splits, make_splits
from synthdata.generators import check_generator
from synthdata.spec import StudySpec, flat_params
from synthdata.tracking import StudyTracker, resolve_tracking_uri, sample_grid


def arms_of(spec: StudySpec) -> list[Arm]:
    """One arm per loop type and seed, in the order the study file lists them."""
    return [Arm(loop_type, seed) for loop_type in spec.loop.types for seed in spec.loop.seeds]


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a running cluster (address or $RAY_ADDRESS), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=True, logging_level="ERROR")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def _arm_task(spec: StudySpec, splits: Splits, arm: Arm):
    """The body of one arm's Ray task: pin torch threads to the CPUs Ray gave us, then stream events."""
    import torch

    torch.set_num_threads(max(1, int(spec.resources.cpus_per_arm)))
    yield from run_arm(spec, splits, arm, device=device_for(spec.resources.gpus_per_arm))


@dataclass
class StudyResult:
    table: pd.DataFrame
    parent_run_id: str
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class _Bars:
    """Progress per arm: a bar per arm over its generations on a terminal, one line per generation otherwise."""

    def __init__(self, arms: list[Arm], generations: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.width = max(len(a.name) for a in arms)
        self.total = generations
        self.bars = {
            a.name: tqdm(total=generations + 1, desc=a.name.ljust(self.width), position=i, unit="gen",
                         leave=True, dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
            for i, a in enumerate(arms)
        } if self.live else {}

    def progress(self, ev: Progress) -> None:
        if self.live:
            bar = self.bars[ev.arm]
            bar.set_postfix_str(f"gen {ev.generation}: {ev.stage} {ev.fraction:4.0%}", refresh=False)
            bar.refresh()

    def done(self, ev: GenerationResult) -> None:
        shown = {k: v for k, v in ev.metrics.items() if k in ("detectability", "downstream_accuracy")}
        summary = " ".join(f"{k}={v:.3f}" for k, v in shown.items())
        if self.live:
            bar = self.bars[ev.arm]
            bar.set_postfix_str(f"gen {ev.generation}: {summary}", refresh=False)
            bar.update(1)
        elif self.enabled:
            secs = sum(v for k, v in ev.metrics.items() if k.startswith("time_"))
            print(f"{ev.arm.ljust(self.width)}  generation {ev.generation}/{self.total}  {summary}  ({secs:.0f}s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run_loop_study(
    spec: StudySpec,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    show_progress: bool = True,
) -> StudyResult:
    """Run every arm of a loop study on Ray and log it to MLflow. Returns the per-generation table."""
    import ray

    start = time.perf_counter()
    splits = make_splits(spec.data, seed=0)  # data errors surface here, before Ray or MLflow
    check_generator(spec.generator, splits.train.shape)
    arms = arms_of(spec)

    init_ray(address or spec.resources.address)
    uri = resolve_tracking_uri(tracking_uri or spec.tracking.uri)
    tracker = StudyTracker(uri, spec.experiment_name, spec.name, flat_params(spec), tags={"synthdata.kind": spec.kind})
    remote = ray.remote(_arm_task).options(
        num_cpus=spec.resources.cpus_per_arm, num_gpus=spec.resources.gpus_per_arm, max_retries=0
    )
    splits_ref = ray.put(splits)
    streams = {}
    for arm in arms:
        tracker.start_arm(arm.name, {"loop_type": arm.loop_type, "seed": str(arm.seed), "arm": arm.name})
        streams[remote.remote(spec, splits_ref, arm)] = arm

    bars = _Bars(arms, spec.loop.generations, show_progress)
    rows: list[dict] = []
    failed: dict[str, str] = {}
    status = "FAILED"
    try:
        pending = list(streams)
        while pending:
            ready, _ = ray.wait(pending, num_returns=1, timeout=5.0)
            for stream in ready:
                arm = streams[stream]
                try:
                    event = ray.get(next(stream))
                except StopIteration:
                    pending.remove(stream)
                    tracker.end_arm(arm.name, "FINISHED")
                    continue
                except ray.exceptions.RayError as err:
                    pending.remove(stream)
                    reason = _short_reason(err)
                    failed[arm.name] = reason
                    tracker.end_arm(arm.name, "FAILED", reason)
                    continue
                if isinstance(event, Progress):
                    bars.progress(event)
                else:
                    grid = sample_grid(event.samples) if spec.tracking.sample_grid and event.samples is not None else None
                    tracker.log_generation(event.arm, event.generation, event.metrics, grid)
                    rows.append({"arm": event.arm, "generation": event.generation, **event.metrics})
                    bars.done(event)
        status = "FAILED" if failed else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bars.close()
        table = results_table(rows)
        if not table.empty:
            tracker.log_table("results.txt", format_table(table))
            tracker.log_table("results.csv", table.to_csv(index=False))
        tracker.end(status)
    return StudyResult(table, tracker.parent_id, failed, time.perf_counter() - start)


def _short_reason(err: Exception) -> str:
    """The last line of a worker's error: the exception type and message, not the Ray traceback."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def results_table(rows: list[dict]) -> pd.DataFrame:
    """Rows of (arm, generation) sorted for reading."""
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["arm", "generation"]).reset_index(drop=True)


def format_table(table: pd.DataFrame) -> str:
    """arm x generation x metric, with 95% intervals beside the accuracies."""
    out = pd.DataFrame({"arm": table["arm"], "gen": table["generation"]})

    def with_ci(col: str) -> pd.Series:
        return table.apply(
            lambda r: f"{r[col]:.3f} [{r[col + '_ci_low']:.3f}, {r[col + '_ci_high']:.3f}]" if pd.notna(r.get(col)) else "",
            axis=1,
        )

    if "detectability" in table:
        out["detectability (95% CI)"] = with_ci("detectability")
        out["JSD bound"] = table["detectability_jsd_lower_bound"].map("{:.3f}".format)
    if "downstream_accuracy" in table:
        out["downstream acc (95% CI)"] = with_ci("downstream_accuracy")
    if "time_fit_s" in table:
        out["fit s"] = table["time_fit_s"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    return out.to_string(index=False)
