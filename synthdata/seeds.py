"""Every random stream of a study, derived from (seed, scope, generation, purpose) by one function.

A replicate's seed must reach everything random in it, and a resumed generation must draw
exactly what it would have drawn in one go; so no code draws from a global RNG or invents
its own offset: it asks `stream_seed` for the stream of its purpose.
"""
from __future__ import annotations

from enum import IntEnum


class Purpose(IntEnum):
    """What a stream is for. The values are part of a study's results: never renumber them."""

    DETECTOR = 1  # the detector's subsets, initialisation and batches
    DOWNSTREAM = 2  # the downstream classifier
    FIT = 3  # the generator's initialisation and training batches
    LABELS = 4  # the class labels samples are drawn for
    SAMPLES = 5  # the generator's sampling noise
    GUIDANCE = 6  # the guiding classifier: its unguided samples and its training
    GUIDING_VERDICT = 7  # the noise under which the guiding classifier judges held-out samples
    DETECT_ARM = 7  # a detect study's detector (another kind of study than the one above: they never meet)
    FRESH = 8  # `fresh` loops: the new real draw of each generation
    ORDER = 9  # an arm's fixed order of the real training set


class Scope(IntEnum):
    """Which family of streams: an arm's own (by generation), or a guide study's metrics (shared by its scales)."""

    ARM = 0
    MEASURE = 100  # guide studies: every scale of a seed is measured with the same detector and classifier seeds


def stream_seed(seed: int, purpose: Purpose, generation: int = 0, scope: Scope = Scope.ARM) -> int:
    """The seed of one random stream: distinct and reproducible per (seed, scope, generation, purpose)."""
    return (seed * 1_000_003 + generation * 1_009 + int(scope) + int(purpose)) % (2**31)
