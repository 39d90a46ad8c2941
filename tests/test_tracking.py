"""The tracker against a real (temporary) MLflow SQLite store."""
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from synthdata.data import load_samples, save_samples
from synthdata.figures import sample_grid
from synthdata.tracking import StudyTracker, resolve_tracking_uri


def test_resolve_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_parent_and_arm_runs_with_stepped_metrics(tracking_uri, tmp_path):
    t = StudyTracker(tracking_uri, "exp", "study", {"loop.generations": "2"})
    t.start_arm("replace/seed0", {"loop_type": "replace", "seed": "0"})
    t.start_arm("augment/seed0", {"loop_type": "augment", "seed": "0"})
    grid = sample_grid(torch.rand(16, 1, 8, 8) * 2 - 1)
    for g in range(3):
        t.log_generation("replace/seed0", g, {"detectability": 0.5 + g / 10, "nan_metric": float("nan")}, grid)
    t.end_arm("replace/seed0")
    t.end_arm("augment/seed0", "FAILED", "ValueError: boom")
    t.log_table("results.txt", "table")
    t.end("FAILED")

    c = MlflowClient(tracking_uri)
    exp = c.get_experiment_by_name("exp")
    assert exp.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())
    runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}
    assert set(runs) == {"study", "replace/seed0", "augment/seed0"}
    parent = runs["study"]
    assert parent.info.status == "FAILED" and parent.data.params["loop.generations"] == "2"
    rep = runs["replace/seed0"]
    assert rep.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert rep.data.params["loop_type"] == "replace" and rep.data.params["loop.generations"] == "2"
    history = c.get_metric_history(rep.info.run_id, "detectability")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert "nan_metric" not in rep.data.metrics  # non-finite values are not logged
    assert [a.path for a in c.list_artifacts(rep.info.run_id, "samples")] == [
        f"samples/generation_{g:03d}.png" for g in range(3)
    ]
    # The same grids as MLflow's stepped images (key "samples", step = generation): the UI's step slider shows them.
    stepped = [a.path.split("/")[-1] for a in c.list_artifacts(rep.info.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in stepped if p.startswith("samples+step+")) == [0, 1, 2]
    assert runs["augment/seed0"].info.status == "FAILED"
    assert runs["augment/seed0"].data.tags["synthdata.failure"] == "ValueError: boom"


def test_a_buffered_generation_is_written_once_it_has_waited_flush_every_s(tracking_uri):
    import time

    t = StudyTracker(tracking_uri, "exp", "study", {})
    t.flush_every_s = 0.3
    t.start_arm("replace/seed0", {})
    t.log_generation("replace/seed0", 0, {"detectability": 0.5})  # the arm's first write goes out at once
    t.log_generation("replace/seed0", 1, {"detectability": 0.9})  # right after: buffered
    c = MlflowClient(tracking_uri)
    written = lambda: [m.step for m in c.get_metric_history(t.arm_runs["replace/seed0"], "generation_done")]  # noqa: E731
    t.flush_due()
    assert written() == [0]
    time.sleep(0.35)
    t.flush_due()  # what the driver calls on every turn of its loop, busy or not
    assert sorted(written()) == [0, 1]


@pytest.mark.parametrize("levels", [17, 256, None])
def test_samples_round_trip_through_safetensors(tmp_path, levels):
    from synthdata.data import ImageSet, quantize

    images = quantize(torch.rand(20, 1, 4, 4) * 2 - 1, levels)
    samples = ImageSet(images, torch.arange(20) % 3, 3, levels)
    save_samples(samples, tmp_path / "s.safetensors")
    back = load_samples(tmp_path / "s.safetensors")
    assert torch.allclose(back.images, samples.images, atol=1e-6) and torch.equal(back.labels, samples.labels)
    assert back.levels == levels and back.num_classes == 3


def test_sample_grid_is_uint8_and_upscaled():
    grid = sample_grid(torch.rand(16, 1, 8, 8) * 2 - 1, nrow=8)
    assert grid.dtype == np.uint8 and grid.ndim == 3
    assert grid.shape[0] == 2 * 32 + 3 * 2  # two rows of 32 px with padding


def test_a_new_store_is_a_copy_of_the_kept_empty_one_and_opens_as_one_mlflow_made(tmp_path, monkeypatch):
    """The second new SQLite store opens in a fraction of the first's time (no migrations), at MLflow's schema, with
    the Default experiment where MLflow puts it for that store; with the cache off MLflow makes it as before."""
    import sqlite3
    import time

    from synthdata.tracking import mlflow_client

    monkeypatch.setenv("SYNTHDATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    made = mlflow_client(f"sqlite:///{tmp_path / 'one' / 'mlflow.db'}")  # makes the kept store, then copies it
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    copied = mlflow_client(f"sqlite:///{tmp_path / 'two' / 'mlflow.db'}")
    second = time.perf_counter() - t0
    assert second < first / 5, (first, second)
    assert len(list((tmp_path / "cache" / "mlflow-stores").glob("empty-*.db"))) == 1
    monkeypatch.setenv("SYNTHDATA_CACHE", "off")
    plain = mlflow_client(f"sqlite:///{tmp_path / 'three' / 'mlflow.db'}")  # MLflow's own migrations
    for name in ("one", "two", "three"):
        with sqlite3.connect(tmp_path / name / "mlflow.db") as con:
            version = con.execute("SELECT version_num FROM alembic_version").fetchall()
        assert version == sqlite3.connect(tmp_path / "three" / "mlflow.db").execute(
            "SELECT version_num FROM alembic_version").fetchall(), name
    for client in (made, copied, plain):
        default = client.get_experiment("0")
        assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")
        exp = client.create_experiment("x")
        run = client.create_run(exp).info.run_id
        client.log_metric(run, "m", 1.0, step=3)
        assert [(m.step, m.value) for m in client.get_metric_history(run, "m")] == [(3, 1.0)]
