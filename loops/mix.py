"""Run a mix study: real/synthetic training mixes as a Ray Tune sweep, each arm (a Tune trial) an MLflow child run.

spec -> real data -> one synthetic pool per seed (a generator trained once, as Ray tasks;
or a saved sample set) -> Tune trials, one per arm (mode x ratio x seed), each training
the downstream classifier and reporting downstream accuracy per epoch -> MLflow (Tune's
MLflowLoggerCallback, in the driver) -> a table and a figure built from the MLflow runs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from loops.study import Prepared, Study
from synthdata.data import ImageSet, Splits
from synthdata.errors import DataError
from synthdata.figures import mix_figure, sample_grid
from synthdata.generators import check_generator
from synthdata.mixing import load_pool, make_pool, mix_training_set, real_subset, synthetic_count
from synthdata.results import MIX_METRIC, mix_table
from synthdata.results import format_mix_table as format_table  # noqa: F401  this runner's text form
from synthdata.runs import mix_rows
from synthdata.seeds import Purpose, stream_seed
from synthdata.spec import MixStudy


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


def pool_size(spec: MixStudy, n_train: int) -> int:
    """Synthetic images per seed: the study's `pool_size`, else what the largest ratio needs."""
    n = min(spec.mix.real_size or n_train, n_train)
    return spec.mix.pool_size or max(1, synthetic_count("augment", spec.mix.max_ratio(), n))


def _pool_task(spec: MixStudy, real: ImageSet, size: int, seed: int) -> tuple[ImageSet, dict[str, float]]:
    from synthdata.compute import configure_worker

    return make_pool(spec.generator, real, size, seed=seed, device=configure_worker(spec.resources), guidance=spec.guidance)


def make_pools(spec: MixStudy, splits: Splits, show_progress: bool, saved: ImageSet | None = None) -> dict[int, ImageSet]:
    """One pool per seed: a generator trained once on the real training set, in parallel on Ray.

    With `mix.samples`, the saved set (`saved`, if the caller has read it already) is every seed's pool.
    """
    import ray

    size = pool_size(spec, len(splits.train))
    if spec.mix.samples is not None:
        pool = saved if saved is not None else load_pool(spec.mix.samples, splits.train)
        if len(pool) < size:
            raise DataError(f"{spec.mix.samples}: has {len(pool)} samples, the largest ratio needs {size}")
        return {seed: pool for seed in spec.mix.seeds}
    task = ray.remote(_pool_task).options(num_cpus=spec.resources.cpus_per_arm, num_gpus=spec.resources.gpus_per_arm)
    refs = {seed: task.remote(spec, real_subset(splits.train, spec.mix.real_size, seed=seed), size, seed)
            for seed in spec.mix.seeds}
    if show_progress:
        guided = f", guided at scale {spec.guidance.scale:g}" if spec.guidance.scale > 0 else ""
        print(f"training {len(refs)} generator(s), one per seed, for pools of {size} samples{guided}", file=sys.stderr, flush=True)
    pools = {}
    for seed, ref in refs.items():
        pools[seed], info = ray.get(ref)
        if show_progress:
            print(f"  pool seed {seed}: " + " ".join(f"{k}={v:.3g}" for k, v in info.items()), file=sys.stderr, flush=True)
    return pools


def _arm_trial(config: dict[str, Any], spec: MixStudy, splits: Splits, pools: dict[int, ImageSet]) -> None:
    """One arm as a Tune trial: train the downstream classifier on the mix, report real-test accuracy every epoch."""
    import torch
    from ray import tune

    from synthdata.classifiers import predict_logits, train_classifier
    from synthdata.compute import configure_worker
    from synthdata.metrics.stats import accuracy_with_ci

    device = configure_worker(spec.resources)
    mode, ratio, seed = config["mode"], float(config["ratio"]), int(config["seed"])
    real = real_subset(splits.train, spec.mix.real_size, seed=seed)
    data = mix_training_set(real, pools[seed], mode, ratio, seed=seed)
    n_syn = synthetic_count(mode, ratio, len(real))
    test = splits.test

    def on_epoch(epoch: int, model: torch.nn.Module, loss: float) -> None:
        pred = predict_logits(model, test.images, device=device).argmax(1)
        acc = accuracy_with_ci(int((pred == test.labels).sum()), len(test))
        tune.report({"epoch": epoch, **acc.as_metrics(MIX_METRIC), "train_loss": loss, "n_real": len(data) - n_syn,
                     "n_synthetic": n_syn})

    # The classifier's seed depends on the seed only: every ratio of a seed starts from the same weights.
    train_classifier(spec.downstream, data.images, data.labels, data.num_classes, seed=stream_seed(seed, Purpose.DOWNSTREAM),
                     device=device, on_epoch=on_epoch)


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


def _tuner(spec: MixStudy, splits: Splits, pools: dict[int, ImageSet], uri: str, parent_id: str, storage: Path, show_progress: bool,
           run_tags: dict[str, str]):
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.basic_variant import BasicVariantGenerator

    mix = spec.mix
    if mix.search.type == "grid":
        points = grid_arms(spec)
        # Tune's grid_search is a full product; the grid here skips replace at r > 1, so its
        # points are given to the basic search as the trials to run, one each.
        param_space = {"mode": tune.choice(list(mix.modes)), "ratio": tune.choice(list(mix.ratios)), "seed": tune.choice(list(mix.seeds))}
        search, num_samples = BasicVariantGenerator(points_to_evaluate=points), len(points)
    else:
        lo, hi = mix.search.ratio_range  # the spec refuses high > 1 when replace is swept
        param_space = {"mode": tune.choice(list(mix.modes)), "seed": tune.choice(list(mix.seeds)), "ratio": tune.uniform(lo, hi)}
        search, num_samples = BasicVariantGenerator(random_state=0), mix.search.num_samples
    trainable = tune.with_resources(
        tune.with_parameters(_arm_trial, spec=spec, splits=splits, pools=pools),
        {"cpu": spec.resources.cpus_per_arm, "gpu": spec.resources.gpus_per_arm},
    )
    mlflow_cb = MLflowLoggerCallback(
        tracking_uri=uri,
        experiment_name=spec.experiment_name,
        tags={**run_tags, "mlflow.parentRunId": parent_id, "synthdata.study": spec.name, "synthdata.role": "arm"},
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search, num_samples=num_samples, trial_name_creator=lambda t: arm_name(t.config),
                                    trial_dirname_creator=lambda t: arm_name(t.config).replace("/", "_")),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(storage), verbose=0,
                                  callbacks=[mlflow_cb, _progress_callback(num_samples, show_progress)]),
    )


def prepare(spec: MixStudy, splits: Splits, uri: str, resume: bool) -> Prepared:
    """Check the generator against the data; read a saved sample set now, so a bad file is refused before anything is tracked."""
    check_generator(spec.generator, splits.train.shape)
    return Prepared(state=load_pool(spec.mix.samples, splits.train) if spec.mix.samples is not None else None)


def schedule(study: Study) -> None:
    """Make the pools (logged on the study run), then run the Tune sweep with every arm logged as a child run."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard files per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    spec, tracker = study.spec, study.tracker
    pools = make_pools(spec, study.splits, study.show_progress, study.prepared)
    for seed, pool in pools.items():
        if spec.tracking.checkpoints:  # reusable as `mix.samples` by later studies
            tracker.log_samples(pool, f"pools/seed{seed}.safetensors")
        if spec.tracking.sample_grid and pool.images.shape[-1] > 1:
            tracker.log_image(sample_grid(pool.images[:64]), f"pools/seed{seed}.png")
    storage = (study.out_dir / "tune").resolve()
    results = _tuner(spec, study.splits, pools, study.uri, tracker.parent_id, storage, study.show_progress, tracker.run_tags).fit()
    for result in results:
        if result.error is not None:
            study.failed[arm_name(result.config)] = str(result.error).strip().splitlines()[-1]


def table(study: Study) -> pd.DataFrame:
    return mix_table(mix_rows(study.uri, study.tracker.parent_id))


def figures(study: Study, table: pd.DataFrame) -> list[Path]:
    name = study.spec.name
    return [mix_figure(table, study.out_dir / "figures" / f"{MIX_METRIC}_vs_ratio.png", f"{name}: augment vs replace")]
