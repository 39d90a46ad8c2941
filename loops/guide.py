"""Run a guide study: guided against unguided sampling, across guidance scales.

study file -> spec -> real data -> per seed, a Ray task trains the diffusion generator
and its guiding classifier (real training images vs the generator's unguided samples)
-> per seed and scale, a Ray task samples from the same noise and labels at that scale
and measures the samples with fresh detectors trained after sampling (detectability,
downstream accuracy, feature metrics), and with the guiding classifier for contrast
-> MLflow child runs `scale=w/seedS` (and `real/seedS`, the real-data reference) -> a
table of mean ± sd over seeds per scale, and figures against the scale.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from loops.autophagy import StudyContext, _grid_subset, _measure
from loops.runner import StudyResult, init_ray, study_context, wait_cells
from synthdata.compute import configure_worker
from synthdata.data import Splits, make_splits
from synthdata.figures import guide_figures
from synthdata.generators import check_generator, create_generator, draw_samples
from synthdata.results import format_guide_table, guide_table
from synthdata.spec import StudySpec, flat_params, spec_hash
from synthdata.tracking import StudyTracker, resolve_tracking_uri, sample_grid


@dataclass(frozen=True)
class Cell:
    """One measured sample set: a scale (None: the real training images themselves) and a seed."""

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
    guide: dict[str, torch.Tensor]
    info: dict[str, float]


def _seed_of(seed: int, purpose: int) -> int:
    return (seed * 1_000_003 + purpose) % (2**31)


def _fit_task(spec: StudySpec, splits: Splits, seed: int) -> Fitted:
    """Train the seed's generator on the real training set, then its guiding classifier against it."""
    from synthdata.guidance import guide_generator

    device = configure_worker(spec.resources)
    real = splits.train
    generator = create_generator(spec.generator, real.shape, real.num_classes, device)
    start = time.perf_counter()
    info = {k: float(v) for k, v in generator.fit(real, seed=_seed_of(seed, 3)).items()}
    info["time_fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    guided, guide_info = guide_generator(generator, spec.guidance, real, seed=_seed_of(seed, 6), device=device)
    info.update(guide_info, time_guide_s=time.perf_counter() - start)
    guide = {k: v.detach().cpu() for k, v in guided.detector.state_dict().items()}
    return Fitted(generator.state_dict(), guide, info)  # the generator's state_dict is on the CPU already


def _cell_task(spec: StudySpec, splits: Splits, context: StudyContext, cell: Cell, fitted: Fitted | None):
    """Sample at the cell's scale (same noise and labels at every scale of a seed) and measure the samples."""
    from synthdata.guidance import GuidedGenerator, create_guide, guide_accuracy

    device = configure_worker(spec.resources)
    real = splits.train
    seed_of = lambda p: _seed_of(cell.seed, 100 + p)  # noqa: E731  the same metric seeds at every scale
    if cell.scale is None:  # the real-data reference: real vs real, and a classifier trained on real images
        start = time.perf_counter()
        metrics = _measure(spec, splits, context, real.images, real.labels, splits.heldout.images, seed_of, device,
                           real_reference_run=True)
        return {**metrics, "time_metrics_s": time.perf_counter() - start}, _grid_subset(real.images, real.labels)
    generator = create_generator(spec.generator, real.shape, real.num_classes, device)
    generator.load_state_dict(fitted.generator)
    guide = create_guide(spec.guidance, real.shape, real.num_classes).to(device)
    guide.load_state_dict(fitted.guide)
    guide.eval()
    n, n_eval = spec.guide.samples, len(splits.heldout)
    start = time.perf_counter()
    drawn = draw_samples(GuidedGenerator(generator, guide, cell.scale), n + n_eval, real,
                         label_seed=_seed_of(cell.seed, 4), sample_seed=_seed_of(cell.seed, 5),
                         context=f"guided sampling at scale {cell.scale:g} diverged")
    metrics = {"time_sample_s": time.perf_counter() - start, **fitted.info}
    samples, held_out = drawn.subset(torch.arange(n)), drawn.subset(torch.arange(n, n + n_eval))
    start = time.perf_counter()
    metrics.update(_measure(spec, splits, context, samples.images, samples.labels, held_out.images, seed_of, device))
    # The guiding classifier's own verdict on held-out samples, at the sampler's last step:
    # what guidance optimised against, reported beside the fresh detector, never instead of it.
    t_last = int(generator.sampler().timesteps[-1])
    metrics["guide_detectability"] = guide_accuracy(guide, splits.heldout, held_out, t_last, generator.noise_scheduler,
                                                    seed=seed_of(7), device=device)
    metrics["time_metrics_s"] = time.perf_counter() - start
    return metrics, _grid_subset(samples.images, samples.labels)


def cells_of(spec: StudySpec) -> list[Cell]:
    """The real reference and every scale, for each seed."""
    return [Cell(scale, seed) for seed in spec.guide.seeds for scale in (None, *spec.guide.scales)]


def run_guide_study(
    spec: StudySpec, *, address: str | None = None, tracking_uri: str | None = None, show_progress: bool = True
) -> StudyResult:
    """Train a generator and guiding classifier per seed, sample and measure at every scale, log each as a child run."""
    import ray

    start = time.perf_counter()
    splits: Splits = make_splits(spec.data, seed=0)  # data errors surface here, before Ray or MLflow
    check_generator(spec.generator, splits.train.shape)
    uri = resolve_tracking_uri(tracking_uri or spec.tracking.uri)
    init_ray(address or spec.resources.address)
    context = study_context(spec, splits)
    tracker = StudyTracker(uri, spec.experiment_name, spec.name, flat_params(spec),
                           tags={"synthdata.kind": spec.kind, "synthdata.spec_hash": spec_hash(spec)})
    resources = dict(num_cpus=spec.resources.cpus_per_arm, num_gpus=spec.resources.gpus_per_arm)
    fit = ray.remote(_fit_task).options(**resources, max_retries=1)
    measure = ray.remote(_cell_task).options(**resources, max_retries=1)
    splits_ref, context_ref = ray.put(splits), ray.put(context)
    fitted = {seed: fit.remote(spec, splits_ref, seed) for seed in spec.guide.seeds}
    cells = cells_of(spec)
    refs = {}
    for cell in cells:  # each scale's task waits for its seed's fit (Ray resolves the reference)
        tracker.start_arm(cell.name, cell.params())
        refs[measure.remote(spec, splits_ref, context_ref, cell, None if cell.scale is None else fitted[cell.seed])] = cell
    if show_progress:
        print(f"training {len(fitted)} generator(s) and guiding classifier(s), one per seed; then sampling at scales "
              f"{', '.join(f'{s:g}' for s in spec.guide.scales)}", file=sys.stderr, flush=True)
    failed: dict[str, str] = {}
    rows: list[dict] = []
    status, figures = "FAILED", []

    def on_result(cell: Cell, value: tuple) -> str:
        metrics, grid = value
        tracker.log_metrics(cell.name, metrics)
        if spec.tracking.sample_grid and grid is not None:
            tracker.client.log_image(tracker.arm_runs[cell.name], sample_grid(grid[0]), artifact_file="samples/grid.png")
        rows.append({"run": cell.name, **cell.params(), **metrics})
        return f"{cell.name}: detectability {metrics.get('detectability', float('nan')):.3f}"

    try:
        failed = wait_cells(refs, tracker, on_result, desc="scales", show_progress=show_progress)
        status = "FAILED" if failed else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        table = guide_table(rows)
        if not table.empty:
            out_dir = spec.tracking.report_dir / spec.name
            tracker.save_results(out_dir, table, format_guide_table(table))
            if status != "KILLED":
                figures = guide_figures(table, out_dir / "figures", title=spec.name)
                tracker.log_figures(figures)
        tracker.end(status)
    return StudyResult(table, tracker.parent_id, failed, time.perf_counter() - start, figures)
