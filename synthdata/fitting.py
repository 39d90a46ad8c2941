"""Fit, then guide: the one place a study trains a generator (loops, mix pools, guide studies, detect sources).

Above `synthdata.generators` and `synthdata.guidance`: guidance (and diffusers with it) is
imported only when a study asks for it, so toy arms never pay for it.
"""
from __future__ import annotations

import time
from typing import Callable

from synthdata.data import ImageSet
from synthdata.generators import Generator, create_generator
from synthdata.seeds import Purpose, stream_seed
from synthdata.spec import GeneratorSpec, GuidanceSpec

StageProgress = Callable[[str, float], None]  # (stage, fraction done)


def fit_generator(spec: GeneratorSpec, train: ImageSet, *, seed: int, generation: int = 0, device: str = "cpu",
                  guidance: GuidanceSpec | None = None, real: ImageSet | None = None,
                  progress: StageProgress | None = None) -> tuple[Generator, dict[str, float]]:
    """Create and train a generator on `train`; with `guidance`, then train its guiding classifier too.

    Its random streams are the (seed, generation)'s: `Purpose.FIT` for the generator, and
    `Scope.GUIDANCE` for everything guidance draws.

    The guiding classifier learns `real` (default: `train`) against the generator's unguided
    samples: in a loop, `train` may be all synthetic while `real` stays the real training set.

    The one "fit, then guide" of the project (loops, mix pools, guide studies). Returns the
    generator (a `GuidedGenerator` at `guidance.scale` when guided) and its figures: the fit's
    own (final loss, ...), `time_fit_s`, and when guided the guiding classifier's and
    `time_guidance_s`.
    """
    generator = create_generator(spec, train.shape, train.num_classes, device)
    start = time.perf_counter()
    info = {k: float(v) for k, v in generator.fit(train, seed=stream_seed(seed, Purpose.FIT, generation), progress=progress and (
        lambda f: progress("training generator", f))).items()}
    info["time_fit_s"] = time.perf_counter() - start
    if guidance is not None:
        from synthdata.guidance import with_guidance

        start = time.perf_counter()
        generator, guidance_info = with_guidance(generator, guidance, real if real is not None else train, seed=seed,
                                                 generation=generation, device=device, progress=progress and (
                                                     lambda f: progress("training guiding classifier", f)))
        info.update(guidance_info, time_guidance_s=time.perf_counter() - start)
    return generator, info
