"""Writing a study to MLflow: one experiment per study, a study run, and a child run per arm.

The study driver is the only process that writes to MLflow: arms stream their results
back through Ray and the driver logs them. One writer means no "database is locked"
on a local SQLite store and exactly one value per metric and generation. Runners write
through `StudyTracker`'s methods only; `synthdata.runs` reads a study back. Every write
goes through `synthdata.spool.SpoolingClient`: while a tracking server is away it waits
on disk and is sent once when the server is back.
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

if TYPE_CHECKING:
    from synthdata.data import ImageSet

T = TypeVar("T")
DEFAULT_DB = "mlflow.db"
DONE_METRIC = "generation_done"  # logged with a generation's metrics: the generation's commit marker
MAX_BATCH = 1000  # MLflow's log_batch limit on metrics


def checkpoint_dir(generation: int) -> str:
    return f"checkpoints/generation_{generation:03d}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else $MLFLOW_TRACKING_URI, else a SQLite store `mlflow.db` in the working directory.

    A relative SQLite path is made absolute so that Ray workers and the UI agree on it.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


PROBE_TIMEOUT_S = 4.0  # to connect: a server that listens accepts in milliseconds
PROBE_ANSWER_S = 30.0  # for its answer: a freshly started `mlflow server` opens its store on the first request (seconds)
_PROBE = "/api/2.0/mlflow/experiments/search"


def check_tracking_server(uri: str, timeout: float = PROBE_TIMEOUT_S, answer_within: float = PROBE_ANSWER_S) -> None:
    """One short request to an http(s) tracking URI; UserError (one line, exit 2) unless an MLflow server answers it.

    MLflow's own client retries a refused connection for about four minutes and then raises
    a long traceback. This asks once (`GET /api/2.0/mlflow/experiments/search`, one result:
    `timeout` s to connect, `answer_within` s for the answer), with the credentials the client
    would send ($MLFLOW_TRACKING_USERNAME and _PASSWORD, or _TOKEN), and says what answered:
    nothing, a server that is not MLflow, or one that refuses us. Local stores (sqlite:,
    file:) are not asked: opening them says what is wrong.
    """
    if not uri.lower().startswith(("http://", "https://")):
        return
    import requests

    from synthdata.errors import UserError

    def refused(what: str) -> UserError:
        return UserError(f"tracking.uri: {uri}: {what}")

    kwargs, credentials = _request_credentials(uri)
    try:
        answer = requests.get(uri.rstrip("/") + _PROBE, params={"max_results": 1}, timeout=(timeout, answer_within),
                              **kwargs)
    except requests.exceptions.SSLError as err:
        raise refused(f"TLS failed ({_reason(err)})") from None
    except requests.exceptions.ConnectTimeout:
        raise refused(f"could not connect within {timeout:g}s (nothing reachable there: check the host and port)") from None
    except requests.exceptions.ReadTimeout:
        raise refused(f"connected, but no answer within {answer_within:g}s (not an MLflow server, or one that hangs)") from None
    except requests.exceptions.ConnectionError as err:
        raise refused(_reason(err)) from None
    except requests.exceptions.RequestException as err:  # a URL requests cannot use
        raise refused(f"not a usable URL ({_reason(err)})") from None
    status = f"HTTP {answer.status_code}{' ' + answer.reason if answer.reason else ''}"
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status_code in (401, 403):
        hint = ("check them" if credentials else
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN")
        raise refused(f"the server refused us ({status}{' with the credentials given' if credentials else ''}: {hint})")
    if answer.ok and isinstance(body, dict):
        return
    if isinstance(body, dict) and "error_code" in body:  # MLflow, answering with an error of its own
        raise refused(f"the MLflow server answered {status}: {str(body.get('message', body['error_code']))[:200]}")
    kind = answer.headers.get("content-type", "no content type").split(";")[0]
    raise refused(f"not an MLflow tracking server (GET {_PROBE} answered {status}, {kind})")


def _request_credentials(uri: str) -> tuple[dict[str, Any], bool]:
    """requests' keyword arguments for what MLflow's client would send `uri` (auth, TLS), and whether any auth is sent."""
    try:
        from mlflow.utils.credentials import get_default_host_creds

        creds = get_default_host_creds(uri)
    except Exception:  # an MLflow without this helper: ask without credentials
        return {}, False
    kwargs: dict[str, Any] = {"verify": creds.verify}
    if creds.client_cert_path:
        kwargs["cert"] = creds.client_cert_path
    if creds.username and creds.password:
        kwargs["auth"] = (creds.username, creds.password)
    elif creds.token:
        kwargs["headers"] = {"Authorization": f"Bearer {creds.token}"}
    try:
        if creds.aws_sigv4:
            from requests_auth_aws_sigv4 import AWSSigV4

            kwargs["auth"] = AWSSigV4("execute-api")
        elif creds.auth:
            from mlflow.tracking.request_auth.registry import fetch_auth

            kwargs["auth"] = fetch_auth(creds.auth)
    except Exception:  # the plug-in is not there: MLflow's client will say so
        pass
    return kwargs, "auth" in kwargs or "headers" in kwargs


def _reason(err: Exception) -> str:
    """The innermost cause of a requests error, in a few words ("connection refused", "host not found")."""
    text = str(err)
    if "refused" in text.lower():
        return "connection refused (nothing listens there: start the server, or fix the host or port)"
    if any(s in text for s in ("Name or service not known", "nodename nor servname", "NameResolutionError",
                               "Temporary failure in name resolution", "getaddrinfo failed")):
        return "host not found (its name does not resolve)"
    inner = getattr(err.args[0] if err.args else None, "reason", None) or err  # urllib3's MaxRetryError holds the cause
    return f"{type(inner).__name__}: {str(inner)[:160]}"


_READY: set[str] = set()  # tracking URIs whose store this process has opened


def mlflow_client(uri: str):
    """An MlflowClient; a SQLite store is created (or its schema migrated) by one process at a time.

    Several processes opening a new SQLite store at once (trials, workers, a second
    driver) would otherwise race on creating its tables.
    """
    from mlflow.tracking import MlflowClient

    if uri in _READY or not uri.startswith("sqlite:///"):
        return _RetryLocked(MlflowClient(tracking_uri=uri))
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock", timeout=600):
        if not db.exists() or db.stat().st_size == 0:
            copy_empty_store(db)
        client = _RetryLocked(MlflowClient(tracking_uri=uri))
        client.search_experiments(max_results=1)  # opens the store: tables, migrations
    _READY.add(uri)
    return client


def copy_empty_store(db: Path) -> bool:
    """Make the new SQLite store `db` a copy of an empty one, kept per MLflow version under the cache (made once); True
    when it did. A new store otherwise runs every one of MLflow's schema migrations (7 s here with MLflow 3.17, more
    than the rest of a toy study). The kept one has no Default experiment, so that MLflow makes it for `db` (its
    artifact location) on opening, as for any new store. With the cache off or unwritable, MLflow makes `db` itself."""
    import shutil

    import mlflow
    from filelock import FileLock

    from synthdata.cache import cache_dir

    root = cache_dir()
    if root is None:
        return False
    kept = root / "mlflow-stores" / f"empty-{mlflow.__version__}.db"
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{kept}.lock", timeout=600):
            if not kept.exists():
                _make_empty_store(kept)
        shutil.copyfile(kept, db)
    except Exception:  # unwritable cache, a full disk, a store MLflow could not make there: MLflow makes `db` instead
        db.unlink(missing_ok=True)  # half a copy is no store
        return False
    return True


def _make_empty_store(path: Path) -> None:
    """An MLflow store with every table made and migrated and no experiment in it, written whole or not at all."""
    import sqlite3

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        made = Path(tmp) / "store.db"
        store = SqlAlchemyStore(f"sqlite:///{made}", str(Path(tmp) / "artifacts"))
        store.engine.dispose()
        with sqlite3.connect(made) as con:  # MLflow makes the Default experiment of each store it opens without one
            con.execute("DELETE FROM experiment_tags")
            con.execute("DELETE FROM experiments")
        con.close()
        os.replace(made, path)


def forget_store(uri: str) -> None:
    """Forget that this process opened `uri` (its file was removed: the next client creates it again)."""
    _READY.discard(uri)


def _retry_locked(fn: Callable[..., T], *args: Any, attempts: int = 10, **kwargs: Any) -> T:
    """Call `fn`, retrying with backoff while SQLite says "database is locked".

    SQLite allows one writer at a time; under many concurrent writers its busy timeout
    can run out. A failed write is rolled back, so retrying it never logs twice.
    """
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


class _RetryLocked:
    """An MlflowClient whose every call is retried while SQLite says "database is locked"."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: _retry_locked(attr, *args, **kwargs)


def get_or_create_experiment(uri: str, name: str) -> str:
    """The experiment's id, creating it once (artifacts beside a SQLite store, not in the cwd)."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        exp = client.get_experiment_by_name(name)  # another process created it first
        if exp is None:
            raise
        return exp.experiment_id


class StudyTracker:
    """Writes one study's runs. Create it in the driver, after the spec and data are validated."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        study: str,
        params: dict[str, str],
        tags: dict[str, str] | None = None,
        resume: Any = None,
        description: str = "",
        run_tags: dict[str, str] | None = None,
        spool_dir: Path | None = None,
        outage_limit_s: float = 600.0,
    ) -> None:
        """Open the study run (or, with `resume` from `synthdata.runs.find_resumable`, reopen it and its arms' runs).

        `run_tags` (provenance: source, user, code version) go on the study run and on every arm's run. What cannot
        be written while the tracking server is away waits in `spool_dir` (default: runs/<study>/spool) for up to
        `outage_limit_s` seconds (see `synthdata.spool`).
        """
        from synthdata.spool import SpoolingClient, quick_client
        from synthdata.spool import spool_dir as default_spool

        self.uri = uri
        with quick_client():  # the server was there a moment ago (check_tracking_server); a failure now is one line
            try:
                self.client = SpoolingClient(mlflow_client(uri), uri, spool_dir or default_spool("runs", study),
                                             outage_limit_s)
                self.experiment_id = get_or_create_experiment(uri, experiment)
            except Exception as err:
                from synthdata.spool import EXIT_TEMPFAIL, is_unreachable

                if not is_unreachable(err):
                    raise
                from synthdata.errors import UserError

                error = UserError(f"tracking.uri: {uri}: went away as the study started (nothing was written): run it "
                                  "again once the server answers")
                error.exit_code = EXIT_TEMPFAIL
                raise error from None
        self.study = study
        self.params = params
        self.resumed = resume
        self.run_tags = dict(run_tags or {})
        self.arm_runs: dict[str, str] = {}
        self._open: set[str] = set()  # arms whose runs this study has not ended (end() ends them)
        self.flush_every_s = 2.0
        self._pending: dict[str, list] = {}
        self._pending_since: dict[str, float] = {}  # when each arm's oldest unwritten metric was buffered
        self._flushed: dict[str, float] = {}
        # Checkpoints (see log_generation): each arm's latest one not uploaded yet, the generations whose uploaded
        # checkpoint is only there as the latest (removed once a later one is in), and how each arm keeps them.
        self._held: dict[str, tuple[int, ImageSet | None, dict[str, bytes] | None]] = {}
        self._interim: dict[str, list[int]] = {}
        self._newest: dict[str, int] = {}  # arm -> the newest generation whose checkpoint was uploaded
        self._policy: dict[str, tuple[int, bool]] = {}  # arm -> (checkpoint_every, all_samples)
        self._resumed: dict[str, int] = {}  # arm -> its last finished generation before this run resumed it
        if resume is not None:  # continue the same runs, so each metric keeps one value per generation
            self._parent_id = resume.parent_id
            self.client.update_run(self._parent_id, status="RUNNING")
            for arm, run_id in resume.arm_runs.items():
                self.arm_runs[arm] = run_id
                self._open.add(arm)
                self.client.update_run(run_id, status="RUNNING")
                self._resumed[arm] = resume.done.get(arm, -1)
            return
        base_tags = {**self.run_tags, "synthdata.study": study, "synthdata.role": "study", **(tags or {})}
        if description:
            base_tags["mlflow.note.content"] = description  # shown as the run's description in the MLflow UI
        self._parent_id = self.client.create_run(self.experiment_id, run_name=study, tags=base_tags)
        self._log_params(self._parent_id, params)

    @property
    def parent_id(self) -> str:
        """The study run's id (MLflow's, once a run created while the server was away has been sent)."""
        return self.client.resolve(self._parent_id)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def start_arm(self, arm: str, params: dict[str, str]) -> str:
        """A child run named after the arm (`replace/seed0`), with the study's params plus the arm's."""
        if arm in self.arm_runs:  # resumed
            return self.arm_runs[arm]
        run_id = self.client.create_run(
            self.experiment_id,
            run_name=arm,
            tags={**self.run_tags, "mlflow.parentRunId": self._parent_id, "synthdata.study": self.study, "synthdata.role": "arm",
                  "synthdata.arm": arm},
        )
        self._log_params(run_id, {**self.params, **params})
        self.arm_runs[arm] = run_id
        self._open.add(arm)
        return run_id

    def log_generation(
        self,
        arm: str,
        generation: int,
        metrics: dict[str, float],
        grid: np.ndarray | None = None,
        samples: ImageSet | None = None,
        checkpoint: dict[str, bytes] | None = None,
        keep_checkpoint: bool = True,
        checkpoint_every: int = 1,
        all_samples: bool = False,
    ) -> None:
        """Artifacts first (sample grid, checkpoint), then all metrics at step=generation in one batch.

        The batch carries `generation_done` as well, so a generation counts as finished
        exactly when its metrics are in: a study killed half-way through a generation
        left no metric of it, and a resume redoes it without logging anything twice.

        Checkpoints (`samples`, the generator's `checkpoint` files) stay for every
        `checkpoint_every`-th generation and for the latest one, which is what `--resume`
        starts from: a generation's checkpoint is uploaded before its metrics are written
        (at once for a k-th, else with the buffered metrics, so a toy loop's fast generations
        upload one checkpoint per flush), and the previous latest is removed only after that
        write. `all_samples`: keep every generation's samples (an accumulate arm trains on them all).
        """
        from mlflow.entities import Metric

        self._policy[arm] = (max(1, checkpoint_every), all_samples)
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, generation) for k, v in metrics.items() if np.isfinite(v)]
        items.append(Metric(DONE_METRIC, float(generation), ts, generation))
        if len(self._pending.get(arm, [])) + len(items) > MAX_BATCH:
            self.flush(arm)  # one write per flush: a generation_done is never in MLflow without its checkpoint
        run_id = self.arm_runs[arm]
        if grid is not None:
            self.client.log_image(run_id, grid, artifact_file=f"samples/generation_{generation:03d}.png")  # the report's
            self.client.log_image(run_id, grid, key="samples", step=generation)  # the UI's step slider
        if keep_checkpoint and (samples is not None or checkpoint):
            if generation % max(1, checkpoint_every) == 0:  # kept for good
                self._held.pop(arm, None)  # an earlier latest, superseded before it was uploaded
                self._upload_checkpoint(arm, generation, samples, checkpoint)
            else:
                if all_samples and samples is not None:  # for good; the generator's files only while they are the latest
                    self._upload_checkpoint(arm, generation, samples, None, latest=False)
                    samples = None
                self._held[arm] = (generation, samples, checkpoint)
        self._pending.setdefault(arm, []).extend(items)
        self._pending_since.setdefault(arm, time.monotonic())
        last = self._flushed.get(arm)  # None: the arm's first write goes out at once (on any machine's clock)
        if last is None or time.monotonic() - last >= self.flush_every_s:
            self.flush(arm)

    def _upload_checkpoint(self, arm: str, generation: int, samples: ImageSet | None,
                           checkpoint: dict[str, bytes] | None, latest: bool = True) -> None:
        """Upload a generation's checkpoint (`latest`: the arm's newest; one that is not an every-k-th is noted, to be
        removed once superseded), or an accumulate arm's samples alone (kept for good)."""
        from synthdata.data import save_samples

        if samples is None and not checkpoint:
            return
        with tempfile.TemporaryDirectory() as tmp:
            if samples is not None:
                save_samples(samples, Path(tmp) / "samples.safetensors")  # or samples.shards.json: a set drawn as shards
            for name, data in (checkpoint or {}).items():
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_bytes(data)
            self.client.log_artifacts(self.arm_runs[arm], tmp, artifact_path=checkpoint_dir(generation))
        if latest:
            self._newest[arm] = max(generation, self._newest.get(arm, generation))
            if generation % self._policy[arm][0]:
                self._interim.setdefault(arm, []).append(generation)

    def _prune_checkpoints(self, arm: str) -> None:
        """Remove each checkpoint that is neither an every-k-th nor the newest, once the metrics of a newer one are in."""
        newest = self._newest.get(arm)
        if newest is None:
            return
        interim = self._interim.setdefault(arm, [])
        if arm in self._resumed:  # what the stopped run left: its latest, and any upload whose metrics never followed
            interim.extend(self._checkpoints_from(arm, self._resumed.pop(arm)))
        every, all_samples = self._policy[arm]
        for generation in sorted({g for g in interim if g < newest}):
            interim[:] = [g for g in interim if g != generation]
            if generation % every:  # (what a stopped run left may be a k-th)
                self._delete_checkpoint(arm, generation, keep_samples=all_samples)

    def _checkpoints_from(self, arm: str, generation: int) -> list[int]:
        """The generations from `generation` on that hold a checkpoint in the arm's run."""
        if generation < 1:
            return []
        try:
            entries = self.client.list_artifacts(self.arm_runs[arm], "checkpoints")
        except Exception:
            return [generation]
        found = [int(name.rsplit("_", 1)[1]) for name in (Path(e.path).name for e in entries)
                 if name.startswith("generation_") and name.rsplit("_", 1)[1].isdigit()]
        return [g for g in found if g >= generation]

    def _delete_checkpoint(self, arm: str, generation: int, keep_samples: bool) -> None:
        """Best effort: an artifact store that cannot delete keeps the checkpoint (more files, nothing lost)."""
        self.client.delete_checkpoint(self.arm_runs[arm], checkpoint_dir(generation), keep_samples)

    def log_metrics(self, arm: str, metrics: dict[str, float], step: int = 0) -> None:
        """Metrics of a run that has one set of them (a detect study's cell), in one batch."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if np.isfinite(v)]
        self.client.log_batch(self.arm_runs[arm], metrics=items)

    def flush(self, arm: str | None = None) -> None:
        """Write buffered metrics (all arms when `arm` is None), each arm's in as few batches as MLflow allows.

        Fast generations (toy loops) are buffered for up to `flush_every_s` so that
        thousands of generations cost a few writes; slow ones are written at once.
        """
        for name in [arm] if arm is not None else list(self._pending):
            held = self._held.pop(name, None)
            if held is not None:  # the latest generation's checkpoint goes in before its metrics
                self._upload_checkpoint(name, *held)
            items = self._pending.pop(name, [])
            self._pending_since.pop(name, None)
            for i in range(0, len(items), MAX_BATCH):
                self.client.log_batch(self.arm_runs[name], metrics=items[i : i + MAX_BATCH])
            self._flushed[name] = time.monotonic()
            self._prune_checkpoints(name)

    def flush_due(self) -> None:
        """Write the buffer of every arm whose oldest unwritten metric has waited `flush_every_s`.

        Called by the driver on each turn of its loop: a finished generation reaches MLflow
        within about that time even when nothing else of its arm follows soon. While the
        tracking server is away, this is also where it is asked whether it is back (and where
        the study stops, `synthdata.spool.TrackingLost`, once it has been away too long).
        """
        self.client.tick()
        now = time.monotonic()
        for name, since in list(self._pending_since.items()):
            if now - since >= self.flush_every_s:
                self.flush(name)

    def note_retry(self, arm: str, count: int, reason: str) -> None:
        """Record on the arm's run that its worker was lost and the arm restarted."""
        self.flush(arm)
        run_id = self.arm_runs[arm]
        self.client.set_tag(run_id, "synthdata.retries", str(count))
        self.client.set_tag(run_id, "synthdata.last_retry_reason", reason[:5000])

    def _run(self, arm: str | None) -> str:
        return self._parent_id if arm is None else self.arm_runs[arm]

    def set_tag(self, key: str, value: str, arm: str | None = None) -> None:
        """A tag on the study run, or on an arm's run (how it ran, e.g. which generations it shared)."""
        self.client.set_tag(self._run(arm), key, value[:5000])

    def log_image(self, image: np.ndarray, artifact_file: str, arm: str | None = None) -> None:
        """An image (a sample grid, HxWxC uint8) as an artifact of the study run or an arm's run."""
        self.client.log_image(self._run(arm), image, artifact_file=artifact_file)

    def log_file(self, path: Path, folder: str | None = None, arm: str | None = None) -> None:
        """A local file as an artifact (in `folder`) of the study run or an arm's run."""
        self.client.log_artifact(self._run(arm), str(path), artifact_path=folder)

    def log_dict(self, data: dict, artifact_file: str, arm: str | None = None) -> None:
        """A JSON artifact of the study run or an arm's run."""
        self.client.log_dict(self._run(arm), data, artifact_file)

    def log_samples(self, samples: ImageSet, artifact_file: str, arm: str | None = None) -> None:
        """A sample set (safetensors, `synthdata.data.save_samples`) as an artifact: reusable as `mix.samples` or a source."""
        from synthdata.data import save_samples

        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            written = save_samples(samples, Path(tmp) / name)  # a set drawn as shards: a reference to them
            self.log_file(written, folder or None, arm)

    def save_results(self, out_dir: Path, table, text: str) -> None:
        """The study's table as `results.txt` (what was printed) and `results.csv`, in `out_dir` and on the study run."""
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.txt").write_text(text + "\n")
        table.to_csv(out_dir / "results.csv", index=False)
        self.log_table("results.txt", text)
        self.log_table("results.csv", table.to_csv(index=False))

    def log_table(self, name: str, text: str) -> None:
        """A text artifact of the study run (a results table)."""
        self.client.log_text(self._parent_id, text, name)

    def log_figures(self, paths: list[Path]) -> None:
        """Figures (PNGs) into the study run's `figures/`."""
        for path in paths:
            self.log_file(path, "figures")

    def end_arm(self, arm: str, status: str = "FINISHED", reason: str | None = None) -> None:
        self.flush(arm)
        run_id = self.arm_runs[arm]
        if reason:
            self.client.set_tag(run_id, "synthdata.failure", reason[:5000])
        self.client.set_terminated(run_id, status)
        self._open.discard(arm)

    def end(self, status: str = "FINISHED") -> None:
        """End the study run and any arm run still open (a study never leaves a run RUNNING).

        A study that was stopped (KILLED) makes its last writes without retries, and sends what waits in the
        spool if the server answers now; otherwise they stay there for the next run. (A study that ran to its end
        waits for the server instead: `settle`.)
        """
        if status == "KILLED":
            self.client.hurry()
        self.flush()
        for arm in sorted(self._open):
            self.client.set_terminated(self.arm_runs[arm], "KILLED" if status != "FINISHED" else status)
        self._open.clear()
        self.client.set_terminated(self._parent_id, status)
        if status == "KILLED":
            self.client.try_drain()
            self.client.close()

    def settle(self, check: Callable[[], None] | None = None) -> None:
        """After a finished study's `end`: while the tracking server is away, wait for it (up to tracking.outage_limit_s
        since it went) and send what the spool holds; TrackingLost past the limit. `check` is called on each turn
        (`loops.stopping.check_stopped`: a stop ends the wait)."""
        try:
            self.client.settle(check)
        finally:
            self.client.close()

    def spool_note(self) -> str:
        """What waits in the spool ('' when nothing does): for the line a stopped study ends with."""
        return self.client.note()
