"""A tiny study through a real local Ray into a temporary MLflow store, read back with the MLflow client."""
import re

import numpy as np
import pytest
from browser import rendered_images
from helpers import tiny_study
from mlflow.tracking import MlflowClient

from loops.study import run_study
from synthdata.report import build_report
from synthdata.results import format_table
from synthdata.spec import parse_spec
from synthdata.tracking import mlflow_client

pytestmark = pytest.mark.slow


def _arm_runs(uri: str, experiment: str) -> tuple[MlflowClient, dict, object]:
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("synthdata.role") == "study")
    arms = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return c, arms, parent


# (The toy Gaussian generator takes the same path in tests/test_cluster.py, through a job and a tracking server.)
@pytest.mark.parametrize(
    "generator",
    [{"name": "diffusion", "channels": [16, 32], "train_steps": 20, "batch_size": 64, "warmup_steps": 5, "sampling_steps": 4}],
    ids=["diffusion"],
)
def test_tiny_study_logs_every_generation_exactly_once(local_ray, tracking_uri, generator):
    T = 2
    spec = parse_spec(tiny_study(generator=generator, loop={"generations": T, "seeds": [0]}))
    result = run_study(spec, tracking_uri=tracking_uri, show_progress=False)
    assert not result.failed

    c, arms, parent = _arm_runs(tracking_uri, "tiny")
    assert parent.info.status == "FINISHED"
    assert set(arms) == {"replace/seed0", "augment/seed0"}
    for name, run in arms.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["loop_type"] == name.split("/")[0]
        assert run.data.params["generator.name"] == generator["name"]
        for metric in ("detectability", "detectability_ci_low", "detectability_jsd_lower_bound", "downstream_accuracy"):
            steps = [m.step for m in c.get_metric_history(run.info.run_id, metric)]
            assert sorted(steps) == list(range(0, T + 1)), (name, metric, steps)  # 0 = real reference, 1..T once each
        for metric in ("time_fit_s", "train_set_size"):
            assert sorted(m.step for m in c.get_metric_history(run.info.run_id, metric)) == list(range(1, T + 1))
        pngs = [a.path for a in c.list_artifacts(run.info.run_id, "samples")]
        assert pngs == [f"samples/generation_{g:03d}.png" for g in range(T + 1)]
    # Generations 0-1 do not depend on the loop type: computed once (one fit, one timing) and logged in both arms.
    for run in arms.values():
        assert run.data.tags["synthdata.shared_generations"] == "0-1 computed once for replace/seed0, augment/seed0"
    fits = {name: {m.step: m.value for m in c.get_metric_history(run.info.run_id, "time_fit_s")} for name, run in arms.items()}
    assert fits["replace/seed0"][1] == fits["augment/seed0"][1]
    assert fits["replace/seed0"][2] != fits["augment/seed0"][2]  # generation 2 ran in each arm
    # The printed table has a row per arm and generation, and the parent run keeps a copy.
    assert len(result.table) == 2 * (T + 1)
    text = format_table(result.table)
    assert "replace/seed0" in text and "detectability (95% CI)" in text
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"results.txt", "results.csv"}


def test_a_failing_arm_is_recorded_and_the_others_finish(local_ray, tracking_uri, tmp_path):
    # 5 samples per generation leave classes with < 2 images: the Gaussian refit in
    # generation 2 of `replace` fails, while `augment` keeps the real data and finishes.
    spec = parse_spec(tiny_study(loop={"generations": 2, "samples_per_generation": 10}))
    result = run_study(spec, tracking_uri=tracking_uri, show_progress=False)
    assert set(result.failed) == {"replace/seed0"}
    assert "class" in result.failed["replace/seed0"]
    _, arms, parent = _arm_runs(tracking_uri, "tiny")
    assert arms["replace/seed0"].info.status == "FAILED"
    assert "needs at least 2" in arms["replace/seed0"].data.tags["synthdata.failure"]
    assert arms["augment/seed0"].info.status == "FINISHED"
    assert parent.info.status == "FAILED"  # a study with a failed arm is not claimed as finished
    page = build_report(tracking_uri, tmp_path / "report", run_id=parent.info.run_id)
    assert "<td class='FAILED'>FAILED</td>" in page.read_text() and "needs at least 2" in page.read_text()


def test_sweep_arms_and_figures_are_logged(local_ray, tracking_uri, tmp_path):
    spec = parse_spec(tiny_study(
        loop={"types": ["replace", "fresh"], "generations": 2, "seeds": [0, 1], "sweep": {"generator.temperature": [0.8]}},
        metrics=["detectability", "features"], features={"epochs": 2}, tracking={"report_dir": str(tmp_path / "runs")},
    ))
    result = run_study(spec, tracking_uri=tracking_uri, show_progress=False)
    assert not result.failed
    c, arms, parent = _arm_runs(tracking_uri, "tiny")
    assert set(arms) == {f"{t}/temperature=0.8/seed{s}" for t in ("replace", "fresh") for s in (0, 1)}
    run = arms["fresh/temperature=0.8/seed1"]
    assert run.data.params["generator.temperature"] == "0.8" and run.data.params["loop_type"] == "fresh"
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "fd")) == [0, 1, 2]
    ckpt = {a.path for a in c.list_artifacts(run.info.run_id, "checkpoints/generation_002")}
    assert ckpt == {"checkpoints/generation_002/samples.safetensors", "checkpoints/generation_002/generator.safetensors"}
    figures = {a.path for a in c.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/detectability.png", "figures/fd.png", "figures/coverage.png"} <= figures
    assert (tmp_path / "runs" / "tiny" / "figures" / "fd.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "tiny" / "results.csv").exists()

    # The report rebuilds tables and figures from MLflow alone, and Chromium renders every figure on its page.
    page = build_report(tracking_uri, tmp_path / "report", experiment="tiny")
    text = page.read_text()
    assert "fresh/temperature=0.8/seed1" in text and "Summary (mean over seeds [95% t interval])" in text
    assert not re.search(r"""(src|href)=["']?https?:""", text)  # self-contained: nothing fetched from elsewhere
    pngs = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert {"detectability.png", "fd.png", "coverage.png"} <= pngs
    samples = list((tmp_path / "report" / "samples").glob("*.png"))
    assert len(samples) == 2  # the last generation's grid of one arm per line (replace, fresh)
    images, rendered, shot = rendered_images(page, tmp_path)
    assert images == len(pngs) + len(samples) and rendered == images
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 20  # a page with figures on it, not a blank or error page


def test_sigkilled_study_resumes_with_every_metric_once(local_ray, tmp_path, monkeypatch, capsys):
    """Kill the driver (and its local Ray) mid-study, then --resume finishes it from the last finished generation."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    T = 3
    # A tiny diffusion model: generations of a few seconds, so the kill lands mid-study (on a fast machine too).
    generator = {"name": "diffusion", "channels": [16, 32], "train_steps": 40, "batch_size": 64, "warmup_steps": 5, "sampling_steps": 4}
    study = tiny_study(generator=generator, loop={"types": ["replace", "accumulate"], "generations": T, "samples_per_generation": 200},
                       metrics=["detectability"], detector={"epochs": 2}, description="killed, then resumed")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [str(Path(sys.executable).parent / "synthdata"), "run", str(path), "--no-progress", "--tracking-uri", uri]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def finished_generations() -> dict[str, int]:
        try:
            c = mlflow_client(uri)  # a new store is opened under the driver's lock, never raced
            exp = c.get_experiment_by_name("tiny")
            runs = c.search_runs([exp.experiment_id], "tags.`synthdata.role` = 'arm'") if exp else []
        except Exception:
            return {}
        return {r.info.run_name: int(r.data.metrics.get("generation_done", -1)) for r in runs}

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = finished_generations()
        if len(done) == 2 and min(done.values()) >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    before = finished_generations()
    # Killed mid-study: every arm past its shared first generations, at least one not finished.
    assert min(before.values()) >= 1 and min(before.values()) < T, before

    # The resume runs in this process (on the session's Ray): what it needs is all in MLflow.
    from synthdata.cli import main

    monkeypatch.chdir(tmp_path)
    code = main([*cmd[1:], "--resume"])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    c, arms, parent = _arm_runs(uri, "tiny")
    assert parent.info.status == "FINISHED"
    assert len(c.search_runs([c.get_experiment_by_name("tiny").experiment_id], "tags.`synthdata.role` = 'study'")) == 1
    for name, run in arms.items():
        assert run.info.status == "FINISHED"
        for metric in ("detectability", "detectability_auc", "generation_done"):
            steps = [m.step for m in c.get_metric_history(run.info.run_id, metric)]
            assert sorted(steps) == list(range(T + 1)), (name, metric, steps)
    # The command ends with the whole study's table (generations from before the kill included) and its figures.
    assert f"study 'tiny': {2 * (T + 1)} rows" in out
    assert "accumulate/seed0" in out and "detectability (95% CI)" in out
    assert (tmp_path / "runs" / "tiny" / "figures" / "detectability.png").stat().st_size > 10_000
    # Provenance on every run: the study file, the user, the code version; the description as the study run's note;
    # the validated study file on the study run, runnable again as it is (same fingerprint).
    for run in (parent, *arms.values()):
        tags = run.data.tags
        assert tags["mlflow.source.name"] == str(path.resolve()) and tags["mlflow.user"] and tags["synthdata.version"]
        assert len(tags["mlflow.source.git.commit"]) == 40  # the tests run in a git checkout
    assert parent.data.tags["mlflow.note.content"] == "killed, then resumed"
    from synthdata.spec import load_spec, spec_hash

    kept = Path(c.download_artifacts(parent.info.run_id, "study.yaml", str(tmp_path)))
    assert spec_hash(load_spec(kept)) == parent.data.tags["synthdata.spec_hash"] == spec_hash(load_spec(path))
