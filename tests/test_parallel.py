"""Data-parallel training (`resources.workers_per_arm`): k workers take the steps one process takes.

Each worker draws the whole batch's randomness and keeps its part, and its loss is weighted by
its share, so DDP's averaged gradient is the global batch's: a diffusion fit (GroupNorm only, no
batch statistics) on 2 workers matches the fit in one process to float rounding.
"""
from __future__ import annotations

import time

import pytest
import torch

from synthdata.parallel import Share

TINY = dict(channels=(16, 32), train_steps=12, lr=2e-3, warmup_steps=3, sampling_steps=5, cond_dropout=0.2)


@pytest.mark.parametrize("n,world", [(64, 2), (63, 2), (10, 3), (7, 7)])
def test_the_parts_of_a_batch_cover_it_once_and_their_weights_make_the_global_mean(n, world):
    parts = [Share(r, world).part(n) for r in range(world)]
    assert [p.start for p in parts] == [0] + [p.stop for p in parts[:-1]] and parts[-1].stop == n  # in order, no gap
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # DDP averages the workers' gradients: sum_r w_r * mean_r / world must be the mean over the batch.
    losses = torch.arange(n, dtype=torch.float64) ** 2
    averaged = sum(Share(r, world).weight(n) * losses[p].mean() for r, p in enumerate(parts)) / world
    assert averaged.item() == pytest.approx(losses.mean().item(), rel=1e-12)
    assert Share().part(n) == slice(0, n) and Share().weight(n) == 1.0


@pytest.mark.parametrize("batch", [64, 63], ids=["even", "odd"])
def test_a_diffusion_fit_on_two_workers_takes_the_steps_one_process_takes(local_ray, batch):
    """An odd batch gives parts of 32 and 31 images: without the weights the average of the two means is not the mean."""
    from synthdata.data import load_digits_set
    from synthdata.fitting import fit_generator
    from synthdata.parallel import TrainingGroup
    from synthdata.spec import DiffusionSpec

    real = load_digits_set()
    spec = DiffusionSpec(**TINY, batch_size=batch)
    alone, info_alone = fit_generator(spec, real, seed=0)
    group = TrainingGroup(2)
    try:
        with group.active():
            shared, info_shared = fit_generator(spec, real, seed=0)
    finally:
        group.close()
    assert info_shared["generator_loss"] == pytest.approx(info_alone["generator_loss"], rel=1e-5)
    a, b = alone.state_dict(), shared.state_dict()
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-3, worst  # 12 AdamW steps of lr 2e-3: float rounding only (a wrong batch moves weights by ~1e-3)


def test_a_classifier_trained_on_two_workers_learns_what_one_learns(local_ray):
    """The small CNN has BatchNorm, whose statistics stay per worker (as in plain DDP): close, not identical."""
    from synthdata.classifiers import train_classifier
    from synthdata.data import load_digits_set
    from synthdata.parallel import TrainingGroup
    from synthdata.spec import ClassifierSpec

    real = load_digits_set()
    train, test = real.subset(torch.arange(0, 1200)), real.subset(torch.arange(1200, len(real)))
    spec = ClassifierSpec(epochs=3, batch_size=64, augment={"crop_padding": 1, "flip": False})
    calls: list[int] = []
    group = TrainingGroup(2)
    try:
        with group.active():
            shared = train_classifier(spec, train.images, train.labels, 10, seed=0, on_epoch=lambda e, m, loss: calls.append(e))
    finally:
        group.close()
    accuracy = {}
    for seed in (0, 1):
        model = train_classifier(spec, train.images, train.labels, 10, seed=seed)
        accuracy[seed] = (model(test.images).argmax(1) == test.labels).float().mean().item()
    ours = (shared(test.images).argmax(1) == test.labels).float().mean().item()
    spread = abs(accuracy[0] - accuracy[1])
    assert calls == [1, 2, 3]  # the arm's callback, once per epoch
    assert abs(ours - accuracy[0]) <= max(spread, 0.03), (ours, accuracy)


def test_a_loop_arm_with_two_workers_logs_what_one_logs(local_ray, tracking_uri, tmp_path):
    """workers_per_arm: 2 on a 2-CPU Ray: each arm and one actor hold a placement group of 2 CPUs, train the
    diffusion generator, detector and downstream classifier together, and sample together. The generator's loss is
    one process's (to rounding); the metrics are the same ones, the classifiers' close (BatchNorm per worker)."""
    from ray.util import placement_group_table

    from loops.study import run_study
    from synthdata.spec import parse_spec

    def study(workers: int) -> dict:
        return {"name": f"trained_by_{workers}", "data": {"source": "digits"},
                "generator": {"name": "diffusion", **TINY, "batch_size": 64},
                "detector": {"epochs": 1}, "downstream": {"epochs": 1},
                "loop": {"types": ["replace"], "generations": 1, "samples_per_generation": 300},
                "resources": {"cpus_per_arm": 1, "workers_per_arm": workers},
                "tracking": {"checkpoints": False, "report_dir": str(tmp_path / "runs")}}

    before = set(placement_group_table())
    one, two = (run_study(parse_spec(study(k)), tracking_uri=tracking_uri, show_progress=False).table for k in (1, 2))
    made = [pg for key, pg in placement_group_table().items() if key not in before]
    assert len(made) == 1 and len(made[0]["bundles"]) == 2 and made[0]["state"] == "REMOVED", made
    assert list(one.columns) == list(two.columns) and len(one) == len(two) == 2
    last = lambda t: t[t.generation == 1].iloc[0]  # noqa: E731
    assert last(two)["generator_loss"] == pytest.approx(last(one)["generator_loss"], rel=1e-4)
    for metric in ("detectability", "downstream_accuracy"):
        assert abs(last(two)[metric] - last(one)[metric]) < 0.15, (metric, last(one)[metric], last(two)[metric])


def test_more_workers_per_arm_than_the_machine_holds_are_refused(local_ray):
    from loops.ray_tools import check_resources
    from synthdata.errors import UserError
    from synthdata.spec import ResourcesSpec

    with pytest.raises(UserError, match=r"resources.workers_per_arm: 3 workers per arm hold 3 CPUs .* has 2; set at most 2"):
        check_resources(ResourcesSpec(cpus_per_arm=1, workers_per_arm=3), local=True)
    # Sampling and training workers are the same actors: 2 and 2 hold 2 CPUs, not 3.
    check_resources(ResourcesSpec(cpus_per_arm=1, workers_per_arm=2, sampling_workers=2), local=True)
    # Training workers are as wide as the arm: 2 of 2 CPUs each hold 4.
    with pytest.raises(UserError, match=r"resources.workers_per_arm: 2 workers per arm hold 4 CPUs .* \(the arm and 1 of 2 CPU\)"):
        check_resources(ResourcesSpec(cpus_per_arm=2, workers_per_arm=2), local=True)
    # A GPU each: this machine's Ray has none.
    with pytest.raises(UserError, match=r"resources.gpus_per_arm: 1 GPUs per arm, but this machine's Ray has 0"):
        check_resources(ResourcesSpec(cpus_per_arm=1, workers_per_arm=2, gpus_per_arm=1), local=True)


def test_a_mix_trial_and_a_detect_arm_with_two_workers_measure_what_one_measures(local_ray, tracking_uri, tmp_path):
    """A mix trial (Tune reserves its actor's bundle with it) and a detect arm (a placement group of its own) train
    their classifiers on 2 workers: the same arms and metrics, the values close (BatchNorm per worker)."""
    from ray.util import placement_group_table

    from loops.study import run_study
    from synthdata.spec import parse_spec

    def studies(workers: int) -> list[dict]:
        res = {"cpus_per_arm": 1, "workers_per_arm": workers}
        tracking = {"checkpoints": False, "report_dir": str(tmp_path / "runs")}
        mix = {"name": f"mix_by_{workers}", "kind": "mix", "data": {"limit": 400}, "resources": res, "tracking": tracking,
               "generator": {"name": "gaussian", "covariance": "diag"}, "downstream": {"epochs": 2, "batch_size": 64},
               "mix": {"modes": ["augment"], "ratios": [1.0], "seeds": [0]}}
        detect = {"name": f"detect_by_{workers}", "kind": "detect", "data": {"limit": 600}, "resources": res,
                  "tracking": tracking, "detector": {"epochs": 2, "batch_size": 64},
                  "detect": {"sources": {"gaussian": {"type": "generator", "generator": {"name": "gaussian", "covariance": "diag"}}},
                             "seeds": [0]}}
        return [mix, detect]

    before = set(placement_group_table())
    tables = {k: [run_study(parse_spec(s), tracking_uri=tracking_uri, show_progress=False).table for s in studies(k)]
              for k in (1, 2)}
    made = [pg for key, pg in placement_group_table().items() if key not in before]
    # Tune gives every trial a group: the 1-worker trial's of 1 bundle. With 2 workers, groups of 2 bundles: the
    # mix pool's task, the trial, the detect source's task and its two arms (real vs real, the source). All handed back.
    groups = [(len(pg["bundles"]), pg["state"]) for pg in made]
    assert sorted(groups) == [(1, "REMOVED")] + [(2, "REMOVED")] * 5, groups
    for one, two in zip(tables[1], tables[2]):
        assert list(one.columns) == list(two.columns) and len(one) == len(two)
    (mix1, det1), (mix2, det2) = tables[1], tables[2]
    assert abs(mix1["downstream_accuracy"].iloc[0] - mix2["downstream_accuracy"].iloc[0]) < 0.1, (mix1, mix2)
    for a, b in zip(det1["detectability"], det2["detectability"]):
        assert abs(a - b) < 0.15, (det1, det2)


@pytest.mark.slow
def test_a_training_worker_killed_mid_generation_is_replaced_and_the_generation_done_once(local_ray, tracking_uri, tmp_path):
    """The arm's actor killed (SIGKILL, as a lost node) while it trains: the arm starts a new group, does that part of
    the generation again, and logs every generation once, its generator's loss the one an undisturbed arm logs."""
    import threading

    import psutil
    from mlflow.tracking import MlflowClient

    from loops.study import run_study
    from synthdata.spec import parse_spec

    def study(name: str) -> dict:
        return {"name": name, "data": {"source": "digits"},
                "generator": {"name": "diffusion", **TINY, "train_steps": 150, "batch_size": 64},
                "detector": {"epochs": 1}, "downstream": {"epochs": 1},
                "loop": {"types": ["replace"], "generations": 1, "samples_per_generation": 300},
                "resources": {"cpus_per_arm": 1, "workers_per_arm": 2},
                "tracking": {"checkpoints": False, "report_dir": str(tmp_path / "runs")}}

    killed: list[int] = []

    def kill_the_worker_once_it_trains() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for p in psutil.process_iter(["cmdline"]):
                title = " ".join(p.info["cmdline"] or [])
                if "ArmWorker.run" in title:  # Ray names a worker's process for the call it runs
                    time.sleep(1.5)  # well inside the call
                    p.kill()
                    killed.append(p.pid)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_worker_once_it_trains, daemon=True)
    killer.start()
    hit = run_study(parse_spec(study("lost_worker")), tracking_uri=tracking_uri, show_progress=False)
    killer.join()
    calm = run_study(parse_spec(study("calm_worker")), tracking_uri=tracking_uri, show_progress=False)
    assert killed and not hit.failed
    c = MlflowClient(tracking_uri)
    (arm,) = c.search_runs([c.get_experiment_by_name("lost_worker").experiment_id], "tags.`synthdata.role` = 'arm'")
    assert arm.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(arm.info.run_id, "detectability")] == [0, 1]  # each generation once
    a, b = (t[t.generation == 1].iloc[0]["generator_loss"] for t in (hit.table, calm.table))
    assert a == pytest.approx(b, rel=1e-4)


def test_a_pool_drawn_by_a_tasks_two_workers_is_the_pool_one_process_draws(local_ray):
    """A mix pool's (and a detect source's) task with sampling_workers: 2 draws with itself and one actor: the same
    images and labels, image for image."""
    from synthdata.data import load_digits_set
    from synthdata.mixing import make_pool
    from synthdata.sampling import arm_workers
    from synthdata.spec import GaussianSpec, ResourcesSpec

    real = load_digits_set()
    spec = GaussianSpec(covariance="diag")
    alone, _ = make_pool(spec, real, 700, seed=3)
    with arm_workers(spec, real, ResourcesSpec(sampling_workers=2)) as pool:
        assert pool is not None and len(pool.actors) == 1
        shared, _ = make_pool(spec, real, 700, seed=3, pool=pool)
    assert torch.equal(shared.images, alone.images) and torch.equal(shared.labels, alone.labels)
