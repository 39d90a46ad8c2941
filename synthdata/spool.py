"""A tracking server that goes away does not lose a study: what the driver could not write waits on disk, in order,
and is sent once when the server answers again.

`SpoolingClient` stands between `StudyTracker` and MLflow's client. Writes go to the server while it answers; the
first one that finds it gone (refused, reset, timed out, 5xx after the client's few retries) opens a `Journal` (one
JSON line per write, its files copied beside it) and from then on every write goes there, in the order the study made
it, without touching the network. The driver's loop calls `tick`: every `probe_every_s` one short request asks
whether the server is back; when it is, the journal is sent in order and removed. Past `limit_s` away, `tick` raises
`TrackingLost`, which stops the study as a SIGTERM would (runs KILLED, resumable), and the next run of the study sends
the journal (`send_spooled`) before it reads the store.

Sent once: a write whose request reached the server but whose answer was lost goes into the journal too, and is sent
again, so every write is idempotent when replayed:
- metrics carry their timestamp and step, and MLflow's SQL store ignores a metric whose (key, timestamp, step, value)
  its run already holds (`SqlAlchemyStore._log_metrics_once`); params logged again with the same value are accepted;
  tags and statuses are overwritten; `set_terminated` carries the end time it was first asked with;
- artifacts go to fixed paths (overwritten), an image logged by key and step (the UI's step slider) too: its file
  names, which MLflow's `log_image` makes unique with a fresh uuid on every call, are fixed when the write is made;
- a run is created with a tag `synthdata.run_key` (made here) and looked up by it before it is created again; writes to
  a run created while the server was away name it `spooled:<experiment>:<key>` until it exists.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

RUN_KEY = "synthdata.run_key"
PLACEHOLDER = "spooled:"
EXIT_TEMPFAIL = 75  # sysexits' EX_TEMPFAIL: try again later (with the server back)
# MLflow's client retries a call for ~4 minutes (7 retries, backoff 2 s doubling, 120 s timeout). The driver's calls
# retry a few seconds instead (0, 2, 4 s and a little jitter), enough for a blip (a server restarting, a proxy's 503),
# and then spool: a dead server is noticed in about 7 s instead of minutes. A user's own setting of any of them wins.
CLIENT_KNOBS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PROBE_CONNECT_S, PROBE_ANSWER_S = 2.0, 5.0  # the probe while away: one request, no retries


class TrackingLost(KeyboardInterrupt):
    """The tracking server stayed away past `tracking.outage_limit_s`: the study stops, resumable.

    A KeyboardInterrupt, as a stop from outside is: it passes through the code that catches Exception (Ray, Tune,
    an arm's error handling) and ends the study the way SIGTERM does, its runs KILLED and its writes spooled.
    """

    def __init__(self, message: str, exit_code: int = EXIT_TEMPFAIL) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def quick_client(retries: int | None = None) -> Iterator[None]:
    """MLflow's HTTP client, for the block, retrying for seconds instead of minutes (`CLIENT_KNOBS`; `retries`: fewer).

    Set around each of the driver's calls rather than for the process, so that Ray workers (started from this
    process's environment) keep MLflow's defaults.
    """
    knobs = dict(CLIENT_KNOBS)
    if retries is not None:
        knobs["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    added = {k: v for k, v in knobs.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def is_unreachable(err: BaseException) -> bool:
    """Whether `err` says the server did not answer (refused, reset, timed out, 5xx after the retries), not that it
    answered no (a bad request, a missing run)."""
    try:
        import requests

        if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
    except ImportError:
        pass
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    text = str(err)  # MLflow's REST client wraps every transport failure as "API request to URL failed with ..."
    return text.startswith("API request to ") and (" failed with exception " in text or " failed with timeout " in text)


def _reason(err: BaseException) -> str:
    """A few words on why the server did not answer."""
    text = str(err).lower()
    for needle, words in (("refused", "connection refused"), ("timeout", "timed out"), ("timed out", "timed out"),
                          ("reset", "connection reset"), ("error responses", "server errors"), ("aborted", "connection aborted")):
        if needle in text:
            return words
    return type(err).__name__


def probe(uri: str) -> bool:
    """One short request (no retries): does an MLflow server answer at `uri`?

    A store on this machine (a SQLite file, a folder) has no server to go away: always True. Its writes spool only when
    a stop lands while one is on its way, and they are sent on the study's way out.
    """
    if not uri.startswith(("http://", "https://")):
        return True
    import requests

    from synthdata.tracking import _PROBE, _request_credentials

    kwargs, _ = _request_credentials(uri)
    try:
        answer = requests.get(uri.rstrip("/") + _PROBE, params={"max_results": 1},
                              timeout=(PROBE_CONNECT_S, PROBE_ANSWER_S), **kwargs)
    except requests.exceptions.RequestException:
        return False
    return answer.ok


class Journal:
    """One driver's spooled writes: `journal.jsonl` (a header line, then one write a line), the files they upload under
    `files/`, and `sent` (how many writes reached the server, so a replay cut short goes on from there).

    A live study holds `lock` while it writes here: a study started meanwhile does not send another's journal.
    """

    def __init__(self, folder: Path, header: dict[str, Any], ops: list[dict[str, Any]] | None = None, sent: int = 0) -> None:
        self.folder, self.header = folder, header
        self.ops = ops if ops is not None else []
        self.sent = sent
        self._lock: Any = None

    @classmethod
    def create(cls, parent: Path, header: dict[str, Any]) -> Journal:
        folder = parent / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        (folder / "files").mkdir(parents=True)
        journal = cls(folder, header)
        journal.lock(wait=True)
        with open(folder / "journal.jsonl", "w") as f:
            f.write(json.dumps(header) + "\n")
        return journal

    @classmethod
    def load(cls, folder: Path) -> Journal:
        lines = (folder / "journal.jsonl").read_text().splitlines()
        header = json.loads(lines[0])
        ops = []
        for line in lines[1:]:
            try:
                ops.append(json.loads(line))
            except ValueError:  # the last line, cut short by a kill: its write was never made (nor acknowledged)
                break
        sent_file = folder / "sent"
        sent = int(sent_file.read_text() or 0) if sent_file.is_file() else 0
        return cls(folder, header, ops, sent)

    def lock(self, wait: bool) -> bool:
        """Hold the journal's lock (False: another live process holds it)."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.folder / "lock"))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            return False
        self._lock = lock
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def append(self, op: dict[str, Any]) -> None:
        """Add a write, with copies of the files it names (the caller's temporary folder is gone once it returns)."""
        n = len(self.ops)
        op = dict(op)
        if isinstance(op.get("image"), np.ndarray):
            name = f"files/{n}.npy"
            np.save(self.folder / name, op["image"])
            op["image"] = name
        for field in ("local_dir", "local_path"):
            if field in op and Path(op[field]).is_absolute():
                source, name = Path(op[field]), f"files/{n}"
                if field == "local_dir":
                    shutil.copytree(source, self.folder / name)
                else:
                    (self.folder / name).mkdir()
                    name = f"{name}/{source.name}"  # log_artifact keeps the file's name
                    shutil.copyfile(source, self.folder / name)
                op[field] = name
        self.ops.append(op)
        with open(self.folder / "journal.jsonl", "a") as f:
            f.write(json.dumps(op) + "\n")
            f.flush()
            os.fsync(f.fileno())  # what a study computed survives the machine, not only the process

    def mark_sent(self, sent: int) -> None:
        self.sent = sent
        tmp = self.folder / "sent.tmp"
        tmp.write_text(str(sent))
        tmp.replace(self.folder / "sent")

    @property
    def pending(self) -> int:
        return len(self.ops) - self.sent

    def path(self, name: str) -> str:
        """A file a write names: spooled ones are relative to the journal's folder."""
        return name if Path(name).is_absolute() else str(self.folder / name)

    def remove(self) -> None:
        self.release()
        shutil.rmtree(self.folder, ignore_errors=True)


class SpoolingClient:
    """The tracker's MLflow client: every write goes to the server, or to the journal while the server is away.

    Reads pass through to MLflow's client (failing at once while the server is known to be away). `say` prints the
    lines a person running the study needs: the server gone, and back.
    """

    def __init__(self, client: Any, uri: str, spool_dir: Path, limit_s: float = 600.0,
                 say: Callable[[str], None] | None = None, probe_every_s: float = 2.0) -> None:
        self._client = client
        self.uri, self.spool_dir, self.limit_s, self.probe_every_s = uri, Path(spool_dir), limit_s, probe_every_s
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.journal: Journal | None = None
        self.away_since: float | None = None
        self._probed = 0.0
        self._lost = False  # TrackingLost raised: the study is ending; writes spool, nothing more is raised
        self._hurry = False  # the study is stopping: no retries (a stop must end in seconds)
        self._ids: dict[str, str] = {}  # run key -> the run's id, for runs created from the journal

    # -- reads -------------------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.away:
                raise ConnectionError(f"tracking server {self.uri} is away")
            if args and isinstance(args[0], str) and args[0].startswith(PLACEHOLDER):
                args = (self._real(args[0]), *args[1:])
            with quick_client(0 if self._hurry else None):
                return attr(*args, **kwargs)
        return call

    @property
    def away(self) -> bool:
        """Whether writes are going to the journal (the server went away and the journal is not all sent yet)."""
        return self.journal is not None and self.journal.pending > 0

    # -- writes ------------------------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        """The new run's id; a placeholder naming its key when it was spooled."""
        key = uuid.uuid4().hex
        op = {"op": "create_run", "experiment_id": experiment_id, "run_name": run_name, "tags": {**tags, RUN_KEY: key},
              "start_time": int(time.time() * 1000), "key": key}
        run_id = self._write(op)
        return run_id if run_id is not None else f"{PLACEHOLDER}{experiment_id}:{key}"

    def log_batch(self, run_id: str, metrics: list = (), params: list = (), tags: list = ()) -> None:
        """Metrics (`mlflow.entities.Metric`, with their timestamps), params and tags in one request."""
        self._write({"op": "log_batch", "run_id": run_id,
                     "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                     "params": [[p.key, p.value] for p in params], "tags": [[t.key, t.value] for t in tags]})

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._write({"op": "set_tag", "run_id": run_id, "key": key, "value": value})

    def update_run(self, run_id: str, status: str) -> None:
        self._write({"op": "update_run", "run_id": run_id, "status": status})

    def set_terminated(self, run_id: str, status: str) -> None:
        self._write({"op": "set_terminated", "run_id": run_id, "status": status, "end_time": int(time.time() * 1000)})

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self._write({"op": "log_artifacts", "run_id": run_id, "local_dir": str(Path(local_dir).resolve()),
                     "artifact_path": artifact_path})

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self._write({"op": "log_artifact", "run_id": run_id, "local_path": str(Path(local_path).resolve()),
                     "artifact_path": artifact_path})

    def log_image(self, run_id: str, image: np.ndarray, artifact_file: str | None = None, key: str | None = None,
                  step: int | None = None) -> None:
        """An image at a path, or by key and step (the UI's step slider), under names fixed now (`_step_image_files`)."""
        files = _step_image_files(key, step or 0, int(time.time() * 1000)) if key is not None else None
        self._write({"op": "log_image", "run_id": run_id, "image": np.asarray(image), "artifact_file": artifact_file,
                     "files": files})

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._write({"op": "log_text", "run_id": run_id, "text": text, "artifact_file": artifact_file})

    def log_dict(self, run_id: str, data: dict, artifact_file: str) -> None:
        self._write({"op": "log_dict", "run_id": run_id, "data": data, "artifact_file": artifact_file})

    def delete_checkpoint(self, run_id: str, folder: str, keep_samples: bool) -> None:
        """Remove an artifact folder (but its `samples.*` with `keep_samples`); best effort, as a store may not delete."""
        self._write({"op": "delete_checkpoint", "run_id": run_id, "folder": folder, "keep_samples": keep_samples})

    def _write(self, op: dict[str, Any]) -> Any:
        if self.away:  # in order: nothing overtakes what waits
            self.journal.append(op)
            return None
        try:
            return self._send(op)
        except BaseException as err:
            if not (is_unreachable(err) or isinstance(err, KeyboardInterrupt)):
                raise
            # Unanswered (or a stop landed while it was on its way): it may or may not have reached the server; sent
            # again later, it is only logged once.
            self._spool(op, err)
            if isinstance(err, KeyboardInterrupt):
                raise
            return None

    def _spool(self, op: dict[str, Any], err: BaseException) -> None:
        if self.journal is None:
            self.journal = Journal.create(self.spool_dir, {"uri": self.uri, "created": time.time()})
        if self.away_since is None and not isinstance(err, KeyboardInterrupt):
            self.away_since = self._probed = time.monotonic()
            self.say(f"tracking server {self.uri} unreachable ({_reason(err)}): spooling to {self.spool_dir}")
        self.journal.append(op)

    # -- the server back ---------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Called on each turn of the driver's loop: while away, ask every `probe_every_s` whether the server is back and
        send the journal when it is; past `limit_s` away, raise TrackingLost (once)."""
        if not self.away:
            return
        now = time.monotonic()
        if now - self._probed >= self.probe_every_s:
            self._probed = now
            if self.try_drain():
                return
        if not self._lost and self.away_since is not None and time.monotonic() - self.away_since > self.limit_s:
            self._lost = True
            raise TrackingLost(f"tracking server {self.uri} unreachable for {time.monotonic() - self.away_since:.0f}s, "
                               f"past tracking.outage_limit_s ({self.limit_s:g}s)")

    def settle(self, check: Callable[[], None] | None = None) -> None:
        """At the study's end: wait for the server (up to what is left of `limit_s`) until the journal is sent.
        `check` is called on each turn (it raises to end the wait: a stop)."""
        while self.away:
            if check is not None:
                check()
            self.tick()
            time.sleep(min(0.5, self.probe_every_s))

    def hurry(self) -> None:
        """The study is stopping: no more retries, so that its last writes spool in a moment if the server is away."""
        self._hurry = True

    def try_drain(self) -> bool:
        """If the server answers, send what waits, in order; True when nothing waits any more."""
        if self.journal is None:
            return True
        if self.journal.pending and not probe(self.uri):
            return False
        journal, since = self.journal, self.away_since
        sent = self._drain(journal)
        if journal.pending:
            return False
        journal.remove()
        self.journal = self.away_since = None
        if sent:
            away = f" after {time.monotonic() - since:.0f}s" if since is not None else ""
            self.say(f"tracking server {self.uri} back{away}: sent {sent} spooled writes")
        return True

    def _drain(self, journal: Journal) -> int:
        """Send the journal's unsent writes in order, until one finds the server away again; how many were sent."""
        sent = 0
        while journal.pending:
            op = journal.ops[journal.sent]
            try:
                self._send(op, journal)
            except Exception as err:
                if is_unreachable(err):
                    return sent
                self.say(f"tracking server {self.uri}: a spooled {op['op']} was refused and is dropped "
                         f"({type(err).__name__}: {str(err)[:200]})")
            journal.mark_sent(journal.sent + 1)
            sent += 1
        return sent

    def close(self) -> None:
        """Let go of the journal's lock (what waits stays on disk, for the next run of the study)."""
        if self.journal is not None:
            self.journal.release()

    def note(self) -> str:
        """What waits on disk, for the line a stopped study ends with ('' when nothing does)."""
        if not self.away:
            return ""
        return f"{self.journal.pending} writes wait in {self.journal.folder}"

    # -- sending -----------------------------------------------------------------------------------------------
    def _real(self, run_id: str) -> str:
        """A run's id: a placeholder of a run created from the journal is looked up by its key."""
        if not run_id.startswith(PLACEHOLDER):
            return run_id
        experiment_id, key = run_id.removeprefix(PLACEHOLDER).split(":", 1)
        if key not in self._ids:
            found = self._find(experiment_id, key)
            if found is None:
                raise ValueError(f"run {run_id}: its creation was not sent")
            self._ids[key] = found
        return self._ids[key]

    def resolve(self, run_id: str) -> str:
        """A run's id as MLflow knows it (a placeholder until its creation is sent)."""
        try:
            return self._real(run_id) if run_id.startswith(PLACEHOLDER) and not self.away else run_id
        except Exception:
            return run_id

    def _find(self, experiment_id: str, key: str) -> str | None:
        runs = self._client.search_runs([experiment_id], f"tags.`{RUN_KEY}` = '{key}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def _send(self, op: dict[str, Any], journal: Journal | None = None) -> Any:
        """Make one write on the server (`journal`: replayed from it, so it may have been made before).

        A run is created without the client's retries: it retries a POST whose answer was lost as well, and each
        retry creates another run. Unanswered, the creation goes to the journal, whose replay looks the run up first.
        """
        with quick_client(0 if self._hurry or op["op"] == "create_run" else None):
            return self._make(op, journal)

    def _make(self, op: dict[str, Any], journal: Journal | None) -> Any:
        from mlflow.entities import Metric, Param, RunTag

        c, kind = self._client, op["op"]
        if kind == "create_run":
            if journal is not None:  # its first try may have created it, the answer lost
                found = self._find(op["experiment_id"], op["key"])
                if found is not None:
                    self._ids[op["key"]] = found
                    return found
            tags = {k: self._real(v) if str(v).startswith(PLACEHOLDER) else v for k, v in op["tags"].items()}  # a parent's id
            run = c.create_run(op["experiment_id"], start_time=op["start_time"], tags=tags, run_name=op["run_name"])
            self._ids[op["key"]] = run.info.run_id
            return run.info.run_id
        run_id = self._real(op["run_id"])
        path = journal.path if journal is not None else (lambda name: name)
        if kind == "log_batch":
            c.log_batch(run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in op["metrics"]],
                        params=[Param(k, v) for k, v in op["params"]], tags=[RunTag(k, v) for k, v in op["tags"]],
                        synchronous=True)
        elif kind == "set_tag":
            c.set_tag(run_id, op["key"], op["value"], synchronous=True)
        elif kind == "update_run":
            c.update_run(run_id, status=op["status"])
        elif kind == "set_terminated":
            c.set_terminated(run_id, op["status"], end_time=op["end_time"])
        elif kind == "log_artifacts":
            c.log_artifacts(run_id, path(op["local_dir"]), artifact_path=op["artifact_path"])
        elif kind == "log_artifact":
            c.log_artifact(run_id, path(op["local_path"]), artifact_path=op["artifact_path"])
        elif kind == "log_image":
            image = op["image"] if isinstance(op["image"], np.ndarray) else np.load(path(op["image"]))
            if op["files"] is None:
                c.log_image(run_id, image, artifact_file=op["artifact_file"])
            else:
                self._log_step_image(run_id, image, *op["files"])
        elif kind == "log_text":
            c.log_text(run_id, op["text"], op["artifact_file"])
        elif kind == "log_dict":
            c.log_dict(run_id, op["data"], op["artifact_file"])
        elif kind == "delete_checkpoint":
            self._delete(run_id, op["folder"], op["keep_samples"])
        else:
            raise ValueError(f"unknown spooled write {kind!r}")
        return None

    def _log_step_image(self, run_id: str, image: np.ndarray, full: str, compressed: str) -> None:
        """The two files of a step image, as `MlflowClient.log_image(key=, step=)` writes them, at the given names."""
        self._client.log_image(run_id, image, artifact_file=full)
        try:
            from mlflow.tracking.multimedia import compress_image_size, convert_to_pil_image
        except ImportError:  # an MLflow without it: the UI shows the full-size image
            return
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(compressed).name
            compress_image_size(convert_to_pil_image(image)).save(local)
            self._client.log_artifact(run_id, str(local), artifact_path=str(Path(compressed).parent))

    def _delete(self, run_id: str, folder: str, keep_samples: bool) -> None:
        try:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            repo = get_artifact_repository(self._client.get_run(run_id).info.artifact_uri, tracking_uri=self.uri)
            if not keep_samples:
                repo.delete_artifacts(folder)
                return
            for entry in repo.list_artifacts(folder):
                if not Path(entry.path).name.startswith("samples."):  # samples.safetensors or samples.shards.json
                    repo.delete_artifacts(entry.path)
        except Exception as err:
            if is_unreachable(err):
                raise  # sent again when the server is back
            # A store that cannot delete keeps the checkpoint: more files, nothing lost.


def _step_image_files(key: str, step: int, timestamp: int) -> tuple[str, str]:
    """The names MLflow gives a step image (`images/<key>+step+<step>+timestamp+<ms>+<uuid>.png` and its compressed
    `...+compressed.webp`, which the UI's step slider reads), with the uuid drawn once, here."""
    name = f"images/{key.replace('/', '~')}+step+{step}+timestamp+{timestamp}+{uuid.uuid4()}"
    return f"{name}.png", f"{name}+compressed.webp"


def spool_dir(report_dir: Path | str, study: str) -> Path:
    """Where a study's spooled writes wait: REPORT_DIR/<study name>/spool."""
    return Path(report_dir) / study / "spool"


def send_spooled(folder: Path, uri: str, say: Callable[[str], None] | None = None) -> int:
    """Send what earlier runs of a study left in its spool (oldest first) before this run reads the store; how many.

    A journal another live study holds is left alone. UserError when the spool was made for another tracking URI
    (one line: which, and how to send it), or when the server goes away again while it is sent (exit 75).
    """
    from synthdata.errors import UserError
    from synthdata.tracking import mlflow_client

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    total = 0
    for sub in sorted(p for p in Path(folder).glob("*") if (p / "journal.jsonl").is_file()):
        journal = Journal.load(sub)
        if not journal.pending:
            journal.remove()
            continue
        if journal.header.get("uri") != uri:
            raise UserError(f"tracking.uri: {uri}: {sub} holds {journal.pending} writes of an earlier run of this study "
                            f"for {journal.header.get('uri')}, not sent yet: run it with --tracking-uri "
                            f"{journal.header.get('uri')} to send them (or remove that folder to drop them)")
        if not journal.lock(wait=False):  # a study running now writes it
            continue
        client = SpoolingClient(mlflow_client(uri), uri, folder, say=say)
        sent = client._drain(journal)
        total += sent
        if journal.pending:
            journal.release()
            error = UserError(f"tracking.uri: {uri}: went away again while the spooled writes of an earlier run were sent "
                              f"({journal.sent} of {len(journal.ops)} sent; the rest wait in {sub}): run it again once "
                              "the server answers")
            error.exit_code = EXIT_TEMPFAIL
            raise error
        journal.remove()
    if total:
        say(f"tracking server {uri}: sent {total} spooled writes of an earlier run from {folder}")
    return total
