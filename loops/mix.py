"""Run a mix study: real/synthetic training mixes as a Ray Tune sweep, each arm (a Tune trial) an MLflow child run.

spec -> real data -> one synthetic pool per seed (a generator trained once, as Ray tasks;
or a saved sample set) -> Tune trials, one per arm (mode x ratio x seed), each training
the downstream classifier and reporting downstream accuracy per epoch -> MLflow (a Tune
callback in the driver: each epoch once, through retries and resumes) -> a table and a
figure built from the MLflow runs.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loops.ray_tools import arm_placement, release, short_reason, trial_resources
from loops.stopping import signals_kept
from loops.study import Prepared, Study
from synthdata.data import ImageSet, Splits
from synthdata.errors import DataError, UserError
from synthdata.figures import mix_difference_figure, mix_figure, sample_grid
from synthdata.generators import check_generator
from synthdata.imagestore import as_tensor
from synthdata.mixing import load_pool, make_pool, mix_training_set, real_subset, synthetic_count
from synthdata.results import MIX_METRIC, differences_to_real_only, mix_table
from synthdata.results import format_mix_table as format_table  # noqa: F401  this runner's text form
from synthdata.runs import download_sample_set, mix_decisions, mix_rows, study_to_resume
from synthdata.seeds import Purpose, stream_seed
from synthdata.spec import MixStudy

RESUMABLE = True  # `synthdata run --resume` continues a stopped sweep (see prepare)


def arm_name(config: dict[str, Any]) -> str:
    """Run name of an arm, so that arms line up in the MLflow UI: `augment/r=0.5/seed0`."""
    return f"{config['mode']}/r={config['ratio']:g}/seed{config['seed']}"


def grid_arms(spec: MixStudy) -> list[dict[str, Any]]:
    """Every mode x ratio x seed of a grid search (replace only at ratios <= 1)."""
    mix = spec.mix
    return [
        {"mode": mode, "ratio": float(r), "seed": seed}
        for mode in mix.modes
        for r in mix.ratios
        if not (mode == "replace" and r > 1)
        for seed in mix.seeds
    ]


def planned_arms(spec: MixStudy) -> list[dict[str, Any]]:
    """Every arm the sweep runs, fixed before it starts: the grid, or `num_samples` random draws (mode and seed
    uniform, r ~ U(ratio_range)) from the search's own stream, so a resumed sweep plans the same arms."""
    mix = spec.mix
    if mix.search.type == "grid":
        return grid_arms(spec)
    rng = np.random.default_rng(stream_seed(0, Purpose.SEARCH))
    lo, hi = mix.search.ratio_range  # the spec refuses high > 1 when replace is swept
    return [{"mode": str(rng.choice(mix.modes)), "ratio": float(rng.uniform(lo, hi)), "seed": int(rng.choice(mix.seeds))}
            for _ in range(mix.search.num_samples)]


def pool_size(spec: MixStudy, n_train: int) -> int:
    """Synthetic images per seed: the study's `pool_size`, else what the largest ratio needs."""
    n = min(spec.mix.real_size or n_train, n_train)
    return spec.mix.pool_size or max(1, synthetic_count("augment", spec.mix.max_ratio(), n))


def _pool_task(spec: MixStudy, real: ImageSet, size: int, seed: int, storage: str) -> tuple[ImageSet, dict[str, float]]:
    from synthdata.compute import configure_worker
    from synthdata.sampling import arm_workers

    device = configure_worker(spec.resources)
    with arm_workers(spec.generator, real, spec.resources, device) as pool:  # workers_per_arm, sampling_workers
        return make_pool(spec.generator, real, size, seed=seed, device=device, guidance=spec.guidance,
                         storage=storage, in_memory_mb=spec.data.in_memory_mb, pool=pool)


def make_pools(spec: MixStudy, splits: dict[int, Splits], show_progress: bool, saved: ImageSet | None = None,
               seeds: tuple[int, ...] | None = None) -> dict[int, ImageSet]:
    """One pool per seed (of `seeds`, default all): a generator trained once on the real training set, in parallel on Ray.

    With `mix.samples`, the saved set (`saved`, if the caller has read it already) is every seed's pool. A pool too
    large to hold is written as shards (a new folder of the study's storage) and comes back as a view of them.
    """
    import ray

    from synthdata.shards import join, storage_of

    seeds = spec.mix.seeds if seeds is None else seeds
    first = splits[spec.mix.seeds[0]].train  # every seed's split has the same sizes and format
    size = pool_size(spec, len(first))
    if spec.mix.samples is not None:
        pool = saved if saved is not None else load_pool(spec.mix.samples, first)
        if len(pool) < size:
            raise DataError(f"{spec.mix.samples}: has {len(pool)} samples, the largest ratio needs {size}")
        return {seed: pool for seed in seeds}
    task = ray.remote(_pool_task)
    storage = storage_of(spec)
    refs, held = {}, []
    for seed in seeds:  # each pool's task with its workers, reserved together
        options, group = arm_placement(spec.resources)
        held.append(group)
        refs[seed] = task.options(num_cpus=spec.resources.cpus_per_arm, num_gpus=spec.resources.gpus_per_arm,
                                  **options).remote(spec, real_subset(splits[seed].train, spec.mix.real_size, seed=seed),
                                                    size, seed, join(storage, "pools", f"seed{seed}"))
    if show_progress:
        guided = f", guided at scale {spec.guidance.scale:g}" if spec.guidance.scale > 0 else ""
        print(f"training {len(refs)} generator(s), one per seed, for pools of {size} samples{guided}", file=sys.stderr, flush=True)
    pools = {}
    try:
        for seed, ref in refs.items():
            try:
                pools[seed], info = ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the generator (a plug-in's, say) raised: no arm can run without it
                raise UserError(f"generator: the pool of seed {seed} could not be made: {short_reason(err)}") from None
            if show_progress:
                print(f"  pool seed {seed}: " + " ".join(f"{k}={v:.3g}" for k, v in info.items()), file=sys.stderr, flush=True)
    finally:
        for group in held:
            release(group)
    return pools


def _arm_trial(config: dict[str, Any], spec: MixStudy, splits: dict[int, Splits], pools: dict[int, ImageSet]) -> None:
    """One arm as a Tune trial: train the downstream classifier on the mix, report real-test accuracy every epoch."""
    import torch
    from ray import tune

    from synthdata.classifiers import predict_logits, train_classifier
    from synthdata.compute import configure_worker
    from synthdata.metrics.stats import accuracy_with_ci, pack_decisions
    from synthdata.parallel import training_group

    device = configure_worker(spec.resources)
    mode, ratio, seed = config["mode"], float(config["ratio"]), int(config["seed"])
    real = real_subset(splits[seed].train, spec.mix.real_size, seed=seed)
    data = mix_training_set(real, pools[seed], mode, ratio, seed=seed)
    n_syn = synthetic_count(mode, ratio, len(real))
    test = splits[seed].test  # the seed's test set: every arm of the seed is scored on the same images

    def on_epoch(epoch: int, model: torch.nn.Module, loss: float) -> None:
        correct = predict_logits(model, test.images, device=device).argmax(1).cpu() == test.labels
        acc = accuracy_with_ci(int(correct.sum()), len(test))
        tune.report({"epoch": epoch, **acc.as_metrics(MIX_METRIC), "train_loss": loss, "n_real": len(data) - n_syn,
                     "n_synthetic": n_syn, "n_test": len(test), DECISIONS: pack_decisions(correct)})

    # The classifier's seed depends on the seed only: every ratio of a seed starts from the same weights. With
    # workers_per_arm > 1 it trains in the trial and its actors (Tune reserved their bundles with the trial); the trial
    # alone reports.
    res = spec.resources
    with training_group(res.workers_per_arm, cpus_per_worker=res.cpus_per_arm, gpus_per_worker=res.gpus_per_arm,
                        device=device):
        train_classifier(spec.downstream, data.images, data.labels, data.num_classes,
                         seed=stream_seed(seed, Purpose.DOWNSTREAM), device=device, on_epoch=on_epoch)


DECISIONS = "test_correct"  # each epoch's right/wrong per test image; the last epoch's is logged as test_correct.json
REPORTED = ("epoch", MIX_METRIC, f"{MIX_METRIC}_ci_low", f"{MIX_METRIC}_ci_high", "train_loss", "n_real", "n_synthetic", "n_test")


def _arm_logger(tracker, logged: dict[str, int]):
    """A Tune callback (in the driver) that makes each arm an MLflow child run of the study run and logs each epoch
    once, at step = epoch: a retried or resumed arm redoes its epochs (seeded alike) but logs only those not yet in."""
    from ray import tune

    class ArmLogger(tune.Callback):
        def __init__(self) -> None:
            self.retries: dict[str, int] = {}
            self.decisions: dict[str, tuple[int, str]] = {}  # arm -> (its test set's size, the last epoch's decisions)

        def on_trial_start(self, iteration, trials, trial, **info):
            c = trial.config
            tracker.start_arm(arm_name(c), {"mode": c["mode"], "ratio": str(c["ratio"]), "seed": str(c["seed"])})

        def on_trial_result(self, iteration, trials, trial, result, **info):
            name, epoch = arm_name(trial.config), int(result["epoch"])
            if epoch > logged.get(name, 0):
                tracker.log_metrics(name, {k: float(result[k]) for k in REPORTED if k in result}, step=epoch)
                logged[name] = epoch
            if DECISIONS in result:
                self.decisions[name] = (int(result["n_test"]), result[DECISIONS])

        def on_trial_recover(self, iteration, trials, trial, **info):
            name = arm_name(trial.config)
            self.retries[name] = self.retries.get(name, 0) + 1
            tracker.note_retry(name, self.retries[name], "the arm's trial failed; Tune restarted it")

        def on_trial_complete(self, iteration, trials, trial, **info):
            name = arm_name(trial.config)
            if name in self.decisions:  # the final classifier's decisions: McNemar's test pairs them across arms
                n, packed = self.decisions.pop(name)
                tracker.log_dict({"n": n, "correct": packed}, f"{DECISIONS}.json", arm=name)
            tracker.end_arm(name, "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info):
            tracker.end_arm(arm_name(trial.config), "FAILED")  # the reason is tagged once Tune returns its error

    return ArmLogger()


def _progress_callback(total: int, enabled: bool):
    """A Tune callback that draws one bar over the arms (a line per finished arm off a terminal)."""
    from ray import tune
    from tqdm.auto import tqdm

    class Bar(tune.Callback):
        def __init__(self) -> None:
            self.live = enabled and sys.stderr.isatty()
            self.bar = tqdm(total=total, desc="arms", unit="arm", file=sys.stderr) if self.live else None

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.bar is not None:
                self.bar.set_postfix_str(f"{arm_name(trial.config)} epoch {result.get('epoch')}: {result.get(MIX_METRIC, 0):.3f}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            if self.bar is not None:
                self.bar.update(1)
            elif enabled:
                print(f"{arm_name(trial.config):>24}  {MIX_METRIC}={result.get(MIX_METRIC, float('nan')):.3f}", file=sys.stderr, flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            if self.bar is not None:
                self.bar.update(1)
            print(f"{arm_name(trial.config)} FAILED", file=sys.stderr, flush=True)

        def on_experiment_end(self, trials, **info):
            if self.bar is not None:
                self.bar.close()

    return Bar()


def _tuner(study: Study, arms: list[dict[str, Any]], pools: dict[int, ImageSet], logged: dict[str, int]):
    """A Tune run of exactly `arms` (given to the basic search as its points, one trial each), retried on failure."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    spec = study.spec
    param_space = {"mode": tune.choice(list(spec.mix.modes)), "seed": tune.choice(list(spec.mix.seeds)),
                   "ratio": tune.uniform(*spec.mix.search.ratio_range)}
    trainable = tune.with_resources(tune.with_parameters(_arm_trial, spec=spec, splits=study.splits, pools=pools),
                                    trial_resources(spec.resources))
    run_name = f"{spec.name}-{study.tracker.parent_id[:8]}-{int(time.time())}"  # a resume is a new Tune run
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(points_to_evaluate=arms), num_samples=len(arms),
                                    trial_name_creator=lambda t: arm_name(t.config),
                                    trial_dirname_creator=lambda t: arm_name(t.config).replace("/", "_")),
        run_config=tune.RunConfig(name=run_name, storage_path=str((study.out_dir / "tune").resolve()), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=spec.resources.max_arm_retries),
                                  callbacks=[_arm_logger(study.tracker, logged), _progress_callback(len(arms), study.show_progress)]),
    )


@dataclass
class _Plan:
    """What a mix study knows before it schedules: a saved sample set, and on --resume what the stopped run holds."""

    saved: ImageSet | None = None
    pools: dict[int, ImageSet] = field(default_factory=dict)  # seed -> pool read back from the study run
    finished: set[str] = field(default_factory=set)  # arms whose runs were FINISHED
    logged: dict[str, int] = field(default_factory=dict)  # arm -> last epoch in MLflow


def prepare(spec: MixStudy, splits: dict[int, Splits], uri: str, resume: bool) -> Prepared:
    """Check the generator against the data; read a saved sample set now (a bad file is refused before anything is
    tracked); with --resume, find the stopped run, its finished arms, each arm's last epoch and the pools it kept."""
    first = splits[spec.mix.seeds[0]].train
    check_generator(spec.generator, first.shape)
    saved = load_pool(spec.mix.samples, first) if spec.mix.samples is not None else None
    if not resume:
        return Prepared(state=_Plan(saved))
    found = study_to_resume(spec, uri, progress_metric="epoch")
    pools = {}
    for seed in spec.mix.seeds if saved is None else ():
        try:
            pools[seed] = download_sample_set(uri, found.parent_id, f"pools/seed{seed}.safetensors")
        except Exception:  # not kept (tracking.checkpoints: false) or not made yet: that seed's pool is made again
            continue
    finished = {name for name, status in found.arm_status.items() if status == "FINISHED"}
    return Prepared(found, _Plan(saved, pools, finished, {k: v for k, v in found.done.items() if v > 0}))


def schedule(study: Study) -> None:
    """Make the pools (logged on the study run), then run the Tune sweep with every arm logged as a child run."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard files per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C stops a mix study as it stops every other kind
    spec, tracker, plan = study.spec, study.tracker, study.prepared
    missing = tuple(seed for seed in spec.mix.seeds if seed not in plan.pools)
    made = make_pools(spec, study.splits, study.show_progress, plan.saved, seeds=missing) if missing else {}
    for seed, pool in made.items():
        if spec.tracking.checkpoints and spec.mix.samples is None:  # reusable as `mix.samples`, and by --resume
            tracker.log_samples(pool, f"pools/seed{seed}.safetensors")
        if spec.tracking.sample_grid and pool.images.shape[-1] > 1:
            tracker.log_image(sample_grid(as_tensor(pool.images[:64])), f"pools/seed{seed}.png")
    for name in plan.finished:  # reopened by the resume: they stay as they were
        tracker.end_arm(name, "FINISHED")
    arms = [arm for arm in planned_arms(spec) if arm_name(arm) not in plan.finished]
    if not arms:
        return
    with signals_kept(signal.SIGINT, signal.SIGUSR1):  # Tune's handlers would outlive the sweep
        results = _tuner(study, arms, {**plan.pools, **made}, dict(plan.logged)).fit()
    for result in results:
        if result.error is not None:
            name = arm_name(result.config)
            study.failed[name] = str(result.error).strip().splitlines()[-1]
            tracker.set_tag("synthdata.failure", study.failed[name], arm=name)


def table(study: Study) -> pd.DataFrame:
    parent = study.tracker.parent_id
    return mix_table(mix_rows(study.uri, parent), mix_decisions(study.uri, parent))


def figures(study: Study, table: pd.DataFrame) -> list[Path]:
    name, out = study.spec.name, study.out_dir / "figures"
    paths = [mix_figure(table, out / f"{MIX_METRIC}_vs_ratio.png", f"{name}: augment vs replace")]
    differences = differences_to_real_only(table)
    if not differences.empty:
        paths.append(mix_difference_figure(differences, out / f"{MIX_METRIC}_vs_real_only.png", f"{name}: against real-only"))
    return paths
