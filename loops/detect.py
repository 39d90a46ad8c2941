"""Run a detect study: every detector an arm, a Ray task and an MLflow child run.

spec -> real data (train for detectors, held-out + test for evaluation) -> sources (cheap
ones read in the driver; generators, checkpoints and pipelines sampled as Ray tasks) ->
arms (pair, real_vs_real, multiway, size, band, crop) as Ray tasks -> MLflow (metrics per
arm run; confusion matrix and example grids as artifacts) -> a table, figures, and a loud
warning when the real-vs-real baseline is not at chance.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from loops.ray_tools import arm_placement, release, short_reason, wait_arms
from loops.study import Prepared, Study
from synthdata.compute import configure_worker
from synthdata.data import ImageSet, Splits, concat
from synthdata.detection import DetectArm, DetectResult, arms_for, run_arm
from synthdata.errors import UserError
from synthdata.figures import confusion_figure, detect_figures, sample_grid
from synthdata.imagestore import as_tensor
from synthdata.parallel import training_group
from synthdata.results import detect_table, format_detect_table, real_vs_real_warning
from synthdata.shards import join, storage_of
from synthdata.sources import load_source
from synthdata.spec import DetectStudy

EXPENSIVE = ("generator", "checkpoint", "pipeline")  # sampled on Ray; the others are read in the driver


def _source_task(source, real: ImageSet, seed: int, resources, storage: str, in_memory_mb: float) -> ImageSet:
    from synthdata.sampling import arm_workers

    device = configure_worker(resources)
    generator = getattr(source, "generator", None)  # a generator's or a weights file's: drawn by the task's workers
    if generator is None:
        return load_source(source, real, seed=seed, device=device, storage=storage, in_memory_mb=in_memory_mb)
    with arm_workers(generator, real, resources, device) as pool:
        return load_source(source, real, seed=seed, device=device, storage=storage, in_memory_mb=in_memory_mb, pool=pool)


def _arm_task(arm: DetectArm, spec: DetectStudy, real_train: ImageSet, real_eval: ImageSet, sources: dict[str, ImageSet]) -> DetectResult:
    device = configure_worker(spec.resources)
    res = spec.resources  # with workers_per_arm > 1, the arm's detector trains in all of its workers
    with training_group(res.workers_per_arm, cpus_per_worker=res.cpus_per_arm, gpus_per_worker=res.gpus_per_arm,
                        device=device):
        return run_arm(arm, spec.detect, spec.detector, real_train, real_eval, sources, device=device)


def read_cheap_sources(spec: DetectStudy, real: ImageSet) -> dict[str, ImageSet]:
    """Sample sets and image folders, read in the driver before Ray starts: a bad file stops the study at once."""
    return {name: load_source(source, real, seed=0, in_memory_mb=spec.data.in_memory_mb)
            for name, source in spec.detect.sources.items() if source.type not in EXPENSIVE}


def load_sources(spec: DetectStudy, splits: dict[int, Splits], read: dict[str, ImageSet], show_progress: bool
                 ) -> dict[int, dict[str, ImageSet]]:
    """Every source's images for every seed, in the real data's format; a bad source stops the study before anything
    is tracked. Sample sets and folders (`read`) are the same for every seed; a generator is trained on the seed's
    real training split with the seed, and checkpoints and pipelines are sampled with it."""
    import ray

    task = ray.remote(_source_task)
    expensive = [name for name, source in spec.detect.sources.items() if source.type in EXPENSIVE]
    local = {name: _absolute(spec.detect.sources[name]) for name in expensive}
    storage = storage_of(spec)  # sources too large to hold
    refs, held = {}, []
    for seed in spec.detect.seeds:
        for name in expensive:  # each source's task with its workers, reserved together
            needs = getattr(local[name][0], "generator", None) is not None
            options, group = arm_placement(spec.resources) if needs else ({}, None)
            held.append(group)
            refs[(seed, name)] = task.options(num_cpus=spec.resources.cpus_per_arm, num_gpus=spec.resources.gpus_per_arm,
                                              max_retries=0, **options).remote(local[name][0], splits[seed].train, seed, spec.resources,
                                                                join(storage, "sources", name, f"seed{seed}"),
                                                                spec.data.in_memory_mb)
    try:
        return _collect_sources(spec, refs, local, read, show_progress, expensive)
    finally:
        for group in held:
            release(group)


def _collect_sources(spec: DetectStudy, refs: dict, local: dict, read: dict[str, ImageSet], show_progress: bool,
                     expensive: list[str]) -> dict[int, dict[str, ImageSet]]:
    import ray

    if show_progress and refs:
        print(f"sampling {', '.join(expensive)} for seed(s) {', '.join(map(str, spec.detect.seeds))}", file=sys.stderr, flush=True)
    out: dict[int, dict[str, ImageSet]] = {seed: dict(read) for seed in spec.detect.seeds}
    for (seed, name), ref in refs.items():
        try:
            out[seed][name] = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # a bad file, or a generator (a plug-in's) whose fit raised
            cause = getattr(err, "cause", None)
            if isinstance(cause, UserError):
                full, written = local[name][1]
                message = str(cause).replace(full, written) if full else str(cause)  # the path as the study file writes it
                raise type(cause)(f"detect.sources.{name}: {message}") from None
            raise UserError(f"detect.sources.{name}: seed {seed}: {short_reason(err)}") from None
    for sources in out.values():
        for name, images in sources.items():
            if len(images) < 10:
                raise UserError(f"detect.sources.{name}: {len(images)} images are too few (at least 10)")
    return {seed: {name: sources[name] for name in spec.detect.sources} for seed, sources in out.items()}


def _absolute(source: Any) -> tuple[Any, tuple[str, str]]:
    """A source whose local path is absolute (a Ray worker may run in another directory than the driver: a shared or
    notebook's Ray), and (absolute, as written) to put the user's spelling back into its errors."""
    path = getattr(source, "path", None)
    if path is None or not Path(path).exists() or Path(path).is_absolute():  # a hub id, or nothing to resolve
        return source, ("", "")
    full = Path(path).resolve()
    return source.model_copy(update={"path": full if isinstance(path, Path) else str(full)}), (str(full), str(path))


def _log_arm(tracker, result: DetectResult) -> None:
    """The arm's metrics, and its artifacts: confusion matrix (multiway), example grids (pair)."""
    name = result.arm.name
    tracker.log_metrics(name, result.metrics)
    if result.confusion is not None:
        tracker.log_dict({"classes": result.classes, "counts": result.confusion.tolist()}, "confusion.json", arm=name)
        with tempfile.TemporaryDirectory() as tmp:
            tracker.log_file(confusion_figure(result.confusion, result.classes, Path(tmp) / "confusion.png", title=name), arm=name)
    for key, images in result.examples.items():
        if len(images):
            tracker.log_image(sample_grid(images), f"examples/{key}.png", arm=name)


def prepare(spec: DetectStudy, splits: dict[int, Splits], uri: str, resume: bool) -> Prepared:
    """Refuse crops larger than the images; read sample sets and image folders now (a bad file stops the study at once)."""
    real = splits[spec.detect.seeds[0]].train  # every seed's split has the same format
    too_big = [c for c in spec.detect.crop_sizes if c > min(real.shape[1:])]
    if too_big:
        raise UserError(f"detect.crop_sizes: {too_big[0]} exceeds the images' {real.shape[1]}x{real.shape[2]}")
    return Prepared(state=read_cheap_sources(spec, real))


def launch(spec: DetectStudy, splits: dict[int, Splits], prepared: Prepared, show_progress: bool) -> Prepared:
    """Sample the expensive sources on Ray: a bad checkpoint or pipeline stops the study before anything is tracked."""
    return Prepared(state=load_sources(spec, splits, prepared.state, show_progress))


def schedule(study: Study) -> None:
    """Train every arm's detector on Ray, each logged as a child run."""
    import ray

    spec, tracker, sources = study.spec, study.tracker, study.prepared
    first = spec.detect.seeds[0]
    for name, images in sources[first].items():
        if spec.tracking.sample_grid:
            tracker.log_image(sample_grid(as_tensor(images.images[:64])), f"sources/{name}.png")
    task = ray.remote(_arm_task)
    spec_ref = ray.put(spec)
    # Per seed: its real split (neither eval part trains a detector) and its sources; a lazy set travels as its
    # store's paths and an index, never as pixels.
    args = {seed: [ray.put(x) for x in (split.train, concat(split.heldout, split.test), sources[seed])]
            for seed, split in study.splits.items()}
    refs, held = {}, {}
    for arm in arms_for(spec.detect, list(sources[first])):
        tracker.start_arm(arm.name, arm.params())
        options, held_by = arm_placement(spec.resources, workers=spec.resources.workers_per_arm)  # it only trains
        ref = task.options(num_cpus=spec.resources.cpus_per_arm, num_gpus=spec.resources.gpus_per_arm, max_retries=1,
                           **options).remote(arm, spec_ref, *args[arm.seed])
        refs[ref], held[ref] = arm, held_by

    def on_result(arm: DetectArm, result: DetectResult) -> str:
        _log_arm(tracker, result)
        study.results.append(result)
        return f"{arm.name}: {result.metrics.get('detectability', result.metrics.get('multiway_accuracy')):.3f}"

    try:
        study.failed.update(wait_arms(refs, tracker, on_result, desc="detectors", show_progress=study.show_progress,
                                      on_done=lambda ref: release(held.pop(ref))))
    finally:
        for group in held.values():  # a stopped study's arms
            release(group)


def table(study: Study) -> pd.DataFrame:
    """The per-detector table; a real-vs-real baseline off chance is shouted and tagged on the study run."""
    table = detect_table([(r.arm.name, r.arm.params(), r.metrics) for r in study.results])
    warning = real_vs_real_warning(table) if not table.empty else None
    if warning:
        print(f"\nWARNING: {warning}\n", file=sys.stderr, flush=True)
        study.tracker.set_tag("synthdata.warning", warning)
    return table


def format_table(table: pd.DataFrame) -> str:
    return format_detect_table(table, real_vs_real_warning(table))


def figures(study: Study, table: pd.DataFrame) -> list[Path]:
    spec, out = study.spec, study.out_dir / "figures"
    paths = detect_figures(table, out, title=spec.name)
    for r in study.results:
        if r.confusion is not None and r.arm.seed == spec.detect.seeds[0]:
            paths.append(confusion_figure(r.confusion, r.classes, out / "confusion.png", title=f"{spec.name}: which source is it?"))
    return paths
