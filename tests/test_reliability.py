"""Faults, for real: a Ray worker killed mid-arm, a diverging generator, many writers to one SQLite store,
and the same study run twice."""
from __future__ import annotations

import threading

import pytest
from helpers import kill_a_worker_when, tiny_study
from mlflow.tracking import MlflowClient

from loops.study import run_study
from synthdata.spec import parse_spec

pytestmark = pytest.mark.slow

TINY_DIFFUSION = {"name": "diffusion", "channels": [16, 32], "train_steps": 120, "batch_size": 64, "warmup_steps": 5,
                  "sampling_steps": 4}


def _arms(uri: str, experiment: str) -> tuple[MlflowClient, dict]:
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], "tags.`synthdata.role` = 'arm'") if exp else []
    return c, {r.info.run_name: r for r in runs}


def _steps(c: MlflowClient, run, metric: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run.info.run_id, metric))


def test_killed_worker_is_retried_from_its_last_finished_generation(local_ray, tracking_uri):
    T = 1
    spec = parse_spec(tiny_study(generator={**TINY_DIFFUSION, "train_steps": 40}, loop={"generations": T, "samples_per_generation": 200},
                                 metrics=["detectability"], detector={"epochs": 2}))
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", run_study(spec, tracking_uri=tracking_uri, show_progress=False)))
    thread.start()

    def generation_one_under_way() -> bool:  # in the two arms' shared task
        done = {name: int(r.data.metrics.get("generation_done", -1)) for name, r in _arms(tracking_uri, "tiny")[1].items()}
        return len(done) == 2 and min(done.values()) >= 0

    killed = kill_a_worker_when(generation_one_under_way, "ray::arm_task", thread.is_alive, poll=0.2)  # a loop arm task
    assert killed is not None, "no arm worker to kill"
    thread.join(timeout=400)
    result = out["result"]
    assert not result.failed, result.failed

    c, arms = _arms(tracking_uri, "tiny")
    # Killing the shared task restarts both arms, each alone (an arm's own task: that arm only).
    retried = {name for name, r in arms.items() if r.data.tags.get("synthdata.retries") == "1"}
    assert retried, {n: r.data.tags for n, r in arms.items()}
    for name in retried:
        reason = arms[name].data.tags["synthdata.last_retry_reason"]
        assert reason.startswith("WorkerCrashedError: The worker died"), reason
    for name, run in arms.items():
        assert run.info.status == "FINISHED"
        for metric in ("generation_done", "detectability", "detectability_auc"):
            assert _steps(c, run, metric) == list(range(T + 1)), (name, metric)
    assert len(result.table) == 2 * (T + 1)


def test_a_diverging_generator_fails_its_arm_with_the_reason(local_ray, tracking_uri):
    # Sampling at temperature 10 multiplies the variance ~10x per replace generation: from
    # std 1e15 the samples overflow float32 after ~50 generations. Temperature 1 stays put.
    study = {
        "name": "tiny", "data": {"source": "gaussian", "toy": {"std": 1e15}}, "generator": {"name": "gaussian"},
        "metrics": ["toy"], "loop": {"types": ["replace"], "generations": 80, "sweep": {"generator.temperature": [1, 10]}},
    }
    result = run_study(parse_spec(study), tracking_uri=tracking_uri, show_progress=False)
    assert set(result.failed) == {"replace/temperature=10/seed0"}
    c, arms = _arms(tracking_uri, "tiny")
    bad, good = arms["replace/temperature=10/seed0"], arms["replace/temperature=1/seed0"]
    assert bad.info.status == "FAILED"
    reason = bad.data.tags["synthdata.failure"]
    assert reason.startswith("FloatingPointError: generator diverged at generation ") and "not finite" in reason
    diverged_at = int(reason.split("generation ")[1].split(":")[0])
    assert 30 < diverged_at < 80
    # Every generation before the divergence is logged, once.
    assert _steps(c, bad, "generation_done") == list(range(diverged_at))
    assert good.info.status == "FINISHED" and _steps(c, good, "generation_done") == list(range(81))
    parent = c.get_run(c.get_run(good.info.run_id).data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"


def test_a_collapsed_variance_is_a_finding_its_arm_finished_and_resume_leaves_it(local_ray, tracking_uri, capsys):
    # ridge 0 and temperature 0.01: replace's variance shrinks 100-fold per generation, reaches 0 in float32 around
    # generation 10 and its fit becomes singular (a Cholesky error before); augment keeps the real data and runs on.
    # A real error still fails an arm (above).
    study = {
        "name": "tiny", "data": {"source": "gaussian", "toy": {"dim": 1, "train": 20, "heldout": 2, "test": 2}},
        "generator": {"name": "gaussian", "ridge": 0.0, "temperature": 0.01}, "metrics": ["toy"],
        "loop": {"types": ["replace", "augment"], "generations": 30, "samples_per_generation": 20},
    }
    spec = parse_spec(study)
    result = run_study(spec, tracking_uri=tracking_uri, show_progress=False)
    assert not result.failed, result.failed
    err = capsys.readouterr().err
    c, arms = _arms(tracking_uri, "tiny")
    collapsed, kept = arms["replace/seed0"], arms["augment/seed0"]
    g = int(collapsed.data.metrics["collapsed_at_generation"])
    assert 5 <= g <= 20, g
    assert f"replace/seed0: collapsed at generation {g}: the fitted covariance of class 0 is singular" in err
    assert f"its last finite metrics are generation {g - 1}'s (fitted_variance=" in err and "the arm ends FINISHED" in err
    parent = c.get_run(collapsed.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and collapsed.info.status == "FINISHED" and kept.info.status == "FINISHED"
    assert collapsed.data.tags["synthdata.collapsed"].startswith(f"collapsed at generation {g}: ")
    assert _steps(c, collapsed, "generation_done") == list(range(g)) and _steps(c, kept, "generation_done") == list(range(31))
    assert f"its last finite metrics are generation {g - 1}'s (fitted_variance=" in collapsed.data.tags["synthdata.collapsed"]
    text = c.download_artifacts(parent.info.run_id, "results.txt")
    assert f"replace/seed0: collapsed at generation {g}" in open(text).read()

    # --resume leaves the collapsed arm where it ended: nothing recomputed, nothing logged twice.
    again = run_study(spec, tracking_uri=tracking_uri, show_progress=False, resume=True)
    assert not again.failed
    c, arms = _arms(tracking_uri, "tiny")
    assert arms["replace/seed0"].info.status == "FINISHED"
    assert _steps(c, arms["replace/seed0"], "collapsed_at_generation") == [g]
    assert _steps(c, arms["replace/seed0"], "generation_done") == list(range(g))
    assert "collapsed at generation" not in capsys.readouterr().err


def test_same_study_and_seed_give_the_same_metrics(local_ray, tmp_path):
    # Diffusion training's determinism is checked in-process (test_loop.py); here the CNN detector and
    # downstream classifier train inside Ray workers, twice.
    spec = parse_spec(tiny_study(loop={"types": ["replace"], "generations": 2}))
    tables = [
        run_study(spec, tracking_uri=f"sqlite:///{tmp_path / f'run{i}.db'}", show_progress=False).table for i in (0, 1)
    ]
    metrics = [c for c in tables[0].columns if not c.startswith("time_")]
    assert {"detectability", "downstream_accuracy", "fitted_variance"} <= set(metrics)
    assert tables[0][metrics].equals(tables[1][metrics]), (tables[0][metrics], tables[1][metrics])


def test_eight_parallel_writers_into_one_sqlite_store_lose_nothing(tmp_path):
    """8 trial processes start together on a new store (schema creation races too) and log every generation.

    The processes are forked from this one, which has MLflow imported already: the
    contention is the same as 8 Ray workers', without 8 interpreter start-ups.
    """
    import multiprocessing

    import synthdata.tracking  # noqa: F401  (imported before the fork)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    G, M = 25, 10
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(8)

    def log_trial(trial: int) -> None:
        from synthdata.tracking import StudyTracker

        start.wait()  # all at once
        tracker = StudyTracker(uri, "parallel", f"trial{trial}", {"trial": str(trial)})
        tracker.flush_every_s = 0.0  # every generation is its own write: the most contention
        tracker.start_arm("arm", {"trial": str(trial)})
        for g in range(G):
            tracker.log_generation("arm", g, {f"m{k}": trial + g + k / 100 for k in range(M)})
        tracker.end_arm("arm")
        tracker.end()

    procs = [ctx.Process(target=log_trial, args=(t,)) for t in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * 8  # no process died of "database is locked"

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("parallel")
    arms = c.search_runs([exp.experiment_id], "tags.`synthdata.role` = 'arm'")
    assert len(arms) == 8 and all(r.info.status == "FINISHED" for r in arms)
    for run in arms:
        trial = int(run.data.params["trial"])
        for k in range(M):
            history = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, f"m{k}"))
            assert history == [(g, pytest.approx(trial + g + k / 100)) for g in range(G)]
