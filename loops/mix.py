"""Run a mix study: real/synthetic training mixes as a Ray Tune sweep, each trial an MLflow child run.

study file -> spec -> real data -> one synthetic pool per seed (a generator trained once,
as Ray tasks; or a saved sample set) -> Tune trials (mode x ratio x seed), each training
the downstream classifier and reporting test accuracy per epoch -> MLflow (Tune's
MLflowLoggerCallback, in the driver) -> a table and a figure built from the MLflow runs.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from loops.runner import StudyResult, init_ray
from synthdata.data import ImageSet, Splits, make_splits
from synthdata.errors import DataError
from synthdata.generators import check_generator
from synthdata.mixing import load_pool, make_pool, mix_training_set, real_subset, synthetic_count
from synthdata.spec import StudySpec, flat_params, spec_hash
from synthdata.figures import mix_figure
from synthdata.results import MIX_METRIC, format_mix_table, mix_table_from_mlflow
from synthdata.tracking import StudyTracker, resolve_tracking_uri, sample_grid, save_samples


def trial_name(config: dict[str, Any]) -> str:
    """Run name of a trial, so that trials line up in the MLflow UI: `augment/r=0.5/seed0`."""
    return f"{config['mode']}/r={config['ratio']:g}/seed{config['seed']}"


def grid_trials(spec: StudySpec) -> list[dict[str, Any]]:
    """Every mode x ratio x seed of a grid search (replace only at ratios <= 1)."""
    mix = spec.mix
    return [
        {"mode": mode, "ratio": float(r), "seed": seed}
        for mode in mix.modes
        for r in mix.ratios
        if not (mode == "replace" and r > 1)
        for seed in mix.seeds
    ]


def pool_size(spec: StudySpec, n_train: int) -> int:
    """Synthetic images per seed: the study's `pool_size`, else what the largest ratio needs."""
    n = min(spec.mix.real_size or n_train, n_train)
    return spec.mix.pool_size or max(1, synthetic_count("augment", spec.mix.max_ratio(), n))


def _pool_task(spec: StudySpec, real: ImageSet, size: int, seed: int) -> tuple[ImageSet, dict[str, float]]:
    from synthdata.compute import configure_worker

    return make_pool(spec.generator, real, size, seed=seed, device=configure_worker(spec.resources), guidance=spec.guidance)


def make_pools(spec: StudySpec, splits: Splits, show_progress: bool, saved: ImageSet | None = None) -> dict[int, ImageSet]:
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


def _trial(config: dict[str, Any], spec: StudySpec, splits: Splits, pools: dict[int, ImageSet]) -> None:
    """One Tune trial: train the downstream classifier on the mix, report real-test accuracy every epoch."""
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
        tune.report({"epoch": epoch, MIX_METRIC: acc.value, f"{MIX_METRIC}_ci_low": acc.ci_low, f"{MIX_METRIC}_ci_high": acc.ci_high,
                     "train_loss": loss, "n_real": len(data) - n_syn, "n_synthetic": n_syn})

    # The classifier's seed depends on the seed only: every ratio of a seed starts from the same weights.
    train_classifier(spec.downstream, data.images, data.labels, data.num_classes, seed=seed * 1_000_003 + 2,
                     device=device, on_epoch=on_epoch)


def _progress_callback(total: int, enabled: bool):
    """A Tune callback that draws one bar over the trials (a line per finished trial off a terminal)."""
    from ray import tune
    from tqdm.auto import tqdm

    class Bar(tune.Callback):
        def __init__(self) -> None:
            self.live = enabled and sys.stderr.isatty()
            self.bar = tqdm(total=total, desc="trials", unit="trial", file=sys.stderr) if self.live else None

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.bar is not None:
                self.bar.set_postfix_str(f"{trial_name(trial.config)} epoch {result.get('epoch')}: {result.get(MIX_METRIC, 0):.3f}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            if self.bar is not None:
                self.bar.update(1)
            elif enabled:
                print(f"{trial_name(trial.config):>24}  {MIX_METRIC}={result.get(MIX_METRIC, float('nan')):.3f}", file=sys.stderr, flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            if self.bar is not None:
                self.bar.update(1)
            print(f"{trial_name(trial.config)} FAILED", file=sys.stderr, flush=True)

        def on_experiment_end(self, trials, **info):
            if self.bar is not None:
                self.bar.close()

    return Bar()


def _tuner(spec: StudySpec, splits: Splits, pools: dict[int, ImageSet], uri: str, parent_id: str, storage: Path, show_progress: bool):
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.basic_variant import BasicVariantGenerator

    mix = spec.mix
    if mix.search.type == "grid":
        points = grid_trials(spec)
        # Tune's grid_search is a full product; the grid here skips replace at r > 1, so its
        # points are given to the basic search as the trials to run, one each.
        param_space = {"mode": tune.choice(list(mix.modes)), "ratio": tune.choice(list(mix.ratios)), "seed": tune.choice(list(mix.seeds))}
        search, num_samples = BasicVariantGenerator(points_to_evaluate=points), len(points)
    else:
        lo, hi = mix.search.ratio_range  # the spec refuses high > 1 when replace is swept
        param_space = {"mode": tune.choice(list(mix.modes)), "seed": tune.choice(list(mix.seeds)), "ratio": tune.uniform(lo, hi)}
        search, num_samples = BasicVariantGenerator(random_state=0), mix.search.num_samples
    trainable = tune.with_resources(
        tune.with_parameters(_trial, spec=spec, splits=splits, pools=pools),
        {"cpu": spec.resources.cpus_per_arm, "gpu": spec.resources.gpus_per_arm},
    )
    mlflow_cb = MLflowLoggerCallback(
        tracking_uri=uri,
        experiment_name=spec.experiment_name,
        tags={"mlflow.parentRunId": parent_id, "synthdata.study": spec.name, "synthdata.role": "trial"},
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search, num_samples=num_samples, trial_name_creator=lambda t: trial_name(t.config),
                                    trial_dirname_creator=lambda t: trial_name(t.config).replace("/", "_")),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(storage), verbose=0,
                                  callbacks=[mlflow_cb, _progress_callback(num_samples, show_progress)]),
    )


def run_mix_study(
    spec: StudySpec, *, address: str | None = None, tracking_uri: str | None = None, show_progress: bool = True
) -> StudyResult:
    """Make the pools, run the Tune sweep with every trial logged as a child run, and summarize from MLflow."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard files per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    start = time.perf_counter()
    splits = make_splits(spec.data, seed=0)  # data errors surface here, before Ray or MLflow
    check_generator(spec.generator, splits.train.shape)
    # A bad sample file is refused before anything is tracked.
    saved = load_pool(spec.mix.samples, splits.train) if spec.mix.samples is not None else None
    uri = resolve_tracking_uri(tracking_uri or spec.tracking.uri)
    init_ray(address or spec.resources.address)
    tracker = StudyTracker(uri, spec.experiment_name, spec.name, flat_params(spec),
                           tags={"synthdata.kind": spec.kind, "synthdata.spec_hash": spec_hash(spec)})
    out_dir = Path(spec.tracking.report_dir) / spec.name
    status, failed = "FAILED", {}
    table = pd.DataFrame()
    figures: list[Path] = []
    try:
        pools = make_pools(spec, splits, show_progress, saved)
        for seed, pool in pools.items():
            if spec.tracking.checkpoints:  # reusable as `mix.samples` by later studies
                with tempfile.TemporaryDirectory() as tmp:
                    save_samples(pool, Path(tmp) / f"seed{seed}.safetensors")
                    tracker.client.log_artifact(tracker.parent_id, str(Path(tmp) / f"seed{seed}.safetensors"), artifact_path="pools")
            if spec.tracking.sample_grid and pool.images.shape[-1] > 1:
                tracker.client.log_image(tracker.parent_id, sample_grid(pool.images[:64]), artifact_file=f"pools/seed{seed}.png")
        storage = (out_dir / "tune").resolve()
        results = _tuner(spec, splits, pools, uri, tracker.parent_id, storage, show_progress).fit()
        for result in results:
            if result.error is not None:
                failed[trial_name(result.config)] = str(result.error).strip().splitlines()[-1]
        table = mix_table_from_mlflow(uri, tracker.parent_id)
        if not table.empty:
            tracker.save_results(out_dir, table, format_mix_table(table))
            figures = [mix_figure(table, out_dir / "figures" / f"{MIX_METRIC}_vs_ratio.png", f"{spec.name}: augment vs replace")]
            tracker.log_figures(figures)
        status = "FAILED" if failed else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
    return StudyResult(table, tracker.parent_id, failed, time.perf_counter() - start, figures)
