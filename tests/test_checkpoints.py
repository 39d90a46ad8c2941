"""Which checkpoints a loop keeps (`tracking.checkpoint_every`): every k-th generation's and always the latest, which
is what --resume starts from; an accumulate arm also keeps every generation's samples, which it trains on (issue 27)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from synthdata.data import ImageSet
from synthdata.tracking import DONE_METRIC, StudyTracker, checkpoint_dir, mlflow_client

ARMS = {"replace/seed0": False, "accumulate/seed0": True}  # arm -> whether it keeps every generation's samples


def _kept(c: MlflowClient, run_id: str) -> dict[int, set[str]]:
    """The arm's checkpoint folders, by generation, with the files in each."""
    return {int(Path(d.path).name.rsplit("_", 1)[1]): {Path(f.path).name for f in c.list_artifacts(run_id, d.path)}
            for d in c.list_artifacts(run_id, "checkpoints")}


def _done(c: MlflowClient, run_id: str) -> int:
    return int(max((m.step for m in c.get_metric_history(run_id, DONE_METRIC)), default=-1))


def _samples(g: int) -> ImageSet:
    return ImageSet(torch.full((4, 1, 2, 2), g / 10), torch.arange(4) % 2, 2)


def test_the_latest_and_every_kth_checkpoint_stay_and_each_finished_generation_has_its_own(tracking_uri):
    """Generations written as they finish (slow ones): after each, MLflow holds that generation's checkpoint (what a
    resume after a kill right then reads), the k-th ones, and nothing else; accumulate keeps all its samples."""
    t = StudyTracker(tracking_uri, "exp", "study", {})
    t.flush_every_s = 0.0
    runs = {arm: t.start_arm(arm, {}) for arm in ARMS}
    c = MlflowClient(tracking_uri)
    for g in range(1, 8):
        for arm, all_samples in ARMS.items():
            t.log_generation(arm, g, {"m": float(g)}, None, _samples(g), {"generator.safetensors": b"w%d" % g},
                             checkpoint_every=3, all_samples=all_samples)
            kept, expected = _kept(c, runs[arm]), {k for k in (3, 6) if k <= g} | {g}
            assert _done(c, runs[arm]) == g
            assert {k for k, files in kept.items() if "generator.safetensors" in files} == expected, (arm, g, kept)
            assert {k for k, files in kept.items() if "samples.safetensors" in files} == (
                set(range(1, g + 1)) if all_samples else expected), (arm, g, kept)
    t.end()
    for arm, all_samples in ARMS.items():
        kept = _kept(c, runs[arm])
        assert {k for k, f in kept.items() if f == {"generator.safetensors", "samples.safetensors"}} == {3, 6, 7}
        assert set(kept) == (set(range(1, 8)) if all_samples else {3, 6, 7})
    weights = c.download_artifacts(runs["replace/seed0"], f"{checkpoint_dir(7)}/generator.safetensors")
    assert Path(weights).read_bytes() == b"w7"


def test_a_fast_loop_uploads_its_latest_checkpoint_once_per_write_of_its_metrics(tracking_uri):
    """Generations buffered between writes (a toy loop's): the k-th ones go up, the latest one with the metrics; the
    generations in between never reach MLflow, and nothing is in before the metrics that need it."""
    t = StudyTracker(tracking_uri, "exp", "study", {})
    t.flush_every_s = 3600.0
    run = t.start_arm("replace/seed0", {})
    c = MlflowClient(tracking_uri)
    for g in range(1, 8):
        t.log_generation("replace/seed0", g, {"m": float(g)}, None, _samples(g), {"generator.safetensors": b"w"},
                         checkpoint_every=3)
    # The arm's first write went out at once (generation 1, with its checkpoint); the rest wait: only the k-th are in.
    assert _done(c, run) == 1 and set(_kept(c, run)) == {1, 3, 6}
    t.end_arm("replace/seed0")
    assert _done(c, run) == 7 and set(_kept(c, run)) == {3, 6, 7}
    assert [m.step for m in c.get_metric_history(run, "m")] == list(range(1, 8))


@pytest.mark.slow
def test_a_killed_loop_resumes_from_its_latest_checkpoint_and_keeps_only_the_kth_and_the_last(tmp_path):
    """SIGKILL a toy loop part-way (past a k-th generation), then --resume: every arm continues from the
    checkpoint of its last finished generation, every metric ends with one value per generation, and what stays is
    each k-th generation's checkpoint and the last one (plus every sample set of the accumulate arm)."""
    T, K = 15, 4
    study = {"name": "kept", "data": {"source": "gaussian"}, "metrics": ["toy"],
             "generator": {"name": "slow_generator:SlowGaussian", "params": {"seconds": 0.4}},
             "loop": {"types": ["replace", "accumulate"], "generations": T, "samples_per_generation": 100},
             "tracking": {"checkpoint_every": K, "sample_grid": False, "report_dir": str(tmp_path / "runs")}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [str(Path(sys.executable).parent / "synthdata"), "run", str(path), "--no-progress", "--tracking-uri", uri]
    tests = str(Path(__file__).parent)
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def arm_runs() -> dict[str, str]:
        try:
            c = mlflow_client(uri)
            exp = c.get_experiment_by_name("kept")
            return {r.info.run_name: r.info.run_id for r in c.search_runs([exp.experiment_id], "tags.`synthdata.role` = 'arm'")}
        except Exception:
            return {}

    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            runs = arm_runs()
            if len(runs) == 2 and min(_done(MlflowClient(uri), r) for r in runs.values()) > K:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        except ProcessLookupError:  # it ended by itself (the assertion above says how)
            pass
        proc.wait()
    c = MlflowClient(uri)
    before = {arm: _done(c, run) for arm, run in arm_runs().items()}
    assert K < min(before.values()) < T, before  # killed part-way (an arm at least), past a k-th
    for arm, run in arm_runs().items():  # what a resume reads is there: the last finished generation's checkpoint
        assert {"generator.safetensors", "samples.safetensors"} <= _kept(c, run)[before[arm]], (arm, _kept(c, run))

    # The resume, as a user would run it (in a process of its own: the plug-in is importable there and on its Ray).
    again = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    for arm, run in arm_runs().items():
        assert c.get_run(run).info.status == "FINISHED"
        for metric, first in ((DONE_METRIC, 0), ("fitted_variance", 1), ("w2_to_truth", 1)):
            steps = [m.step for m in c.get_metric_history(run, metric)]
            assert sorted(steps) == list(range(first, T + 1)), (arm, metric, steps)
        kept = _kept(c, run)
        assert {g for g, files in kept.items() if "generator.safetensors" in files} == set(range(K, T + 1, K)) | {T}, (arm, kept)
        assert set(kept) == (set(range(1, T + 1)) if arm.startswith("accumulate") else set(range(K, T + 1, K)) | {T}), (arm, kept)
