"""Fit, then guide: the one place a study trains a generator (loops, mix pools, guide studies, detect sources).

Above `synthdata.generators` and `synthdata.guidance`: guidance (and diffusers with it) is
imported only when a study asks for it, so toy arms never pay for it.
"""
from __future__ import annotations

import time
from typing import Callable

from synthdata import parallel
from synthdata.data import ImageSet
from synthdata.generators import Generator, create_generator, trains_data_parallel
from synthdata.seeds import Purpose, stream_seed
from synthdata.spec import GeneratorSpec, GuidanceSpec

StageProgress = Callable[[str, float], None]  # (stage, fraction done)


def fit_generator(spec: GeneratorSpec, train: ImageSet, *, seed: int, generation: int = 0, device: str = "cpu",
                  guidance: GuidanceSpec | None = None, real: ImageSet | None = None,
                  progress: StageProgress | None = None, init: dict | None = None,
                  train_steps: int | None = None, storage: str | None = None, in_memory_mb: float | None = None
                  ) -> tuple[Generator, dict[str, float]]:
    """Create and train a generator on `train`; with `guidance`, then train its guiding classifier too.

    Its random streams are the (seed, generation)'s: `Purpose.FIT` for the generator, and
    `Scope.GUIDANCE` for everything guidance draws.

    The guiding classifier learns `real` (default: `train`) against the generator's unguided
    samples: in a loop, `train` may be all synthetic while `real` stays the real training set.

    The one "fit, then guide" of the project (loops, mix pools, guide studies). Returns the
    generator (a `GuidedGenerator` at `guidance.scale` when guided) and its figures: the fit's
    own (final loss, ...), `time_fit_s`, and when guided the guiding classifier's and
    `time_guidance_s`.

    `init` (a state_dict) warm-starts the fit from those weights (`warm_start` = 1 in the
    figures); `train_steps` overrides the generator's own steps for this fit (a pretrained
    start's fine-tune), 0 meaning: take `init` as it is, no training.

    `storage` and `in_memory_mb`: where guidance's unguided samples go as shards when they are
    too large to hold (as `draw_samples`).
    """
    if train_steps is not None:
        spec = _with_steps(spec, train_steps)
    start = time.perf_counter()
    if init is not None and train_steps == 0:
        generator = create_generator(spec, train.shape, train.num_classes, device)
        generator.load_state_dict(init)
        info: dict[str, float] = {}
    else:
        # A generator that trains data-parallel does so in all of an arm's workers (resources.workers_per_arm).
        fit = _fit_shared if trains_data_parallel(spec) else _fit
        generator, info = fit(spec, train, stream_seed(seed, Purpose.FIT, generation), device, init,
                              progress=progress and (lambda f: progress("training generator", f)))
    info["time_fit_s"] = time.perf_counter() - start
    if init is not None:
        info["warm_start"] = 1.0
    if guidance is not None:
        from synthdata.guidance import with_guidance

        start = time.perf_counter()
        generator, guidance_info = with_guidance(generator, guidance, real if real is not None else train, seed=seed,
                                                 generation=generation, device=device, storage=storage,
                                                 in_memory_mb=in_memory_mb, progress=progress and (
                                                     lambda f: progress("training guiding classifier", f)))
        info.update(guidance_info, time_guidance_s=time.perf_counter() - start)
    return generator, info


def _fit(spec: GeneratorSpec, train: ImageSet, seed: int, device: str, init: dict | None,
         progress: Callable[[float], None] | None = None) -> tuple[Generator, dict[str, float]]:
    """A new generator of `spec`, trained on `train` from `seed` (from `init`'s weights when given)."""
    generator = create_generator(spec, train.shape, train.num_classes, device)
    kwargs = {"init": init} if init is not None else {}
    info = generator.fit(train, seed=seed, progress=progress, **kwargs)
    return generator, {k: float(v) for k, v in info.items()}


@parallel.shared
def _fit_shared(spec: GeneratorSpec, train: ImageSet, seed: int, device: str, init: dict | None,
                progress: Callable[[float], None] | None = None) -> tuple[Generator, dict[str, float]]:
    """`_fit` in every worker of the arm's training group at once, where there is one."""
    return _fit(spec, train, seed, device, init, progress)


def _with_steps(spec: GeneratorSpec, steps: int) -> GeneratorSpec:
    """The generator section with `steps` optimizer steps: a built-in's `train_steps`, a plug-in's `params.train_steps`."""
    from synthdata.spec import PluginSpec

    if steps == 0:
        return spec  # no fit at all
    if isinstance(spec, PluginSpec):
        copy = spec.model_copy(update={"params": {**spec.params, "train_steps": steps}})
        copy._factory = spec._factory
        return copy
    if "train_steps" not in type(spec).model_fields:
        raise ValueError(f"generator {spec.name!r} has no train_steps to set")
    return spec.model_copy(update={"train_steps": steps})
