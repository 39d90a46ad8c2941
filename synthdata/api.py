"""The Python API for notebooks: run a study, or measure detectability in one call.

    import synthdata
    result = synthdata.run("studies/quickstart.yaml")           # or a dict, or a spec
    result.table, result.parent_run_id, result.figures
    stats = synthdata.detectability(real_images, generated_images)   # tensors or folders
    stats.accuracy, stats.ci_low, stats.p_value, stats.auc
    synthdata.pretrain("studies/quickstart.yaml", "runs/pretrained/digits", train_steps=3000)  # -> loop.pretrained

`run` drives the same runners as `synthdata run` (Ray, MLflow, resume, the table and the
figures); a Ray it starts stays up for the next call. `detectability` and `pretrain` run in
this process.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from loops.study import StudyResult
    from synthdata.metrics.detectability import Detectability
    from synthdata.spec import StudySpec


def _spec_of(study: str | Path | dict | StudySpec) -> tuple[StudySpec, str]:
    """A validated spec and where it came from (for the run's provenance)."""
    from synthdata.spec import StudyBase, load_spec, parse_spec

    if isinstance(study, (str, Path)):
        return load_spec(study), str(Path(study).resolve())
    if isinstance(study, dict):
        return parse_spec(study, source="<dict>"), "<python>"
    if isinstance(study, StudyBase):
        return study, "<python>"
    raise TypeError(f"study: a path, a dict or a spec, not {type(study).__name__}")


def run(study: str | Path | dict | StudySpec, *, generator: Any = None, params: dict[str, Any] | None = None,
        tracking_uri: str | None = None, address: str | None = None, progress: bool = True, resume: bool = False) -> StudyResult:
    """Run a study from a study file, a mapping of its keys, or a validated spec; return its `StudyResult`
    (`table`: a pandas DataFrame, `parent_run_id`: the study's MLflow run, `figures`: paths, `failed`: arm -> reason).

    `generator`: a generator class (or any factory) to use instead of the study's `generator`
    section, built as `generator(shape=(C, H, W), num_classes=K, device=..., **params)`; it
    follows `synthdata.generators.Generator` and travels to the Ray workers with the study.
    """
    from loops.study import run_study
    from synthdata.spec import PluginSpec

    spec, source = _spec_of(study)
    if generator is not None:
        if "generator" not in type(spec).model_fields:
            raise TypeError(f"generator: a {spec.kind} study has no generator to replace")
        spec = spec.model_copy(update={"generator": PluginSpec.of(generator, params or {})})
    return run_study(spec, address=address, tracking_uri=tracking_uri, show_progress=progress, resume=resume, source=source)


def pretrain(study: str | Path | dict | StudySpec, out: str | Path, *, seed: int = 0, train_steps: int | None = None,
             device: str = "cpu", progress: bool = True) -> Path:
    """Train a study's generator on one seed's real training split and save it: a pretrained start for loops
    (`loop.pretrained: <returned path>`) or a `checkpoint` source for detect studies.

    The generator is the study's `generator` section (`train_steps` overrides its steps), fitted
    on exactly the real training images seed `seed` of that study trains on (`data.split_seed`),
    with the seed's random streams. A generator with `save_pretrained` (the diffusion model) is
    saved as a diffusers directory `out`; any other as `out` (a .safetensors file, or
    `out/generator.safetensors`). Beside it, `pretrained.json` records the study, seed, steps and a
    fingerprint of every training image, so a loop started from it can warn when its held-out
    or test images were among them.
    """
    import time

    from synthdata.data import fingerprints, split_seed_of, study_splits
    from synthdata.fitting import fit_generator
    from synthdata.generators import save_pretrained_generator

    spec, _ = _spec_of(study)
    if "generator" not in type(spec).model_fields:
        raise TypeError(f"study: a {spec.kind} study has no generator to pretrain")
    train = study_splits(spec.data, [seed])[seed].train
    bar = _bar(progress, f"pretraining {spec.generator.name}")
    start = time.perf_counter()
    generator, info = fit_generator(spec.generator, train, seed=seed, device=device, train_steps=train_steps or None,
                                    progress=bar and (lambda stage, f: bar.update(round(100 * f) - bar.n)))
    if bar:
        bar.close()
    record = {"study": spec.name, "data": spec.data.model_dump(mode="json"), "seed": seed,
              "split_seed": split_seed_of(spec.data, seed), "generator": spec.generator.name, "train_steps": train_steps,
              "seconds": round(time.perf_counter() - start, 1), "fit": info, "train_fingerprints": fingerprints(train.images)}
    return save_pretrained_generator(generator, Path(out), record)


def _bar(show: bool, what: str) -> Any:
    if not show:
        return None
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=100, desc=what, unit="%", file=sys.stderr)


def _images(x: Any, what: str) -> Any:
    """Images (N, C, H, W) in [-1, 1] from a tensor, an ImageSet or a folder of image files (read per batch when it
    is larger than `data.in_memory_mb`'s default as float32)."""
    from synthdata.data import ImageSet, read_image_folder
    from synthdata.spec import DataSpec

    if isinstance(x, ImageSet):
        return x.images
    if isinstance(x, torch.Tensor):
        if x.ndim != 4:
            raise ValueError(f"{what}: images must be (N, C, H, W), got shape {tuple(x.shape)}")
        return x.float()
    return read_image_folder(x, in_memory_mb=DataSpec().in_memory_mb)


def detectability(real: Any, generated: Any, *, detector: dict[str, Any] | None = None, eval_fraction: float = 0.3,
                  seed: int = 0, device: str = "cpu") -> Detectability:
    """How well a classifier tells `generated` images from `real` ones (a classifier two-sample test).

    Each set (a tensor (N, C, H, W) in [-1, 1], an ImageSet, or a folder of images) is cut at
    random into train and eval parts (`eval_fraction` held out); a detector (`detector`: the
    keys of a study's `detector:` section, default a small CNN) is trained on balanced train
    parts and scored on balanced eval parts. Generated images are brought to the real
    images' channels and size. Returns held-out accuracy with its exact interval and
    binomial p-value, the AUC with DeLong's interval and Mann-Whitney's p, and the JSD bound.
    """
    from synthdata.data import ImageSet
    from synthdata.detection import split_source
    from synthdata.metrics.detectability import detector_scores
    from synthdata.seeds import Purpose, stream_seed
    from synthdata.sources import to_real_format
    from synthdata.spec import ClassifierSpec

    r = _images(real, "real")
    levels = real.levels if isinstance(real, ImageSet) else None
    reference = ImageSet(r, torch.zeros(len(r), dtype=torch.long), 1, levels)
    g = to_real_format(_images(generated, "generated"), reference, "generated").images
    split = stream_seed(seed, Purpose.SPLIT)
    real_train, real_eval = split_source(r, eval_fraction, seed=split)
    gen_train, gen_eval = split_source(g, eval_fraction, seed=split)
    spec = ClassifierSpec(**{"epochs": 10, **(detector or {})})
    return detector_scores(real_train, gen_train, real_eval, gen_eval, spec, seed=stream_seed(seed, Purpose.DETECTOR),
                           device=device).stats
