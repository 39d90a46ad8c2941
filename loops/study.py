"""The life of every study, written once: data, Ray, the study run, interrupts, the table, figures, the end status.

A runner (one module per study kind, registered in `loops.RUNNERS`) holds only its kind's
scheduling: `prepare` (driver-side checks before Ray or MLflow), optionally `launch` (work
on Ray that can still refuse bad input, before any run opens), `schedule` (its arms on
Ray, logged through the study's tracker), `table`, `format_table` and `figures`.

    study file -> spec -> real data (a split per seed) -> runner.prepare -> Ray + study run -> runner.schedule
    -> runner.table -> results.txt/csv and figures (locally and on the study run) -> end status
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from loops.stopping import STOPS, StudyStopped, check_stopped, clear_stops, on_stop_signals, raise_stopped, signal_stop
from synthdata.data import Splits, study_splits
from synthdata.errors import UserError
from synthdata.provenance import provenance_tags
from synthdata.runs import Resumable
from synthdata.spec import StudySpec, flat_params, spec_hash, spec_yaml
from synthdata.spool import send_spooled, spool_dir
from synthdata.tracking import StudyTracker, check_tracking_server, resolve_tracking_uri


@dataclass
class StudyResult:
    """What a finished (or failed) study hands back: its table, study run, failures, time and figures."""

    table: pd.DataFrame
    parent_run_id: str
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    figures: list[Path] = field(default_factory=list)


@dataclass
class Study:
    """One running study, as its runner sees it: spec, real data, tracker, and where results go."""

    spec: StudySpec
    splits: dict[int, Splits]  # the real split of each seed (`data.split_seed`)
    uri: str
    tracker: StudyTracker
    prepared: Any  # what the runner's `prepare` returned
    show_progress: bool = True
    failed: dict[str, str] = field(default_factory=dict)  # arm name -> reason
    results: list = field(default_factory=list)  # what the runner collects for its table

    @property
    def out_dir(self) -> Path:
        return Path(self.spec.tracking.report_dir) / self.spec.name

    def say(self, line: str) -> None:
        """A line for the person running the study (when progress is shown)."""
        if self.show_progress:
            print(line, file=sys.stderr, flush=True)


@dataclass
class Prepared:
    """A runner's driver-side preparation: the run to resume (loops only), and whatever its scheduling needs."""

    resume: Resumable | None = None
    state: Any = None


class _StoreOpener:
    """Opens (creates, migrates) the tracking store in a thread: it takes a second or two, as does Ray's start.

    A store that cannot be opened is not reported here: the tracker opens it again, and says
    why. A study refused before its first run leaves nothing, so a SQLite file this opener
    created is removed again by `discard`.
    """

    def __init__(self, uri: str) -> None:
        from synthdata.tracking import mlflow_client

        self.db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        self.new = self.db is not None and not self.db.exists()
        self.thread = threading.Thread(target=self._open, args=(mlflow_client, uri), name="synthdata-open-store", daemon=True)
        self.thread.start()

    @staticmethod
    def _open(mlflow_client: Any, uri: str) -> None:
        try:
            mlflow_client(uri)
        except Exception:
            pass

    def join(self) -> None:
        self.thread.join()

    def discard(self) -> None:
        self.thread.join()
        if self.new:
            from synthdata.tracking import forget_store

            forget_store(f"sqlite:///{self.db}")
            for path in (self.db, Path(f"{self.db}.lock"), Path(f"{self.db}-journal")):
                path.unlink(missing_ok=True)


def run_study(spec: StudySpec, runner: ModuleType | None = None, *, address: str | None = None,
              tracking_uri: str | None = None, show_progress: bool = True, resume: bool = False,
              source: str = "<python>") -> StudyResult:
    """Run a validated study with its kind's runner (`loops.RUNNERS`) and log it to MLflow; return its table.

    `source` (the study file's path, or the command that built the spec) is recorded on every run.
    """
    from loops import runner_for
    from loops.ray_tools import check_resources, init_ray, refuse_before_start, watch_infeasible

    runner = runner or runner_for(spec.kind)
    start = time.perf_counter()
    if resume and not getattr(runner, "RESUMABLE", False):
        raise UserError(f"{spec.name}: --resume applies to loop studies; a {spec.kind} study is rerun")
    splits = study_splits(spec.data, spec.seeds)  # per seed; data errors surface here, before Ray or MLflow
    uri = resolve_tracking_uri(tracking_uri or spec.tracking.uri)
    check_tracking_server(uri)  # a wrong or unreachable server: one line now, not MLflow's minutes of retries later
    spooled = spool_dir(spec.tracking.report_dir, spec.name)
    send_spooled(spooled, uri)  # what an earlier run could not write (its server was away): in, before --resume reads
    if spec.tracking.storage is not None:  # where large sample sets go: a storage that cannot be written, refused now
        from synthdata.shards import check_writable

        check_writable(spec.tracking.storage)
    prepared: Prepared = runner.prepare(spec, splits, uri, resume)  # bad input stops the study here too
    refuse_before_start(spec.resources, address or spec.resources.address)  # an arm wider than this machine
    store = _StoreOpener(uri)  # MLflow's store (a new SQLite file: its tables) is made while Ray starts
    import ray

    connected = not ray.is_initialized()  # this study connects (starts a Ray, or joins a cluster): it disconnects on a stop
    started_ray = False
    try:
        started_ray = init_ray(address or spec.resources.address)
        check_resources(spec.resources, local=started_ray)  # an arm no node can hold: refused here, before any run opens
        if hasattr(runner, "launch"):  # work on Ray that can still refuse bad input, before any run opens
            with on_stop_signals(raise_stopped):
                prepared = runner.launch(spec, splits, prepared, show_progress)
    except BaseException:
        store.discard()  # refused, stopped or unreachable before its first run: the study leaves nothing behind
        if started_ray:
            ray.shutdown()
        raise
    store.join()
    tracker: StudyTracker | None = None
    try:
        clear_stops()
        with on_stop_signals(raise_stopped), watch_infeasible(spec.resources, enabled=not started_ray) as watch:
            tracker = StudyTracker(uri, spec.experiment_name, spec.name, flat_params(spec), description=spec.description,
                                   tags={"synthdata.kind": spec.kind, "synthdata.spec_hash": spec_hash(spec)},
                                   resume=prepared.resume, run_tags=provenance_tags(source), spool_dir=spooled,
                                   outage_limit_s=spec.tracking.outage_limit_s)
            if prepared.resume is None:  # the validated study file, runnable again as it is
                tracker.log_table("study.yaml", spec_yaml(spec))
            study = Study(spec, splits, uri, tracker, prepared.state, show_progress)
            table, figures = _schedule(runner, study, watch)
            # A server away at the end: wait for it, up to tracking.outage_limit_s; a stop (even one that came while the
            # last writes were made) ends the wait, the writes kept in the spool.
            tracker.settle(check=check_stopped)
    except KeyboardInterrupt as stop:
        if watch.message:  # the cluster can never hold an arm: the study failed, for a reason the user can fix
            raise UserError(f"resources: no node type of the cluster can hold an arm ({watch.message.split('. ')[0]})") from None
        if connected:  # a stopped study leaves no Ray of its own behind, and its arms on a cluster it joined end with it:
            ray.shutdown()  # disconnected now, Ray's "worker died" lines for them never come after the study's last line
        stop = STOPS[-1] if STOPS else stop  # Ray turns a signal's exception into a plain KeyboardInterrupt
        how, code = (str(stop), stop.exit_code) if hasattr(stop, "exit_code") else ("interrupted", 130)  # TrackingLost too
        if not getattr(runner, "RESUMABLE", False):
            again = "run it again to redo it"
        elif source.endswith((".yaml", ".yml")):
            again = f"continue it with `synthdata run {source} --resume`"
        else:
            again = "continue it with run_study(..., resume=True)"
        waiting = tracker.spool_note() if tracker is not None else ""
        marked = (f"the tracking server is away: {waiting}, its runs' ends among them, and are sent when the study runs "
                  "again" if waiting else f"its runs are marked KILLED in MLflow ({uri})")
        raise StudyStopped(f"study '{spec.name}' stopped ({how}); {marked}; {again}", code) from None
    return StudyResult(table, tracker.parent_id, study.failed, time.perf_counter() - start, figures)


def _note_stop(signum: int, frame: Any) -> None:
    """SIGTERM or Ctrl-C while a study makes its last writes: they go on (its runs end), and the stop is only
    recorded. A study whose server is away then stops instead of waiting for it (`StudyTracker.settle`)."""
    STOPS.append(signal_stop(signum))


def _schedule(runner: ModuleType, study: Study, watch: Any) -> tuple[pd.DataFrame, list[Path]]:
    """Run the runner's arms; whatever happens, write the table (and, unless stopped, the figures) and end every run."""
    tracker = study.tracker
    status, table, figures = "FAILED", pd.DataFrame(), []
    try:
        runner.schedule(study)
        status = "FAILED" if study.failed else "FINISHED"
    except KeyboardInterrupt:
        status = "FAILED" if watch.message else "KILLED"
        if watch.message:
            tracker.set_tag("synthdata.failure", watch.message)
        raise
    finally:
        with on_stop_signals(_note_stop):
            try:
                table = runner.table(study)
                if not table.empty:
                    tracker.save_results(study.out_dir, table, runner.format_table(table))
                    if status != "KILLED":
                        figures = runner.figures(study, table)
                        tracker.log_figures(figures)
            finally:
                tracker.end(status)
    return table, figures
