"""Every random stream of a study, derived from (seed, scope, generation, purpose) by one function.

A replicate's seed must reach everything random in it, and a resumed generation must draw
exactly what it would have drawn in one go; so no code draws from a global RNG or invents
its own offset: it asks `stream_seed` for the stream of its purpose. That includes the
real data: each seed draws its own split (`data.split_seed: per_seed`, Purpose.REAL), or
a toy source its own sample of the truth.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np


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


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of the chunk-th part of a large sample set (`synthdata.generators.draw_samples`): chunk 0
    draws with `seed` itself, so a set of one chunk (every set that fits in a chunk) is drawn as it always was."""
    if chunk == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, 1_000_003, chunk]).generate_state(1)[0] % 2**31)


def stream_seed(seed: int, purpose: Purpose, generation: int = 0, scope: Scope = Scope.ARM) -> int:
    """The seed of one random stream: distinct and reproducible per (seed, scope, generation, purpose).

    numpy's SeedSequence hashes the four numbers, so no two streams coincide however many
    seeds or generations a study has (an arithmetic offset would, past some generation).
    """
    entropy = [seed % 2**64, int(scope), generation, int(purpose)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] % 2**31)
