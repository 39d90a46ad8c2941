"""A tiny study through a real local Ray into a temporary MLflow store, read back with the MLflow client."""
import pytest
from mlflow.tracking import MlflowClient

from loops.runner import format_table, run_loop_study
from synthdata.spec import parse_spec

from conftest import tiny_study

pytestmark = pytest.mark.slow


def _arm_runs(uri: str, experiment: str) -> tuple[MlflowClient, dict, object]:
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("synthdata.role") == "study")
    arms = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return c, arms, parent


@pytest.mark.parametrize(
    "generator",
    [
        {"name": "gaussian", "covariance": "diag"},
        {"name": "diffusion", "channels": [16, 32], "train_steps": 40, "batch_size": 64, "warmup_steps": 5, "sampling_steps": 4},
    ],
    ids=["gaussian", "diffusion"],
)
def test_tiny_study_logs_every_generation_exactly_once(local_ray, tracking_uri, generator):
    T = 2
    spec = parse_spec(tiny_study(generator=generator, loop={"generations": T, "seeds": [0]}))
    result = run_loop_study(spec, tracking_uri=tracking_uri, show_progress=False)
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
    # The printed table has a row per arm and generation, and the parent run keeps a copy.
    assert len(result.table) == 2 * (T + 1)
    text = format_table(result.table)
    assert "replace/seed0" in text and "detectability (95% CI)" in text
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"results.txt", "results.csv"}


def test_a_failing_arm_is_recorded_and_the_others_finish(local_ray, tracking_uri):
    # 5 samples per generation leave classes with < 2 images: the Gaussian refit in
    # generation 2 of `replace` fails, while `augment` keeps the real data and finishes.
    spec = parse_spec(tiny_study(loop={"generations": 2, "samples_per_generation": 10}))
    result = run_loop_study(spec, tracking_uri=tracking_uri, show_progress=False)
    assert set(result.failed) == {"replace/seed0"}
    assert "class" in result.failed["replace/seed0"]
    _, arms, parent = _arm_runs(tracking_uri, "tiny")
    assert arms["replace/seed0"].info.status == "FAILED"
    assert "needs at least 2" in arms["replace/seed0"].data.tags["synthdata.failure"]
    assert arms["augment/seed0"].info.status == "FINISHED"
    assert parent.info.status == "FAILED"  # a study with a failed arm is not claimed as finished
