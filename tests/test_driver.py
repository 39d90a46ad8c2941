"""The driver under signals and impossible requests: SIGTERM (a scheduler, `timeout`) stops a study as Ctrl-C
does; an arm no node can hold is refused (a local Ray) or fails the study once the autoscaler calls it infeasible."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from synthdata.tracking import mlflow_client


def _study(tmp_path: Path) -> Path:
    """A toy loop long enough to be stopped mid-way (thousands of millisecond generations)."""
    study = {
        "name": "term", "data": {"source": "gaussian", "toy": {"dim": 1, "train": 20, "heldout": 50, "test": 50}},
        "generator": {"name": "gaussian"}, "metrics": ["toy"],
        "loop": {"types": ["replace", "augment"], "generations": 10_000, "samples_per_generation": 20},
        "tracking": {"sample_grid": False, "checkpoints": False}, "resources": {"cpus_per_arm": 0.5},
    }
    path = tmp_path / "term.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _runs(uri: str) -> tuple[dict[str, object], object | None]:
    try:
        c = mlflow_client(uri)  # opens a new store under the driver's lock: no race on creating its tables
        exp = c.get_experiment_by_name("term")
        runs = c.search_runs([exp.experiment_id]) if exp else []
    except Exception:
        return {}, None
    arms = {r.info.run_name: r for r in runs if r.data.tags.get("synthdata.role") == "arm"}
    study = next((r for r in runs if r.data.tags.get("synthdata.role") == "study"), None)
    return arms, study


def test_sigterm_stops_the_study_with_one_line_and_leaves_no_ray_behind(tmp_path):
    path = _study(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [str(Path(sys.executable).parent / "synthdata"), "run", str(path), "--no-progress", "--tracking-uri", uri]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        arms, _ = _runs(uri)
        if arms and max(int(r.data.metrics.get("generation_done", -1)) for r in arms.values()) >= 1:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    ray_processes = psutil.Process(proc.pid).children(recursive=True)  # the local Ray this study started
    assert ray_processes
    proc.send_signal(signal.SIGTERM)  # to the driver alone, as `timeout` or a scheduler does
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # say where the driver waits (its SIGUSR1 stack dump), then end it
        proc.send_signal(signal.SIGUSR1)
        time.sleep(3)
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the driver did not stop within 120 s of SIGTERM:\n{err[-6000:]}") from None

    assert proc.returncode == 143, err[-2000:]
    assert "*** SIGTERM received" not in err and "Traceback" not in err, err[-2000:]
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("stopped: study 'term' stopped (SIGTERM)") and f"synthdata run {path} --resume" in last
    assert "its runs are marked KILLED" in last, last  # not "the tracking server is away": a SQLite store never is
    arms, study = _runs(uri)
    assert study.info.status == "KILLED" and {r.info.status for r in arms.values()} == {"KILLED"}
    gone, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive, [p.info if hasattr(p, "info") else p.pid for p in alive]


def test_an_arm_no_node_can_hold_is_refused_before_any_run_opens(tmp_path):
    """64 CPUs per arm on a local Ray: exit 2, one line, before that Ray starts, nothing tracked; not a silent wait."""
    study = yaml.safe_load(_study(tmp_path).read_text())
    study["resources"] = {"cpus_per_arm": 64}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(study))
    uri = f"sqlite:///{tmp_path / 'big.db'}"
    proc = subprocess.run([str(Path(sys.executable).parent / "synthdata"), "run", str(path), "--no-progress", "--tracking-uri", uri],
                          cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=180)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    needle = "error: resources.cpus_per_arm: 64 CPUs per arm, but this machine's Ray has"
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(needle), proc.stderr[-2000:]
    assert not (tmp_path / "big.db").exists()  # no run was opened


def test_a_gpu_per_arm_on_a_ray_without_one_is_refused(local_ray):
    import pytest
    import torch

    from loops.ray_tools import check_resources
    from synthdata.errors import UserError
    from synthdata.spec import ResourcesSpec

    if torch.cuda.is_available():
        pytest.skip("this machine's Ray has a GPU")
    with pytest.raises(UserError, match=r"resources.gpus_per_arm: 1 GPUs per arm, but this machine's Ray has 0; set 0"):
        check_resources(ResourcesSpec(gpus_per_arm=1), local=True)
    check_resources(ResourcesSpec(cpus_per_arm=2), local=True)  # what the machine has is fine


def test_a_cluster_whose_autoscaler_calls_an_arm_infeasible_fails_the_study(tmp_path):
    """A real autoscaler (Ray's fake multi-node provider: node types of 1 and 2 CPUs) reports 64 CPUs infeasible for
    every node type: the study, waiting on the cluster, fails with that reason instead of waiting forever."""
    import json
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = {
        "cluster_name": "fake", "max_workers": 1, "head_node_type": "ray.head.default", "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1, "docker": {}, "auth": {"ssh_user": "ubuntu"}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": {"ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
                                 "cpu_node": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 1}},
    }
    root = Path(f"/tmp/sdf{port}")  # short: Ray's socket paths must stay under 107 characters
    root.mkdir()
    (root / "autoscaling.json").write_text(json.dumps(config))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_ADDRESS": ""}
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--include-dashboard=false",
                             f"--temp-dir={root / 't'}", f"--autoscaling-config={root / 'autoscaling.json'}"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        study = yaml.safe_load(_study(tmp_path).read_text())
        study["resources"] = {"cpus_per_arm": 64}
        path = tmp_path / "big.yaml"
        path.write_text(yaml.safe_dump(study))
        uri = f"sqlite:///{tmp_path / 'big.db'}"
        proc = subprocess.run([str(Path(sys.executable).parent / "synthdata"), "run", str(path), "--no-progress",
                               "--tracking-uri", uri, "--address", f"127.0.0.1:{port}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert last.startswith("error: resources: no node type of the cluster can hold an arm") and "64" in last, last
        assert "Traceback" not in proc.stderr
        c = mlflow_client(uri)
        runs = c.search_runs([c.get_experiment_by_name("term").experiment_id])
        study_run = next(r for r in runs if r.data.tags.get("synthdata.role") == "study")
        assert study_run.info.status == "FAILED" and "No available node types" in study_run.data.tags["synthdata.failure"]
        assert all(r.info.status != "RUNNING" for r in runs)
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        for p in psutil.process_iter(["cmdline"]):
            if any(str(root) in arg for arg in (p.info["cmdline"] or [])):
                p.kill()


@pytest.mark.parametrize("signum,code,name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "interrupted")],
                         ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_whose_raise_was_lost_is_raised_at_the_next_wait(signum, code, name):
    """Ray turns a signal handler's exception into a plain KeyboardInterrupt, or C code swallows it: the recorded stop
    is what the runners' waiting loops raise, with the signal's exit code. Ctrl-C too: a Ctrl-C lost in Ray's C code
    once left a study waiting for its tracking server for minutes (a random-order run)."""
    from loops.stopping import STOPS, StudyStopped, check_stopped, on_stop_signals, raise_stopped

    STOPS.clear()
    check_stopped()  # nothing asked for: no stop
    before = signal.getsignal(signum)
    try:
        with on_stop_signals(raise_stopped):
            assert signal.getsignal(signum) is raise_stopped  # the study's own handler, whatever was there before
            try:
                signal.raise_signal(signum)
                time.sleep(1)
            except KeyboardInterrupt:
                pass  # lost on its way, as inside a library's callback
        assert signal.getsignal(signum) is before  # put back
        with pytest.raises(StudyStopped) as stop:
            check_stopped()
        assert stop.value.exit_code == code and str(stop.value) == name
    finally:
        STOPS.clear()


def test_the_autoscalers_infeasible_verdict_on_an_arm_is_recorded_as_a_stop():
    """The watch interrupts the main thread and records the stop: if Ray's C code swallows the interrupt, the waiting
    loops' check_stopped still ends the study (the case a CI run once hit: a study waiting past its timeout).

    The interrupt is SIGINT's handler run in the main thread: a study's own (`on_stop_signals`), as here, whatever
    handler the process had (ignored, below). Before, the raise depended on that handler, and a random-order run
    failed here with "DID NOT RAISE"."""
    from loops.ray_tools import InfeasibleWatch
    from loops.stopping import STOPS, StudyStopped, check_stopped, on_stop_signals, raise_stopped
    from synthdata.spec import ResourcesSpec

    STOPS.clear()
    watch = InfeasibleWatch(ResourcesSpec(cpus_per_arm=64))
    line = "Error: No available node types can fulfill resource request {'CPU': %s}. Add suitable node types to this cluster."
    watch({"pid": "autoscaler", "lines": [line % "4.0"]})  # another request than the arm's: not ours
    watch({"pid": 1234, "lines": [line % "64.0"]})  # a worker's line, not the autoscaler's
    assert watch.message is None and not STOPS
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what an earlier test, or a parent process, may leave
    try:
        with on_stop_signals(raise_stopped), pytest.raises(StudyStopped, match="infeasible"):
            watch({"pid": "autoscaler", "lines": [line % "64.0"]})
            time.sleep(2)  # the interrupt lands here
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert watch.message.startswith("No available node types can fulfill resource request {'CPU': 64.0}")
        with pytest.raises(StudyStopped, match="infeasible"):
            check_stopped()
    finally:
        signal.signal(signal.SIGINT, before)
        STOPS.clear()
