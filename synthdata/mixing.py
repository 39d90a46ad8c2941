"""Real/synthetic training mixes, and the synthetic pool they draw from.

A mix study asks: with N real images, does a classifier do better with synthetic
images added (`augment`) or swapped in (`replace`)? Every trial of a seed draws from
one pool, made once by a generator trained on the real training set, so trials differ
only in the mix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from synthdata.data import ImageSet, concat
from synthdata.errors import DataError
from synthdata.fitting import StageProgress, fit_generator
from synthdata.generators import draw_samples
from synthdata.seeds import Purpose, stream_seed
from synthdata.spec import GeneratorSpec, GuidanceSpec


def make_pool(generator_spec: GeneratorSpec, real: ImageSet, size: int, *, seed: int, device: str = "cpu",
              progress: StageProgress | None = None, guidance: GuidanceSpec | None = None, storage: str | None = None,
              in_memory_mb: float | None = None, pool: Any = None) -> tuple[ImageSet, dict[str, float]]:
    """Train a generator on `real` and draw `size` labelled samples with `real`'s class balance.

    Samples are quantized to the real data's intensity levels, as saving them would.
    With a `guidance` spec at a scale > 0 they are drawn with detector guidance, its
    classifier trained on the same `real` images. A pool larger than `in_memory_mb` is
    written to `storage` as shards while it is drawn (`draw_samples`). `pool`: a
    `synthdata.sampling.SamplingPool` of the task's workers (`arm_workers`), which draws the
    same samples. Returns the samples and the fit summary.
    """
    guided = guidance if guidance is not None and guidance.scale > 0 else None
    generator, info = fit_generator(generator_spec, real, seed=seed, device=device, guidance=guided, progress=progress,
                                    storage=storage and f"{storage.rstrip('/')}_guidance", in_memory_mb=in_memory_mb)
    draw = pool.draw if pool is not None and guided is None else draw_samples  # guided samples: in this process
    samples = draw(generator, size, real, label_seed=stream_seed(seed, Purpose.LABELS), sample_seed=stream_seed(seed, Purpose.SAMPLES),
                   storage=storage, in_memory_mb=in_memory_mb)
    return samples, info


def load_pool(path: Path, real: ImageSet) -> ImageSet:
    """A saved sample set, checked against the real data it will be mixed with."""
    from synthdata.data import load_samples

    try:
        pool = load_samples(path)
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise DataError(f"{path}: cannot read sample set ({type(err).__name__}: {err})") from None
    if pool.shape != real.shape or pool.num_classes != real.num_classes:
        raise DataError(
            f"{path}: samples are {pool.shape} with {pool.num_classes} classes, the real data {real.shape} with {real.num_classes}"
        )
    return pool


def synthetic_count(mode: str, ratio: float, n_real: int) -> int:
    """Synthetic images in a trial: r*N in both modes (added in `augment`, swapped in for real in `replace`)."""
    if mode == "replace" and ratio > 1:
        raise ValueError(f"replace needs a ratio <= 1, got {ratio}")
    return round(ratio * n_real)


def real_subset(real: ImageSet, real_size: int | None, *, seed: int) -> ImageSet:
    """The N real images of a seed (all of them when `real_size` is None), in the seed's fixed order.

    The seed's generator trains on exactly these, and its arms mix prefixes of them:
    the generator never sees real data the classifier is denied.
    """
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(stream_seed(seed, Purpose.ORDER)))
    return real.subset(order[: min(real_size or len(real), len(real))])


def mix_training_set(real: ImageSet, pool: ImageSet, mode: str, ratio: float, *, seed: int) -> ImageSet:
    """The training set of one arm, from a seed's N real images (`real_subset`) and its pool.

    Real and synthetic images are prefixes of orders fixed per seed, so the arms of a
    seed are nested (in `augment` a larger r only adds synthetic images; in `replace` it
    keeps a subset of the real ones and a superset of the synthetic ones): differences
    between r values are the mix, not the draw.
    """
    n = len(real)
    n_syn = synthetic_count(mode, ratio, n)
    n_real = n if mode == "augment" else n - n_syn
    if n_syn > len(pool):
        raise ValueError(f"{mode} at ratio {ratio:g} needs {n_syn} synthetic images, the pool has {len(pool)}")
    pool_order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(stream_seed(seed, Purpose.POOL_ORDER)))
    parts = [s for s in (real.subset(torch.arange(n_real)), pool.subset(pool_order[:n_syn])) if len(s)]
    return concat(*parts)
