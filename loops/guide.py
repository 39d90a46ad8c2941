"""Run a guide study: guided against unguided sampling, across guidance scales.

spec -> real data -> per seed, a Ray task trains the diffusion generator and its guiding
classifier (real training images vs the generator's unguided samples) -> per seed and
scale, an arm: a Ray task samples from the same noise and labels at that scale and
measures the samples with fresh detectors trained after sampling (detectability,
downstream accuracy, feature metrics), and with the guiding classifier for contrast ->
MLflow child runs `scale=w/seedS` (and `real/seedS`, the real-data reference) -> a table
of the mean over seeds [95% t interval] per scale, and figures against the scale.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from loops.ray_tools import wait_arms
from loops.study import Prepared, Study
from synthdata.autophagy import StudyContext, grid_subset, measure_samples, study_context
from synthdata.compute import configure_worker
from synthdata.data import Splits
from synthdata.figures import guide_figures, sample_grid
from synthdata.fitting import fit_generator
from synthdata.generators import check_generator, create_generator, draw_samples
from synthdata.results import format_guide_table as format_table  # noqa: F401  this runner's text form
from synthdata.results import guide_table
from synthdata.seeds import Purpose, Scope, stream_seed
from synthdata.shards import join, storage_of
from synthdata.spec import GuideStudy


@dataclass(frozen=True)
class GuideArm:
    """One arm of a guide study, one measured sample set: a scale (None: the real training images themselves) and a seed."""

    scale: float | None
    seed: int

    @property
    def name(self) -> str:
        return f"real/seed{self.seed}" if self.scale is None else f"scale={self.scale:g}/seed{self.seed}"

    def params(self) -> dict[str, str]:
        group = "real data" if self.scale is None else f"scale={self.scale:g}"
        return {"scale": "real" if self.scale is None else f"{self.scale:g}", "seed": str(self.seed), "group": group}


@dataclass
class Fitted:
    """A seed's trained generator and guiding classifier, as weights (they travel between Ray workers)."""

    generator: dict[str, torch.Tensor]
    classifier: dict[str, torch.Tensor]
    info: dict[str, float]


def _fit_task(spec: GuideStudy, splits: Splits, seed: int, storage: str | None) -> Fitted:
    """Train the seed's generator on the real training set, then its guiding classifier against it (its unguided
    samples written to `storage` when they are too large to hold)."""
    device = configure_worker(spec.resources)
    guided, info = fit_generator(spec.generator, splits.train, seed=seed, device=device, guidance=spec.guidance,
                                 storage=storage, in_memory_mb=spec.data.in_memory_mb)
    classifier = {k: v.detach().cpu() for k, v in guided.classifier.state_dict().items()}
    return Fitted(guided.generator.state_dict(), classifier, info)  # the generator's state_dict is on the CPU already


def _arm_task(spec: GuideStudy, splits: Splits, context: StudyContext, arm: GuideArm, fitted: Fitted | None):
    """Sample at the arm's scale (same noise and labels at every scale of a seed) and measure the samples."""
    from synthdata.guidance import GuidedGenerator, create_guiding_classifier, guiding_verdict

    device = configure_worker(spec.resources)
    real = splits.train

    def seed_of(purpose: Purpose) -> int:  # the same metric seeds at every scale
        return stream_seed(arm.seed, purpose, scope=Scope.MEASURE)

    if arm.scale is None:  # the real-data reference: real vs real, and a classifier trained on real images
        start = time.perf_counter()
        metrics = measure_samples(spec, splits, context, real, splits.heldout.images, seed_of, device, real_reference=True)
        return {**metrics, "time_metrics_s": time.perf_counter() - start}, grid_subset(real.images, real.labels)
    generator = create_generator(spec.generator, real.shape, real.num_classes, device)
    generator.load_state_dict(fitted.generator)
    classifier = create_guiding_classifier(spec.guidance, real.shape, real.num_classes).to(device)
    classifier.load_state_dict(fitted.classifier)
    classifier.eval()
    n, n_eval = spec.guide.samples_per_scale, len(splits.heldout)
    start = time.perf_counter()
    drawn = draw_samples(GuidedGenerator(generator, classifier, arm.scale), n + n_eval, real,
                         label_seed=stream_seed(arm.seed, Purpose.LABELS), sample_seed=stream_seed(arm.seed, Purpose.SAMPLES),
                         context=f"guided sampling at scale {arm.scale:g} diverged",
                         storage=context.sample_storage(arm.name, 0), in_memory_mb=spec.data.in_memory_mb)
    metrics = {"time_sample_s": time.perf_counter() - start, **fitted.info}
    samples, held_out = drawn.subset(torch.arange(n)), drawn.subset(torch.arange(n, n + n_eval))
    start = time.perf_counter()
    metrics.update(measure_samples(spec, splits, context, samples, held_out.images, seed_of, device))
    # The guiding classifier's own verdict on held-out samples, at the sampler's last step:
    # what guidance optimised against, reported beside the fresh detector, never instead of it.
    t_last = int(generator.sampler().timesteps[-1])
    metrics["guiding_detectability"] = guiding_verdict(classifier, splits.heldout, held_out, t_last, generator.noise_scheduler,
                                                       seed=seed_of(Purpose.GUIDING_VERDICT), device=device)
    metrics["time_metrics_s"] = time.perf_counter() - start
    return metrics, grid_subset(samples.images, samples.labels)


def arms_of(spec: GuideStudy) -> list[GuideArm]:
    """The real reference and every scale, for each seed."""
    return [GuideArm(scale, seed) for seed in spec.guide.seeds for scale in (None, *spec.guide.scales)]


def prepare(spec: GuideStudy, splits: dict[int, Splits], uri: str, resume: bool) -> Prepared:
    """Check the generator against the data."""
    check_generator(spec.generator, splits[spec.guide.seeds[0]].train.shape)
    return Prepared()


def schedule(study: Study) -> None:
    """Train a generator and guiding classifier per seed, sample and measure at every scale, each an arm."""
    import ray

    spec, tracker = study.spec, study.tracker
    resources = dict(num_cpus=spec.resources.cpus_per_arm, num_gpus=spec.resources.gpus_per_arm)
    fit = ray.remote(_fit_task).options(**resources, max_retries=1)
    measure = ray.remote(_arm_task).options(**resources, max_retries=1)
    # Each seed's real split and what is measured against it (the feature space trained on it), put once.
    storage = storage_of(spec)  # sample sets too large to hold
    refs_of = {seed: (ray.put(split), ray.put(replace(study_context(spec, split, seed), storage=storage)))
               for seed, split in study.splits.items()}
    fitted = {seed: fit.remote(spec, refs_of[seed][0], seed, join(storage, f"seed{seed}_guidance")) for seed in spec.guide.seeds}
    refs = {}
    for arm in arms_of(spec):  # each scale's task waits for its seed's fit (Ray resolves the reference)
        tracker.start_arm(arm.name, arm.params())
        refs[measure.remote(spec, *refs_of[arm.seed], arm, None if arm.scale is None else fitted[arm.seed])] = arm
    study.say(f"training {len(fitted)} generator(s) and guiding classifier(s), one per seed; then sampling at scales "
              f"{', '.join(f'{s:g}' for s in spec.guide.scales)}")

    def on_result(arm: GuideArm, value: tuple) -> str:
        metrics, grid = value
        tracker.log_metrics(arm.name, metrics)
        if spec.tracking.sample_grid and grid is not None:
            tracker.log_image(sample_grid(grid[0]), "samples/grid.png", arm=arm.name)
        study.results.append((arm.name, arm.params(), metrics))
        return f"{arm.name}: detectability {metrics.get('detectability', float('nan')):.3f}"

    study.failed.update(wait_arms(refs, tracker, on_result, desc="scales", show_progress=study.show_progress))


def table(study: Study) -> pd.DataFrame:
    return guide_table(study.results)


def figures(study: Study, table: pd.DataFrame) -> list[Path]:
    return guide_figures(table, study.out_dir / "figures", title=study.spec.name)
