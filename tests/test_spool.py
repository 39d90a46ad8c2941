"""A tracking server that goes away mid-study does not lose the study (issue 27): what the driver could not write waits
in a spool on disk and is sent once, in order, when the server answers again; past tracking.outage_limit_s the study
stops, resumable; SIGTERM ends it within seconds while the server is away; two studies at once on one store or one
server both finish with every metric once. Against a real `mlflow server` on 127.0.0.1, stopped and started again on
the same store, and a real proxy in front of it that loses the server's answers."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from test_tracking_server import BIN, _free_port, _wait_http

from synthdata.data import ImageSet
from synthdata.tracking import DONE_METRIC, StudyTracker, checkpoint_dir

TESTS = Path(__file__).parent


class Server:
    """A real `mlflow server` on 127.0.0.1 that a test stops (as a crash: SIGKILL) and starts again on the same port
    and store."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start it and wait until it answers; the seconds that took."""
        t0 = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job consumers (seven processes, of no use here)
        with open(self.root / "mlflow.log", "a") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}", "--artifacts-destination",
                 str(self.root / "artifacts")], cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        _wait_http(f"{self.uri}/health", self.proc)
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # a crash: no goodbye to the connections it holds
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None
        _stop_quietly_until_free(self.port)


def _stop_quietly_until_free(port: int, timeout: float = 10) -> None:
    """Wait until nothing listens on `port` (a killed server's workers may take a moment to go)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)


@pytest.fixture
def server(tmp_path, empty_store):
    """A server of the test's own, on a store whose tables are made (a new store's migrations take seconds)."""
    root = tmp_path / "server"
    root.mkdir()
    shutil.copyfile(empty_store, root / "server.db")
    s = Server(root)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _samples(g: int) -> ImageSet:
    return ImageSet(torch.full((4, 1, 2, 2), g / 10), torch.arange(4) % 2, 2)


def _steps(c: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def test_writes_made_while_the_server_is_away_wait_on_disk_and_go_in_once_in_order_when_it_is_back(server, tmp_path, capsys):
    """Generations logged with the server down (metrics, a checkpoint, the sample grid, a tag, the arm's end) cost
    no wait once it is known to be away; one line says it went, one that it is back, and then MLflow holds each of
    them once, the superseded checkpoint removed after the newer one went in, as if the server had never gone."""
    spool = tmp_path / "spool"
    t = StudyTracker(server.uri, "exp", "study", {"p": "1"}, spool_dir=spool)
    t.flush_every_s = 0.0
    t.client.probe_every_s = 0.2
    run = t.start_arm("replace/seed0", {"a": "2"})
    grid = np.zeros((8, 8, 3), np.uint8)
    t.log_generation("replace/seed0", 1, {"m": 1.0}, grid, _samples(1), {"generator.safetensors": b"w1"}, checkpoint_every=3)
    server.stop()
    t0 = time.monotonic()
    t.log_generation("replace/seed0", 2, {"m": 2.0}, grid, _samples(2), {"generator.safetensors": b"w2"}, checkpoint_every=3)
    noticed = time.monotonic() - t0
    assert noticed < 15, noticed  # MLflow's own client would retry for ~4 minutes
    err = capsys.readouterr().err
    assert err.splitlines() == [f"tracking server {server.uri} unreachable (connection refused): spooling to {spool}"], err
    t0 = time.monotonic()
    for g in (3, 4):
        t.log_generation("replace/seed0", g, {"m": float(g)}, grid, _samples(g), {"generator.safetensors": b"w%d" % g},
                         checkpoint_every=3)
    t.set_tag("synthdata.note", "while away", arm="replace/seed0")
    t.end_arm("replace/seed0")
    t.flush_due()  # a driver's turn: the server is asked (it does not answer) and nothing waits on it
    assert time.monotonic() - t0 < 3
    assert len(list(spool.glob("*/journal.jsonl"))) == 1 and t.client.away
    server.start()
    t.end()
    t.settle()  # waits until it answers, then sends the journal
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"tracking server {server.uri} back after ") and "sent " in err[0], err
    assert not list(spool.glob("*/journal.jsonl"))  # sent, and gone from the disk
    c = MlflowClient(server.uri)
    for key in ("m", DONE_METRIC):
        assert _steps(c, run, key) == [1, 2, 3, 4], key
    got = c.get_run(run)
    assert got.info.status == "FINISHED" and got.data.tags["synthdata.note"] == "while away" and got.data.params["a"] == "2"
    kept = {Path(d.path).name for d in c.list_artifacts(run, "checkpoints")}
    assert kept == {"generation_003", "generation_004"}  # the k-th and the latest; 1 and 2 removed in order
    assert Path(c.download_artifacts(run, f"{checkpoint_dir(4)}/generator.safetensors", str(tmp_path))).read_bytes() == b"w4"
    steps = sorted(int(Path(a.path).name.split("+")[2]) for a in c.list_artifacts(run, "images") if a.path.endswith(".png"))
    assert steps == [1, 2, 3, 4]  # the UI's step slider: one image per generation
    assert c.get_run(t.parent_id).info.status == "FINISHED"


class _LosingProxy(BaseHTTPRequestHandler):
    """In front of the real server: while `lose` holds, a write (POST) is passed on and the server's answer is
    dropped (the connection closed unanswered), as a network cut between the server and the study would do."""

    upstream = ""
    lose = threading.Event()
    lost: list[str] = []

    def _relay(self) -> None:
        import urllib.error
        import urllib.request

        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        request = urllib.request.Request(self.upstream + self.path, data=body, method=self.command,
                                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, data, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as answer:
            status, data, kind = answer.code, answer.read(), answer.headers.get("Content-Type", "")
        if self.lose.is_set() and self.command in ("POST", "PUT"):
            self.lost.append(self.path)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the write is made; its answer never comes
            return
        self.send_response(status)
        self.send_header("Content-Type", kind or "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

    def log_message(self, *args) -> None:
        pass


def test_a_write_that_reached_the_server_but_whose_answer_was_lost_is_logged_once(server, tmp_path):
    """The answers to the study's writes lost (the writes themselves made, and made again by MLflow's client's own
    retries): a generation's metrics, a step image and a run's creation each wait in the spool and are sent again
    when answers come back, and MLflow holds each once (one run, not one per try)."""
    handler = type("Proxy", (_LosingProxy,), {"upstream": server.uri, "lose": threading.Event(), "lost": []})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{proxy.server_address[1]}"
    grid = np.zeros((8, 8, 3), np.uint8)
    try:
        t = StudyTracker(uri, "exp", "study", {}, spool_dir=tmp_path / "spool")
        t.flush_every_s = 0.0
        t.client.probe_every_s = 0.0
        run1 = t.start_arm("replace/seed0", {})
        t.log_generation("replace/seed0", 1, {"m": 1.0})
        made = {}
        for what, write in (("metrics", lambda: t.log_generation("replace/seed0", 2, {"m": 2.0})),
                            ("step image", lambda: t.client.log_image(run1, grid, key="samples", step=2)),
                            ("run", lambda: made.setdefault("run2", t.start_arm("augment/seed0", {})))):
            handler.lose.set()
            write()
            assert handler.lost and t.client.away, what  # it reached the server; its answer did not come back
            handler.lost.clear()
            handler.lose.clear()
            t.flush_due()  # the driver's next turn: the server answers again, the spool is sent
            assert not t.client.away, what
        t.log_generation("augment/seed0", 1, {"m": 1.0})
        t.end()
        t.settle()
    finally:
        proxy.shutdown()
        proxy.server_close()
    c = MlflowClient(server.uri)
    exp = c.get_experiment_by_name("exp").experiment_id
    arms = [r for r in c.search_runs([exp]) if r.data.tags.get("synthdata.role") == "arm"]
    assert sorted(r.info.run_name for r in arms) == ["augment/seed0", "replace/seed0"]  # not an augment run per try
    runs = {r.info.run_name: r.info.run_id for r in arms}
    assert runs["replace/seed0"] == run1 and t.client.resolve(made["run2"]) == runs["augment/seed0"]
    for name, steps in (("replace/seed0", [1, 2]), ("augment/seed0", [1])):
        got = sorted((m.step, m.value) for m in c.get_metric_history(runs[name], "m"))
        assert got == [(s, float(s)) for s in steps], name
        assert c.get_run(runs[name]).info.status == "FINISHED"
    images = [a.path for a in c.list_artifacts(run1, "images") if a.path.endswith(".png")]
    assert len(images) == 1, images


def test_a_stop_landing_mid_write_to_a_sqlite_store_still_ends_every_run_killed(tracking_uri, tmp_path, monkeypatch):
    """SIGTERM raised inside a write (the driver's signal handler raising while MLflow writes): the write waits in the
    spool, and the study's way out sends it and ends every run KILLED, since a SQLite store has no server to go
    away; nothing is left waiting, no run left RUNNING (what CI once saw in test_driver's SIGTERM test)."""
    t = StudyTracker(tracking_uri, "exp", "study", {}, spool_dir=tmp_path / "spool")
    t.flush_every_s = 0.0
    run = t.start_arm("replace/seed0", {})
    real, hits = t.client._client.log_batch, []

    def stopped_on_the_way(*args, **kwargs):
        if not hits:
            hits.append(1)
            raise KeyboardInterrupt  # what loops.stopping's handler raises for SIGTERM
        return real(*args, **kwargs)

    monkeypatch.setattr(t.client._client, "log_batch", stopped_on_the_way)
    with pytest.raises(KeyboardInterrupt):
        t.log_generation("replace/seed0", 1, {"m": 1.0})
    assert t.client.away  # the interrupted write waits
    t.end("KILLED")
    assert t.spool_note() == ""
    c = MlflowClient(tracking_uri)
    runs = c.search_runs([c.get_experiment_by_name("exp").experiment_id])
    assert {r.info.status for r in runs} == {"KILLED"} and len(runs) == 2
    assert [(m.step, m.value) for m in c.get_metric_history(run, "m")] == [(1, 1.0)]
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").rglob("journal.jsonl"))


# -- whole studies: `synthdata run` against a server that goes ---------------------------------------------------------

T = 24


def _study_file(tmp_path: Path, name: str, limit: float = 600, generations: int = T, seconds: float = 0.25,
                grid: bool = True) -> Path:
    """A toy loop of two arms whose generations take `seconds` each (long enough to stop the server part-way)."""
    study = {"name": name, "data": {"source": "gaussian"}, "metrics": ["toy"],
             "generator": {"name": "slow_generator:SlowGaussian", "params": {"seconds": seconds}},
             "loop": {"types": ["replace", "accumulate"], "generations": generations, "samples_per_generation": 100},
             "tracking": {"checkpoint_every": 5, "report_dir": str(tmp_path / "runs"), "outage_limit_s": limit,
                          "sample_grid": grid},
             "resources": {"cpus_per_arm": 1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


class Driver:
    """`synthdata run` in a process of its own, its stderr read line by line as it comes (with the time of each)."""

    def __init__(self, path: Path, uri: str, *extra: str, ray: object | None = None) -> None:
        """`ray`: the tests' own Ray (the `local_ray` fixture), joined instead of starting one (seconds per driver)."""
        if ray is not None:
            extra = (*extra, "--address", ray.get_runtime_context().gcs_address)
        env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
        env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_TRACKING_")}
        self.proc = subprocess.Popen([str(BIN / "synthdata"), "run", str(path), "--no-progress", "--tracking-uri", uri, *extra],
                                     cwd=path.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.out = ""
        self._threads = [threading.Thread(target=self._read_err, daemon=True), threading.Thread(target=self._read_out, daemon=True)]
        for th in self._threads:
            th.start()

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def _read_out(self) -> None:
        self.out = self.proc.stdout.read()

    def wait_for(self, text: str, timeout: float = 120) -> float:
        """The time the first line holding `text` came (AssertionError if it did not within `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if text in line:
                    return at
            if self.proc.poll() is not None and not self._threads[0].is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} within {timeout}s:\n{self.stderr[-4000:]}\n{self.out[-2000:]}")

    def finish(self, timeout: float = 300) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # where it waits, into its stderr
            time.sleep(2)
            self.kill()
            raise AssertionError(f"the driver did not end within {timeout}s:\n{self.stderr[-6000:]}") from None
        for th in self._threads:
            th.join(10)
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)


def _check_complete(uri: str, name: str, generations: int = T) -> None:
    """Every arm of the study's (one) study run FINISHED, each metric once per generation."""
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(name).experiment_id
    runs = c.search_runs([exp])
    studies = [r for r in runs if r.data.tags.get("synthdata.role") == "study"]
    arms = [r for r in runs if r.data.tags.get("synthdata.role") == "arm"]
    assert len(studies) == 1 and studies[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    assert sorted(r.info.run_name for r in arms) == ["accumulate/seed0", "replace/seed0"]
    for arm in arms:
        assert arm.info.status == "FINISHED", arm.info.run_name
        for key, first in ((DONE_METRIC, 0), ("fitted_variance", 1), ("w2_to_truth", 1)):
            assert _steps(c, arm.info.run_id, key) == list(range(first, generations + 1)), (arm.info.run_name, key)


def _wait_for_generation(uri: str, name: str, driver: Driver, generation: int, timeout: float = 300) -> None:
    """Until every arm of the study has logged `generation` (read from the server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.proc.poll() is None:
        try:
            c = MlflowClient(uri)
            exp = c.get_experiment_by_name(name)
            arms = c.search_runs([exp.experiment_id], "tags.`synthdata.role` = 'arm'") if exp else []
            if len(arms) == 2 and min(arm.data.metrics.get(DONE_METRIC, -1) for arm in arms) >= generation:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"generation {generation} not logged within {timeout}s:\n{driver.stderr[-3000:]}{driver.out[-2000:]}")


@pytest.mark.slow
def test_a_server_stopped_mid_study_and_started_again_on_its_store_leaves_every_generation_logged_once(server, tmp_path, local_ray):
    path = _study_file(tmp_path, "blip")
    driver = Driver(path, server.uri, ray=local_ray)
    try:
        _wait_for_generation(server.uri, path.stem, driver, 4)
        server.stop()
        stopped = time.monotonic()
        gone = driver.wait_for("unreachable")
        time.sleep(2)  # generations computed meanwhile go to the spool
        server.start()
        back = driver.wait_for(f"tracking server {server.uri} back after ")
        code = driver.finish()
    finally:
        driver.kill()
    assert code == 0, driver.stderr[-3000:]
    said = [ln for ln in driver.stderr.splitlines() if "tracking server" in ln]
    assert len(said) == 2, said  # one line when it went, one when it was back
    assert said[0] == f"tracking server {server.uri} unreachable (connection refused): spooling to {tmp_path / 'runs' / 'blip' / 'spool'}"
    assert gone - stopped < 15, gone - stopped
    assert back > gone and "Traceback" not in driver.stderr
    _check_complete(server.uri, "blip")
    assert not list((tmp_path / "runs" / "blip" / "spool").glob("*/journal.jsonl"))


G = 80  # generations of a study that is stopped: it goes on computing while the server is away


def _stop_part_way(server: Server, path: Path, ray: object, signum: int | None = None) -> tuple[Driver, int, str, dict[str, float]]:
    """Run the study, stop the server once every arm has logged generation 4, and (`signum`) signal the driver once
    it has said the server is gone: the driver, its exit code, its last line, and how long each step took."""
    t0 = time.monotonic()
    # On the tests' Ray, joined as a cluster: a stopped driver disconnects before its last line, so no Ray line follows it.
    driver = Driver(path, server.uri, ray=ray)
    try:
        _wait_for_generation(server.uri, path.stem, driver, 4)
        t1 = time.monotonic()
        server.stop()
        stopped = time.monotonic()
        gone = driver.wait_for("unreachable")
        if signum is not None:
            time.sleep(1)
            sent = time.monotonic()
            driver.proc.send_signal(signum)  # to the driver alone, as `timeout`, a scheduler or a terminal's Ctrl-C
        code = driver.finish(timeout=60)
        ended = time.monotonic()
    finally:
        driver.kill()
    timing = {"to generation 4": t1 - t0, "stopped -> gone line": gone - stopped, "gone line -> exit": ended - gone}
    if signum is not None:
        timing["signal -> exit"] = ended - sent
    print("timing:", ", ".join(f"{k} {v:.1f}s" for k, v in timing.items()))
    assert "Traceback" not in driver.stderr, driver.stderr[-3000:]
    assert timing["stopped -> gone line"] < 15, timing
    last = [ln for ln in driver.stderr.splitlines() if ln.strip()][-1]
    assert "writes wait in" in last and f"synthdata run {path} --resume" in last, last
    assert len(list((path.parent / "runs" / path.stem / "spool").glob("*/journal.jsonl"))) == 1
    return driver, code, last, timing


def _computed(path: Path) -> dict[str, int]:
    """Each arm's last generation in the table the stopped study wrote (what it had computed)."""
    import pandas as pd

    table = pd.read_csv(path.parent / "runs" / path.stem / "results.csv")
    return table.groupby("arm")["generation"].max().to_dict()


@pytest.mark.slow
def test_a_server_gone_past_the_outage_limit_ends_the_study_and_resume_sends_the_spool_first(server, tmp_path, local_ray):
    """The server does not come back: past tracking.outage_limit_s the study ends in one line (exit 75, no
    traceback), its runs not marked FINISHED; with the server back, --resume sends what waited and completes the
    study from where it had computed to, every metric once."""
    path = _study_file(tmp_path, "gone", limit=3, generations=G, grid=False)
    driver, code, last, timing = _stop_part_way(server, path, local_ray)
    assert code == 75, driver.stderr[-3000:]
    assert last.startswith(f"stopped: study 'gone' stopped (tracking server {server.uri} unreachable for "), last
    assert "s, past tracking.outage_limit_s (3s))" in last, last
    assert timing["gone line -> exit"] < 3 + 8, timing
    computed = _computed(path)
    assert 4 < min(computed.values()) and max(computed.values()) < G, computed  # stopped part-way, past what got in

    restart = server.start()
    c = MlflowClient(server.uri)
    runs = c.search_runs([c.get_experiment_by_name("gone").experiment_id])
    assert {r.info.status for r in runs} == {"RUNNING"}  # what the store holds until the spool is sent: not FINISHED
    t0 = time.monotonic()
    again = Driver(path, server.uri, "--resume", ray=local_ray)
    try:
        code = again.finish()
    finally:
        again.kill()
    print(f"timing: server restart {restart:.1f}s, resume {time.monotonic() - t0:.1f}s")
    assert code == 0, again.stderr[-3000:]
    sent = [ln for ln in again.stderr.splitlines() if "spooled writes" in ln]
    assert len(sent) == 1 and sent[0].startswith(f"tracking server {server.uri}: sent "), again.stderr[-3000:]
    _check_complete(server.uri, "gone", G)
    assert not list((tmp_path / "runs" / "gone" / "spool").glob("*/journal.jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_server_is_away_ends_the_study_within_seconds_its_writes_kept(server, tmp_path, signum, local_ray):
    """SIGTERM or Ctrl-C while the server is away: the driver ends in seconds with one line (the shell's code for the
    signal), and the spool holds everything it computed, its runs' ends included: sent (as the next run would send
    it), MLflow holds every generation it had computed once and its runs KILLED."""
    from synthdata.spool import send_spooled

    path = _study_file(tmp_path, "term", generations=G, grid=False)
    driver, code, last, timing = _stop_part_way(server, path, local_ray, signum)
    name = "SIGTERM" if signum == signal.SIGTERM else "interrupted"  # Ctrl-C's line, as before the spool
    assert code == 128 + signum and last.startswith(f"stopped: study 'term' stopped ({name})"), driver.stderr[-3000:]
    assert timing["signal -> exit"] < 10, timing  # 2.0-2.4 s measured here
    computed = _computed(path)
    assert max(computed.values()) < G, computed

    server.start()
    assert send_spooled(tmp_path / "runs" / "term" / "spool", server.uri) > 0
    c = MlflowClient(server.uri)
    runs = c.search_runs([c.get_experiment_by_name("term").experiment_id])
    assert {r.info.status for r in runs} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
    for run in runs:
        if run.data.tags.get("synthdata.role") == "arm":
            arm = run.data.tags["synthdata.arm"]
            assert _steps(c, run.info.run_id, DONE_METRIC) == list(range(0, computed[arm] + 1)), arm


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_two_studies_writing_to_one_store_at_once_both_finish_with_every_metric_once(store, tmp_path, request, local_ray):
    """Two drivers at once (on the tests' Ray, started once), in one experiment of one new SQLite file (its tables
    made by one of them while the other waits) or of one `mlflow server`: forty toy generations each."""
    n = 40
    uri = request.getfixturevalue("server").uri if store == "server" else f"sqlite:///{tmp_path / 'shared.db'}"
    drivers = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        study = {"name": name, "data": {"source": "gaussian", "toy": {"dim": 2, "train": 50, "heldout": 50, "test": 50}},
                 "generator": {"name": "gaussian"}, "metrics": ["toy"],
                 "loop": {"types": ["replace", "augment"], "generations": n, "samples_per_generation": 50},
                 "tracking": {"experiment": "shared", "sample_grid": False, "checkpoint_every": 10,
                              "report_dir": str(tmp_path / name / "runs")},
                 "resources": {"cpus_per_arm": 0.5}}
        path = tmp_path / name / f"{name}.yaml"
        path.write_text(yaml.safe_dump(study))
        drivers.append(Driver(path, uri, ray=local_ray))
    try:
        codes = [d.finish() for d in drivers]
    finally:
        for d in drivers:
            d.kill()
    assert codes == [0, 0], [d.stderr[-2000:] for d in drivers]
    print("timing:", [next((ln for ln in d.out.splitlines() if ln.startswith("study ")), "") for d in drivers])
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("shared").experiment_id])
    studies = {r.info.run_name: r for r in runs if r.data.tags.get("synthdata.role") == "study"}
    assert sorted(studies) == ["one", "two"] and {r.info.status for r in runs} == {"FINISHED"}
    for name, study in studies.items():
        arms = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
        assert len(arms) == 2, name
        for arm in arms:
            for key, first in ((DONE_METRIC, 0), ("fitted_variance", 1)):
                assert _steps(c, arm.info.run_id, key) == list(range(first, n + 1)), (name, arm.info.run_name, key)
