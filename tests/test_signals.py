"""The driver under signals: SIGTERM (a scheduler, `timeout`) stops a study as Ctrl-C does."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml
from mlflow.tracking import MlflowClient


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
        c = MlflowClient(uri)
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
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    ray_processes = psutil.Process(proc.pid).children(recursive=True)  # the local Ray this study started
    assert ray_processes
    proc.send_signal(signal.SIGTERM)  # to the driver alone, as `timeout` or a scheduler does
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 143, err[-2000:]
    assert "*** SIGTERM received" not in err and "Traceback" not in err, err[-2000:]
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("stopped: study 'term' stopped (SIGTERM)") and f"synthdata run {path} --resume" in last
    arms, study = _runs(uri)
    assert study.info.status == "KILLED" and {r.info.status for r in arms.values()} == {"KILLED"}
    gone, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive, [p.info if hasattr(p, "info") else p.pid for p in alive]


def test_an_arm_no_node_can_hold_is_refused_before_any_run_opens(tmp_path):
    """64 CPUs (or a GPU) per arm on the Ray this command starts: exit 2, one line, nothing tracked; not a silent wait."""
    for resources, needle in (({"cpus_per_arm": 64}, "resources.cpus_per_arm: 64 CPUs per arm, but this machine's Ray has"),
                              ({"gpus_per_arm": 1}, "resources.gpus_per_arm: 1 GPUs per arm, but this machine's Ray has 0")):
        if needle.endswith("has 0"):
            import torch

            if torch.cuda.is_available():
                continue  # a machine with a GPU can hold this arm
        study = yaml.safe_load(_study(tmp_path).read_text())
        study["resources"] = resources
        path = tmp_path / "big.yaml"
        path.write_text(yaml.safe_dump(study))
        uri = f"sqlite:///{tmp_path / 'big.db'}"
        proc = subprocess.run([str(Path(sys.executable).parent / "synthdata"), "run", str(path), "--no-progress",
                               "--tracking-uri", uri], cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": ""},
                              capture_output=True, text=True, timeout=180)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: " + needle), proc.stderr[-2000:]
        assert not (tmp_path / "big.db").exists()  # no run was opened
