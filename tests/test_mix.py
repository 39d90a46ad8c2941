"""Mix studies: the training-set arithmetic, and a tiny sweep through real Ray Tune into a temporary MLflow store."""
from __future__ import annotations

import signal

import pytest
import torch
from mlflow.tracking import MlflowClient

from loops.mix import grid_arms
from loops.study import run_study
from synthdata.data import ImageSet
from synthdata.metrics.stats import unpack_decisions
from synthdata.mixing import mix_training_set, real_subset
from synthdata.report import build_report
from synthdata.results import mix_summary, mix_table
from synthdata.runs import mix_decisions, mix_rows
from synthdata.spec import parse_spec
from synthdata.tracking import mlflow_client


def _set(n: int, value: float, k: int = 2) -> ImageSet:
    return ImageSet(torch.full((n, 1, 4, 4), value), torch.arange(n) % k, k, None)


@pytest.mark.parametrize("mode, ratio, n_real, n_syn", [
    ("augment", 0.0, 100, 0), ("augment", 0.5, 100, 50), ("augment", 2.0, 100, 200),
    ("replace", 0.0, 100, 0), ("replace", 0.3, 70, 30), ("replace", 1.0, 0, 100),
])
def test_mix_sizes(mode, ratio, n_real, n_syn):
    real, pool = _set(150, -1.0), _set(300, 1.0)  # real images are -1, synthetic +1
    data = mix_training_set(real_subset(real, 100, seed=0), pool, mode, ratio, seed=0)
    synthetic = int((data.images[:, 0, 0, 0] > 0).sum())
    assert (len(data) - synthetic, synthetic) == (n_real, n_syn)


def test_mixes_of_a_seed_are_nested_and_seeds_differ():
    real = ImageSet(torch.arange(100.0).view(-1, 1, 1, 1), torch.zeros(100, dtype=torch.long), 1, None)
    pool = ImageSet(1000 + torch.arange(100.0).view(-1, 1, 1, 1), torch.zeros(100, dtype=torch.long), 1, None)
    ids = lambda mode, r, seed: set(mix_training_set(real_subset(real, 40, seed=seed), pool, mode, r, seed=seed).images.flatten().tolist())
    assert ids("augment", 0.25, 0) < ids("augment", 0.5, 0)  # more synthetic adds images, keeps the rest
    real_of = lambda s: {x for x in s if x < 1000}
    synthetic_of = lambda s: {x for x in s if x >= 1000}
    # replace swaps: a larger r keeps a subset of the real images and a superset of the synthetic ones
    assert real_of(ids("replace", 0.5, 0)) < real_of(ids("replace", 0.25, 0))
    assert synthetic_of(ids("replace", 0.25, 0)) < synthetic_of(ids("replace", 0.5, 0))
    assert ids("augment", 0.0, 0) != ids("augment", 0.0, 1)  # each seed has its own N real images
    assert ids("augment", 0.0, 0) == set(real_subset(real, 40, seed=0).images.flatten().tolist())
    with pytest.raises(ValueError, match="ratio <= 1"):
        mix_training_set(real_subset(real, 40, seed=0), pool, "replace", 1.5, seed=0)
    with pytest.raises(ValueError, match="the pool has 100"):
        mix_training_set(real_subset(real, 40, seed=0), pool, "augment", 4.0, seed=0)


def test_a_step_budget_gives_every_mix_the_same_compute():
    from synthdata.classifiers import train_classifier
    from synthdata.spec import ClassifierSpec

    calls = []
    spec = ClassifierSpec(train_steps=7, batch_size=32, width=4)
    for n in (100, 300):  # 3 and 9 steps per pass
        x, y = torch.randn(n, 1, 8, 8), torch.arange(n) % 2
        seen: list[int] = []
        train_classifier(spec, x, y, 2, seed=0, on_epoch=lambda e, m, loss: seen.append(e))
        calls.append(seen)
    assert calls == [[1, 2, 3], [1]]  # 3+3+1 steps, then one partial pass of 7


def test_grid_skips_replace_above_one():
    spec = parse_spec({"name": "m", "kind": "mix", "mix": {"ratios": [0, 1, 2], "seeds": [0, 1]}})
    names = {(t["mode"], t["ratio"]) for t in grid_arms(spec)}
    assert names == {("augment", 0.0), ("augment", 1.0), ("augment", 2.0), ("replace", 0.0), ("replace", 1.0)}
    assert len(grid_arms(spec)) == 10


@pytest.mark.slow
def test_tiny_sweep_through_ray_tune_logs_every_arm(local_ray, tracking_uri, tmp_path):
    epochs = 2
    spec = parse_spec({
        "name": "mix", "kind": "mix",
        "data": {"limit": 300},
        "generator": {"name": "gaussian", "covariance": "diag"},
        "downstream": {"epochs": epochs, "batch_size": 64},
        "mix": {"modes": ["augment", "replace"], "ratios": [0.0, 1.0], "seeds": [0]},
        "tracking": {"report_dir": str(tmp_path / "runs")},
    })
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    result = run_study(spec, tracking_uri=tracking_uri, show_progress=False)
    assert not result.failed
    # Tune's fit installs SIGINT/SIGUSR1 handlers of its own; left behind, Ctrl-C (and the autoscaler watch's
    # interrupt) would no longer raise in this process: a later study, or test, could not be stopped.
    assert {s: signal.getsignal(s) for s in handlers} == handlers

    c = MlflowClient(tracking_uri)
    runs = c.search_runs([c.get_experiment_by_name("mix").experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"augment/r=0/seed0", "augment/r=1/seed0", "replace/r=0/seed0", "replace/r=1/seed0"}
    for name, run in by_name.items():
        mode, r, _ = name.split("/")
        assert run.info.status == "FINISHED" and run.data.tags["synthdata.role"] == "arm"
        assert run.data.params["mode"] == mode and float(run.data.params["ratio"]) == float(r[2:]) and run.data.params["seed"] == "0"
        curve = c.get_metric_history(run.info.run_id, "downstream_accuracy")
        assert sorted(m.step for m in curve) == list(range(1, epochs + 1))  # a point per epoch
    # Arms of the same seed share the pool and the classifier's initial weights: r = 0 is the same arm in both modes.
    final = {n: r.data.metrics["downstream_accuracy"] for n, r in by_name.items()}
    assert final["augment/r=0/seed0"] == final["replace/r=0/seed0"]
    assert by_name["replace/r=1/seed0"].data.metrics["n_real"] == 0  # synthetic only, at size N

    # The summary table is what MLflow holds.
    table = mix_table(mix_rows(tracking_uri, result.parent_run_id), mix_decisions(tracking_uri, result.parent_run_id))
    assert len(result.table) == 4 and result.table.equals(table)
    # Each arm kept its final classifier's decisions on the test set: they give its accuracy, and McNemar's test pairs them.
    for _, row in table.iterrows():
        assert unpack_decisions(row["test_correct"], int(row["n_test"])).mean() == pytest.approx(row["downstream_accuracy"])
    summary = mix_summary(table).set_index(["mode", "ratio"])
    assert summary.loc[("replace", 1.0), "p (McNemar) vs real-only"] != ""
    parent = c.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["mix.ratios"] == "0.0,1.0"
    artifacts = {a.path for a in c.list_artifacts(result.parent_run_id)}
    assert {"results.txt", "results.csv", "figures", "pools"} <= artifacts
    assert {a.path for a in c.list_artifacts(result.parent_run_id, "pools")} >= {"pools/seed0.safetensors"}
    assert (tmp_path / "runs" / "mix" / "figures" / "downstream_accuracy_vs_ratio.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "mix" / "figures" / "downstream_accuracy_vs_real_only.png").stat().st_size > 10_000

    # The report of a mix: the summary per mode and ratio, the accuracy figure and the pool's grid, from MLflow.
    page = build_report(tracking_uri, tmp_path / "report", experiment="mix")
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3 and "replace/r=1/seed0" in text
    assert (tmp_path / "report" / "downstream_accuracy_vs_ratio.png").stat().st_size > 10_000


# The example plug-in (an installed package, `make install`): retries and --resume of a mix are tested on a plug-in's pools.
VAE = {"name": "vae", "params": {"latent": 8, "hidden": 64, "train_steps": 100}}


def _mix_spec(tmp_path, epochs: int, **extra) -> dict:
    """A mix whose arms take a few seconds each: the VAE plug-in (an MLP), a classifier of many short epochs."""
    return {"name": "mixr", "kind": "mix", "data": {"limit": 300}, "generator": VAE,
            "downstream": {"epochs": epochs, "batch_size": 32, "width": 8},
            "mix": {"modes": ["augment"], "ratios": [0.0, 1.0, 2.0], "seeds": [0]},
            "tracking": {"report_dir": str(tmp_path / "runs")}, **extra}


def _epochs_logged(c: MlflowClient, parent_id: str) -> dict[str, list[int]]:
    exp = c.get_run(parent_id).info.experiment_id
    runs = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.info.run_name: sorted(m.step for m in c.get_metric_history(r.info.run_id, "downstream_accuracy")) for r in runs}


@pytest.mark.slow
def test_a_killed_mix_worker_is_retried_without_logging_an_epoch_twice(local_ray, tracking_uri, tmp_path):
    import threading

    from helpers import kill_a_worker_when

    epochs = 20  # long enough that the kill lands mid-arm (seconds of epochs), short enough to redo
    spec = parse_spec(_mix_spec(tmp_path, epochs))
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", run_study(spec, tracking_uri=tracking_uri, show_progress=False)))
    thread.start()
    def arm_under_way() -> bool:
        c = MlflowClient(tracking_uri)
        exp = c.get_experiment_by_name("mixr")
        runs = c.search_runs([exp.experiment_id], "tags.`synthdata.role` = 'arm'") if exp else []
        return any(r.data.metrics.get("epoch", 0) >= 3 and r.info.status == "RUNNING" for r in runs)

    killed = kill_a_worker_when(arm_under_way, "ray::ImplicitFunc.train", thread.is_alive)  # Tune trials run as this method
    assert killed is not None, "no arm worker to kill"
    thread.join(timeout=400)
    result = out["result"]
    assert not result.failed, result.failed
    c = MlflowClient(tracking_uri)
    assert all(steps == list(range(1, epochs + 1)) for steps in _epochs_logged(c, result.parent_run_id).values())
    exp = c.get_run(result.parent_run_id).info.experiment_id
    arms = c.search_runs([exp], "tags.`synthdata.role` = 'arm'")
    assert sum(int(r.data.tags.get("synthdata.retries", 0)) for r in arms) == 1
    assert all(r.info.status == "FINISHED" for r in arms)


@pytest.mark.slow
def test_a_sigkilled_mix_study_resumes_with_every_epoch_once(local_ray, tmp_path, monkeypatch, capsys):
    """Kill the driver (and its local Ray) mid-sweep; --resume keeps the finished arms, reads the pools back from
    the study run and reruns the others, logging only the epochs MLflow does not hold yet."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    from synthdata.cli import main

    epochs = 20  # long enough that the kill lands mid-arm (seconds of epochs), short enough to redo
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(_mix_spec(tmp_path, epochs, resources={"cpus_per_arm": 1})))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [str(Path(sys.executable).parent / "synthdata"), "run", str(path), "--no-progress", "--tracking-uri", uri]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before: dict = {}
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            c = mlflow_client(uri)  # a new store is opened under the driver's lock, never raced
            exp = c.get_experiment_by_name("mixr")
            runs = c.search_runs([exp.experiment_id], "tags.`synthdata.role` = 'arm'") if exp else []
        except Exception:
            runs = []
        before = {r.info.run_name: (r.info.status, int(r.data.metrics.get("epoch", 0))) for r in runs}
        if any(s == "FINISHED" for s, _ in before.values()) and any(s == "RUNNING" and e >= 2 for s, e in before.values()):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()

    monkeypatch.chdir(tmp_path)
    code = main([*cmd[1:], "--resume"])
    assert code == 0, capsys.readouterr().err[-2000:]
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("mixr").experiment_id
    studies = c.search_runs([exp], "tags.`synthdata.role` = 'study'")
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    logged = _epochs_logged(c, studies[0].info.run_id)
    assert set(logged) == {"augment/r=0/seed0", "augment/r=1/seed0", "augment/r=2/seed0"}
    assert all(steps == list(range(1, epochs + 1)) for steps in logged.values()), logged
    assert all(r.info.status == "FINISHED" for r in c.search_runs([exp], "tags.`synthdata.role` = 'arm'"))
    pools = [a.path for a in c.list_artifacts(studies[0].info.run_id, "pools") if a.path.endswith(".safetensors")]
    assert pools == ["pools/seed0.safetensors"]  # read back, not made (and logged) again
