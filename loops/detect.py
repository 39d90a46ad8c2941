"""Run a detect study: every analysis cell a Ray task, each cell an MLflow child run.

study file -> spec -> real data (train for detectors, held-out + test for evaluation)
-> sources (cheap ones read here; generators, checkpoints and pipelines sampled as Ray
tasks) -> cells (pair, real_vs_real, multiway, size, band, crop) as Ray tasks -> MLflow
(metrics per cell run; confusion matrix and example grids as artifacts) -> a table,
figures, and a loud warning when the real-vs-real baseline is not at chance.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from loops.runner import StudyResult, init_ray, wait_cells
from synthdata.compute import configure_worker
from synthdata.data import ImageSet, Splits, concat, make_splits
from synthdata.detection import Cell, CellResult, cells_for, run_cell
from synthdata.errors import UserError
from synthdata.figures import confusion_figure, detect_figures
from synthdata.results import detect_table, format_detect_table, real_vs_real_warning
from synthdata.sources import load_source
from synthdata.spec import StudySpec, flat_params, spec_hash
from synthdata.tracking import StudyTracker, resolve_tracking_uri, sample_grid

EXPENSIVE = ("generator", "checkpoint", "pipeline")  # sampled on Ray; the others are read in the driver


def _source_task(source, real: ImageSet, seed: int, resources) -> ImageSet:
    return load_source(source, real, seed=seed, device=configure_worker(resources))


def _cell_task(cell: Cell, spec: StudySpec, real_train: ImageSet, real_eval: ImageSet, sources: dict[str, ImageSet]) -> CellResult:
    device = configure_worker(spec.resources)
    return run_cell(cell, spec.detect, spec.detector, real_train, real_eval, sources, device=device)


def read_cheap_sources(spec: StudySpec, real: ImageSet) -> dict[str, ImageSet]:
    """Sample sets and image folders, read in the driver before Ray starts: a bad file stops the study at once."""
    return {name: load_source(source, real, seed=0) for name, source in spec.detect.sources.items() if source.type not in EXPENSIVE}


def load_sources(spec: StudySpec, real: ImageSet, read: dict[str, ImageSet], show_progress: bool) -> dict[str, ImageSet]:
    """Every source's images, in the real data's format; a bad source stops the study before anything is tracked."""
    import ray

    out = dict(read)
    task = ray.remote(_source_task).options(num_cpus=spec.resources.cpus_per_arm, num_gpus=spec.resources.gpus_per_arm,
                                            max_retries=0)
    refs = {name: task.remote(source, real, 0, spec.resources)
            for name, source in spec.detect.sources.items() if source.type in EXPENSIVE}
    for name, ref in refs.items():
        if show_progress:
            print(f"sampling source '{name}' ({spec.detect.sources[name].type})", file=sys.stderr, flush=True)
        try:
            out[name] = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, UserError):
                raise type(cause)(f"detect.sources.{name}: {cause}") from None
            raise
    for name, images in out.items():
        if len(images) < 10:
            raise UserError(f"detect.sources.{name}: {len(images)} images are too few (at least 10)")
    return {name: out[name] for name in spec.detect.sources}


def _log_cell(tracker: StudyTracker, result: CellResult) -> None:
    """The cell's metrics, and its artifacts: confusion matrix (multiway), example grids (pair)."""
    name = result.cell.name
    tracker.log_metrics(name, result.metrics)
    run_id = tracker.arm_runs[name]
    if result.confusion is not None:
        tracker.client.log_dict(run_id, {"classes": result.classes, "counts": result.confusion.tolist()}, "confusion.json")
        with tempfile.TemporaryDirectory() as tmp:
            path = confusion_figure(result.confusion, result.classes, Path(tmp) / "confusion.png", title=name)
            tracker.client.log_artifact(run_id, str(path))
    for key, images in result.examples.items():
        if len(images):
            tracker.client.log_image(run_id, sample_grid(images), artifact_file=f"examples/{key}.png")


def run_detect_study(
    spec: StudySpec, *, address: str | None = None, tracking_uri: str | None = None, show_progress: bool = True
) -> StudyResult:
    """Load the sources, run every cell on Ray, log each as a child run, and return the per-cell table."""
    import ray

    start = time.perf_counter()
    splits: Splits = make_splits(spec.data, seed=0)  # data errors surface here, before Ray or MLflow
    real_train, real_eval = splits.train, concat(splits.heldout, splits.test)  # neither eval part trains anything here
    too_big = [c for c in spec.detect.crop_sizes if c > min(real_train.shape[1:])]
    if too_big:
        raise UserError(f"detect.crop_sizes: {too_big[0]} exceeds the images' {real_train.shape[1]}x{real_train.shape[2]}")
    uri = resolve_tracking_uri(tracking_uri or spec.tracking.uri)
    read = read_cheap_sources(spec, real_train)
    init_ray(address or spec.resources.address)
    sources = load_sources(spec, real_train, read, show_progress)
    cells = cells_for(spec.detect, list(sources))
    tracker = StudyTracker(uri, spec.experiment_name, spec.name, flat_params(spec),
                           tags={"synthdata.kind": spec.kind, "synthdata.spec_hash": spec_hash(spec)})
    out_dir = Path(spec.tracking.report_dir) / spec.name
    for name, images in sources.items():
        if spec.tracking.sample_grid:
            tracker.client.log_image(tracker.parent_id, sample_grid(images.images[:64]), artifact_file=f"sources/{name}.png")
    task = ray.remote(_cell_task).options(num_cpus=spec.resources.cpus_per_arm, num_gpus=spec.resources.gpus_per_arm,
                                          max_retries=1)
    refs = {}
    args = [ray.put(x) for x in (spec, real_train, real_eval, sources)]
    for cell in cells:
        tracker.start_arm(cell.name, cell.params())
        refs[task.remote(cell, *args)] = cell
    failed: dict[str, str] = {}
    results: list[CellResult] = []
    status, figures = "FAILED", []

    def on_result(cell: Cell, result: CellResult) -> str:
        _log_cell(tracker, result)
        results.append(result)
        return f"{cell.name}: {result.metrics.get('detectability', result.metrics.get('multiway_accuracy')):.3f}"

    try:
        failed = wait_cells(refs, tracker, on_result, desc="detectors", show_progress=show_progress)
        status = "FAILED" if failed else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        table = detect_table([(r.cell.name, r.cell.params(), r.metrics) for r in results])
        if not table.empty:
            warning = real_vs_real_warning(table)
            if warning:
                print(f"\nWARNING: {warning}\n", file=sys.stderr, flush=True)
                tracker.client.set_tag(tracker.parent_id, "synthdata.warning", warning)
            tracker.save_results(out_dir, table, format_detect_table(table, warning))
            if status != "KILLED":
                figures = detect_figures(table, out_dir / "figures", title=spec.name)
                for r in results:
                    if r.confusion is not None and r.cell.seed == spec.detect.seeds[0]:
                        figures.append(confusion_figure(r.confusion, r.classes, out_dir / "figures" / "confusion.png",
                                                        title=f"{spec.name}: which source is it?"))
                tracker.log_figures(figures)
        tracker.end(status)
    return StudyResult(table, tracker.parent_id, failed, time.perf_counter() - start, figures)
