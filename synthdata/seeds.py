"""Every random stream of a study, derived from (seed, scope, generation, purpose) by one function.

A replicate's seed must reach everything random in it, and a resumed generation must draw
exactly what it would have drawn in one go; so no code draws from a global RNG or invents
its own offset: it asks `stream_seed` for the stream of its purpose. That includes the
real data: each seed draws its own split (`data.split_seed: per_seed`, Purpose.REAL), or
a toy source its own sample of the truth.
"""
from __future__ import annotations

import inspect
from enum import IntEnum
from typing import Any

import numpy as np
import torch


class Purpose(IntEnum):
    """What a stream is for. The values are part of a study's results: never renumber or reuse them (6 is retired)."""

    DETECTOR = 1  # the detector's subsets, initialisation and batches
    DOWNSTREAM = 2  # the downstream classifier
    FIT = 3  # the generator's initialisation and training batches (the guiding classifier's, in Scope.GUIDANCE)
    LABELS = 4  # the class labels samples are drawn for
    SAMPLES = 5  # the sampling noise
    GUIDING_VERDICT = 7  # the noise under which the guiding classifier judges held-out samples
    FRESH = 8  # `fresh` loops: the new real draw of each generation
    ORDER = 9  # a fixed order of real images: an arm's real training set, a mix seed's N real images
    POOL_ORDER = 10  # the order in which a mix seed's arms take synthetic images from its pool
    SPLIT = 11  # a generated source's train / eval split (detect)
    CROPS = 12  # the random crops of the crop analysis (detect)
    FEATURES = 13  # the study's feature extractor (trained once, on the real data)
    SEARCH = 14  # a random mix search's arms (modes, ratios, seeds)
    REAL = 15  # the real data's train / held-out / test split of a seed (a toy source: its draw of the truth)


class Scope(IntEnum):
    """Which family of streams: an arm's own (by generation), a guide study's shared metrics, or guidance's."""

    ARM = 0
    MEASURE = 100  # guide studies: every scale of a seed is measured with the same detector and classifier seeds
    GUIDANCE = 200  # detector guidance of a generation: its unguided samples and its guiding classifier


SEED_GROUP = 256  # images per seed for a generator whose `sample` takes one seed, not one per image

_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps: that is the hash
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def image_seeds(seed: int, start: int, count: int) -> torch.Tensor:
    """The seeds of images start .. start+count-1 of a sample set drawn with `seed` (int64, one per image).

    Image i's seed depends on (seed, i) only, never on how the set is cut into batches or
    workers (EDM2 draws each image from its own seed the same way), so a set drawn in one call,
    in chunks or by many workers is the same set, image for image.
    """
    base = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))
    with np.errstate(over="ignore"):
        z = _splitmix64(base + np.arange(start, start + count, dtype=np.uint64) * _GOLDEN)
    return torch.from_numpy((z >> np.uint64(1)).astype(np.int64))  # 63 bits: a valid torch seed


def per_image(seeds: torch.Tensor | None, seed: int | None, n: int) -> torch.Tensor:
    """The per-image seeds of a `Generator.sample` call: `seeds` as given, else those of a set drawn with `seed`."""
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"sample: {len(seeds)} seeds for {n} labels")
        return torch.as_tensor(seeds, dtype=torch.long)
    if seed is None:
        raise TypeError("sample: give seeds (one per image) or seed")
    return image_seeds(seed, 0, n)


def stacked_randn(seeds: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise (len(seeds), *shape), row i drawn from seeds[i] alone (on the CPU: the same on any device)."""
    out = torch.empty((len(seeds), *shape), dtype=dtype)
    g = torch.Generator()
    for i, s in enumerate(seeds.tolist()):
        g.manual_seed(s)
        out[i] = torch.randn(shape, generator=g, dtype=dtype)
    return out


def takes_image_seeds(generator: Any) -> bool:
    """Whether a generator's `sample` takes `seeds` (one per image); a plug-in's may take only `seed`."""
    try:
        return "seeds" in inspect.signature(generator.sample).parameters
    except (TypeError, ValueError):
        return False


def stream_seed(seed: int, purpose: Purpose, generation: int = 0, scope: Scope = Scope.ARM) -> int:
    """The seed of one random stream: distinct and reproducible per (seed, scope, generation, purpose).

    numpy's SeedSequence hashes the four numbers, so no two streams coincide however many
    seeds or generations a study has (an arithmetic offset would, past some generation).
    """
    entropy = [seed % 2**64, int(scope), generation, int(purpose)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] % 2**31)
