"""A tracking URI that is wrong is found at the start: one line naming the URI and what answered, exit 2, within
seconds, before Ray starts or any run opens (issue 27). Against real servers on 127.0.0.1: nothing listening, a plain
`python -m http.server`, a basic-auth proxy answering 401/403, and a real `mlflow server`, which the same check lets
through (with the credentials the proxy wants) and whose artifact proxy removes superseded checkpoints."""
from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from synthdata.errors import UserError

BIN = Path(sys.executable).parent
TOY = {"name": "toy", "data": {"source": "gaussian"}, "generator": {"name": "gaussian"}, "metrics": ["toy"],
       "loop": {"types": ["replace"], "generations": 2, "samples_per_generation": 100}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # it answers (a 404 is an answer)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing answered at {url} within {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    """End a server started in its own process group, with everything it started (mlflow's workers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def mlflow_server():
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder (served through its proxy)."""
    root = Path(tempfile.mkdtemp(prefix="sdts", dir="/tmp"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job consumers (seven processes, of no use here)
    with open(root / "mlflow.log", "w") as log:
        proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                                 "--artifacts-destination", str(root / "artifacts")],
                                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def plain_http(tmp_path):
    """`python -m http.server`: a web server, but not MLflow (it answers 404 File not found, text/html)."""
    port = _free_port()
    served = tmp_path / "www"
    served.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=served,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _write_study(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _left(tmp_path: Path) -> set[str]:
    """What a refused study left in its working directory besides its study files: nothing (no store, no report)."""
    return {p.name for p in tmp_path.iterdir() if p.suffix not in (".yaml", ".safetensors") and p.name != "www"}


def test_a_refused_tracking_port_ends_synthdata_run_at_once_in_one_line(tmp_path):
    """A mistyped port (nothing listens there): exit 2 with one line, well within 10 s, and nothing created;
    before, MLflow's client retried for 4+ minutes and a 128-line traceback followed."""
    uri = f"http://127.0.0.1:{_free_port()}"
    path = _write_study(tmp_path, TOY)
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.monotonic()
    proc = subprocess.Popen([str(BIN / "synthdata"), "run", "--no-progress", "--tracking-uri", uri, str(path)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and any Ray it started
            proc.wait()
    seconds = time.monotonic() - start
    assert proc.returncode == 2, (out + err)[-2000:]
    assert err.splitlines() == [f"error: tracking.uri: {uri}: connection refused (nothing listens there: start the "
                                "server, or fix the host or port)"]
    assert out == ""
    assert seconds < 10, seconds
    assert _left(tmp_path) == set()


def test_a_web_server_that_is_not_mlflow_is_named_in_one_line_by_run_detect_report_and_the_api(plain_http, tmp_path,
                                                                                               monkeypatch, capsys):
    import synthdata
    from synthdata.cli import main
    from synthdata.data import ImageSet, save_samples

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    line = (f"error: tracking.uri: {plain_http}: not an MLflow tracking server (GET /api/2.0/mlflow/experiments/search "
            "answered HTTP 404 File not found, text/html)")
    save_samples(ImageSet(torch.zeros(20, 1, 8, 8), torch.arange(20) % 10, 10), tmp_path / "s.safetensors")
    path = _write_study(tmp_path, TOY)
    for argv in (["run", "--no-progress", "--tracking-uri", plain_http, str(path)],
                 ["detect", "--generated", "s=s.safetensors", "--no-progress", "--tracking-uri", plain_http],
                 ["report", str(path), "--tracking-uri", plain_http]):
        start = time.monotonic()
        code = main(argv)
        out, err = capsys.readouterr()
        assert (code, err.splitlines(), out) == (2, [line], ""), argv
        assert time.monotonic() - start < 10, argv
    # The Python API (and a URI from the study file) the same way.
    start = time.monotonic()
    with pytest.raises(UserError) as refused:
        synthdata.run({**TOY, "tracking": {"uri": plain_http}}, progress=False)
    assert f"error: {refused.value}" == line and time.monotonic() - start < 10
    assert _left(tmp_path) == set()


class _BasicAuthProxy(BaseHTTPRequestHandler):
    """An auth proxy in front of a tracking server (as nginx with basic auth would be): 401 without credentials,
    403 for a wrong token, the server's own answer for user:secret."""

    upstream = ""

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        if auth == "Basic " + base64.b64encode(b"user:secret").decode():
            with urllib.request.urlopen(self.upstream + self.path, timeout=30) as answer:
                body, kind = answer.read(), answer.headers.get("Content-Type", "application/json")
            self.send_response(200)
        elif auth.startswith("Bearer "):
            body, kind = b"<html>forbidden</html>", "text/html"
            self.send_response(403)
        else:
            body, kind = b"<html>401 Authorization Required</html>", "text/html"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
def test_a_server_that_refuses_us_says_so_and_the_right_credentials_let_a_real_mlflow_server_through(
        mlflow_server, tmp_path, monkeypatch, capsys):
    from synthdata.cli import main

    handler = type("Proxy", (_BasicAuthProxy,), {"upstream": mlflow_server})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(tmp_path)
        code = main(["run", "--no-progress", "--tracking-uri", uri, str(_write_study(tmp_path, TOY))])
        out, err = capsys.readouterr()
        assert (code, err.splitlines(), out) == (2, [
            f"error: tracking.uri: {uri}: the server refused us (HTTP 401 Unauthorized: set MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)"], "")
        from synthdata.tracking import check_tracking_server

        check_tracking_server(mlflow_server)  # a real MLflow server answers: nothing to say
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "wrong")
        with pytest.raises(UserError, match=r"the server refused us \(HTTP 403 Forbidden with the credentials given: check them\)"):
            check_tracking_server(uri)
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
        check_tracking_server(uri)  # the credentials MLflow's client would send: through to the real server
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert _left(tmp_path) == set()


@pytest.mark.slow
def test_a_loop_on_a_real_mlflow_server_keeps_the_kth_and_latest_checkpoints_through_its_artifact_proxy(
        mlflow_server, local_ray, tmp_path):
    from loops.study import run_study
    from synthdata.runs import child_runs
    from synthdata.spec import parse_spec

    study = {**TOY, "name": "kept_on_server", "loop": {**TOY["loop"], "types": ["replace", "accumulate"], "generations": 5},
             "tracking": {"checkpoint_every": 2, "sample_grid": False, "report_dir": str(tmp_path / "runs")}}
    result = run_study(parse_spec(study), tracking_uri=mlflow_server, show_progress=False)
    assert not result.failed
    c = MlflowClient(mlflow_server)
    for run in child_runs(mlflow_server, result.parent_run_id):
        kept = {int(Path(d.path).name.rsplit("_", 1)[1]): {Path(f.path).name for f in c.list_artifacts(run.info.run_id, d.path)}
                for d in c.list_artifacts(run.info.run_id, "checkpoints")}
        assert {g for g, files in kept.items() if "generator.safetensors" in files} == {2, 4, 5}, (run.info.run_name, kept)
        assert set(kept) == ({1, 2, 3, 4, 5} if run.info.run_name.startswith("accumulate") else {2, 4, 5})
