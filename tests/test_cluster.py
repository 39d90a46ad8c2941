"""The used-by path, for real: a Ray cluster of two node processes on 127.0.0.1, a real
`mlflow server` on 127.0.0.1, a study submitted through the Ray Jobs API (its driver
finds the cluster through RAY_ADDRESS, as `synthdata run --address` would), and the
results read back from the server.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import tiny_study
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer at {url} within {timeout}s")


def _wait_port(port: int, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout}s")


def _stop(procs: list[subprocess.Popen], marker: str) -> None:
    """End each started process group, then anything else of this cluster (found by its temp dir)."""
    import psutil

    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in arg for arg in (p.info["cmdline"] or [])):
            p.kill()


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """An environment as an activated venv gives: the job's entrypoint finds `synthdata` on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _start_cluster(env: dict[str, str], root: Path, procs: list[subprocess.Popen]) -> dict:
    """`mlflow server`, a Ray head and one worker node on fresh ports; raises if any of them does not come up."""
    mlflow_port, gcs_port, dash_port = _free_port(), _free_port(), _free_port()

    def start(cmd: list[str], log: str) -> subprocess.Popen:
        out = open(root / log, "w")
        procs.append(subprocess.Popen(cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]

    node = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    server = start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                    "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts")],
                   "mlflow.log")
    head = start([str(BIN / "ray"), "start", "--head", f"--port={gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={dash_port}", f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={root / 'head'}", *node],
                 "head.log")
    _wait_port(gcs_port, "ray head", head)  # the worker joins as soon as the head's GCS listens
    worker = start([str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs_port}", f"--dashboard-agent-listen-port={_free_port()}",
                    f"--temp-dir={root / 'worker'}", *node], "worker.log")
    _wait_http(f"http://127.0.0.1:{mlflow_port}/health", "mlflow server", server)
    _wait_http(f"http://127.0.0.1:{dash_port}/api/version", "ray head", head)
    from ray.util.state import list_nodes

    deadline = time.monotonic() + 120
    while len([n for n in list_nodes(address=f"http://127.0.0.1:{dash_port}") if n.state == "ALIVE"]) < 2:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray worker did not join: {(root / 'worker.log').read_text()[-2000:]}")
        time.sleep(0.5)
    return {"tracking": f"http://127.0.0.1:{mlflow_port}", "dashboard": f"http://127.0.0.1:{dash_port}",
            "gcs": f"127.0.0.1:{gcs_port}", "root": root}


@pytest.fixture(scope="module")
def cluster(env):
    """`mlflow server` and a Ray head + one worker node, each node with 1 CPU and its own temp dir.

    Node processes run in the foreground (`--block`) in their own process groups, so the
    teardown stops this cluster only, never the test session's own local Ray. A start that
    fails (a free port taken by another process before the node bound it) is tried once more.
    """
    root = Path(tempfile.mkdtemp(prefix="sdc", dir="/tmp"))  # short: Ray's socket paths must stay under 107 chars
    procs: list[subprocess.Popen] = []
    try:
        for attempt in range(2):
            where = root / f"try{attempt}"
            where.mkdir()
            try:
                started = _start_cluster(env, where, procs)
                break
            except (RuntimeError, TimeoutError):
                _stop(procs, str(where))
                procs.clear()
                if attempt == 1:
                    raise
        yield started
    finally:
        _stop(procs, str(root))
        shutil.rmtree(root, ignore_errors=True)


def _arm_tasks(dashboard: str) -> list:
    from ray.util.state import list_tasks

    return list_tasks(address=dashboard, filters=[("func_or_class_name", "=", "arm_task")], detail=True)


def _study_runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} on the server"
    parent = client.search_runs([exp.experiment_id], "tags.`synthdata.role` = 'study'")[0]
    arms = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, {r.info.run_name: r for r in arms}


def test_job_submitted_to_a_two_node_cluster_logs_to_an_mlflow_server(cluster, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    T = 1
    work = tmp_path / "project"
    work.mkdir()
    # The generator is the example plug-in (installed where each node's workers run): plug-in code on a cluster.
    vae = {"name": "vae", "params": {"latent": 8, "hidden": 64, "train_steps": 100}}
    (work / "study.yaml").write_text(yaml.safe_dump(tiny_study(name="on_cluster", generator=vae, loop={"generations": T},
                                                               metrics=["detectability"])))
    jobs = JobSubmissionClient(cluster["dashboard"])
    job = jobs.submit_job(entrypoint="synthdata run study.yaml --no-progress",
                          runtime_env={"working_dir": str(work), "env_vars": {"MLFLOW_TRACKING_URI": cluster["tracking"]}})
    deadline = time.monotonic() + 300
    while (status := jobs.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, "job still running after 300s"
        time.sleep(1)
    logs = jobs.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "study 'on_cluster': 4 rows" in logs and "replace/seed0" in logs  # the final table, in the job's log

    # The two arms ran at once, one on each node.
    tasks = _arm_tasks(cluster["dashboard"])
    assert len(tasks) == 2 and all(t.state == "FINISHED" for t in tasks)
    assert len({t.node_id for t in tasks}) == 2

    # Every arm's metrics, at every generation, are on the tracking server; artifacts went through its proxy.
    client = MlflowClient(cluster["tracking"])
    parent, arms = _study_runs(client, "on_cluster")
    assert parent.info.status == "FINISHED" and set(arms) == {"replace/seed0", "augment/seed0"}
    for name, run in arms.items():
        assert run.info.status == "FINISHED" and run.data.params["group"] == name.split("/")[0]
        for metric in ("detectability", "detectability_ci_high", "detectability_jsd_lower_bound"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, metric)) == list(range(T + 1)), (name, metric)
        assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")][-1] == f"samples/generation_{T:03d}.png"
    assert (cluster["root"] / "artifacts").is_dir()

    # The report is built from the server alone.
    from synthdata.report import build_report

    page = build_report(cluster["tracking"], tmp_path / "report", experiment="on_cluster")
    assert "augment/seed0" in page.read_text() and len(list((tmp_path / "report" / "samples").glob("*.png"))) == 2
