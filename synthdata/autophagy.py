"""The science of a self-consuming (autophagy) loop: each generation's training set, and its measurements.

Generation t trains a fresh generator G_t on a training set D_t, samples S_t from it,
and measures S_t. How D_t is built is the loop type (D_1 is always the real training set):

- `replace`:    D_t = S_{t-1} (fully synthetic);
- `augment`:    D_t = real train (fixed) + S_{t-1};
- `fresh`:      D_t = a new real draw + S_{t-1};
- `accumulate`: D_t = real train + S_1 + ... + S_{t-1}.

The arm runner (`loops/loop.py`) calls these in order; guide studies measure their
sample sets with the same `measure_samples`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from synthdata.data import ImageSet, Splits, class_balanced_labels, concat, sample_truth
from synthdata.imagestore import Images, as_tensor
from synthdata.metrics.detectability import detectability, real_vs_real
from synthdata.metrics.downstream import downstream_accuracy
from synthdata.metrics.features import FeatureExtractor, RealReference, cached_reference, feature_metrics
from synthdata.seeds import Purpose, stream_seed
from synthdata.spec import LoopStudy, MeasuredStudy


@dataclass
class StudyContext:
    """What every arm of a study shares, computed once in the driver."""

    reference: RealReference | None = None  # real held-out features (metric: features)
    extractor: FeatureExtractor | None = None  # None: the data are vectors, used as their own features
    pretrained: dict[str, torch.Tensor] | None = None  # a loop's `loop.pretrained` weights, read in the driver
    storage: str | None = None  # where this run writes sample sets too large to hold (synthdata.shards.study_storage)

    def sample_storage(self, arm: str, generation: int, part: str = "") -> str | None:
        """The folder of one generation's samples (`part`: another set it draws, e.g. guidance's unguided samples),
        when they are too large to hold (None: the run has no storage)."""
        if self.storage is None:
            return None
        from synthdata.shards import join

        return join(self.storage, arm.replace("/", "_"), f"generation_{generation:03d}" + (f"_{part}" if part else ""))


def study_context(spec: MeasuredStudy, splits: Splits, seed: int = 0,
                  pretrained: dict[str, torch.Tensor] | None = None) -> StudyContext:
    """What a seed's arms share: the frozen feature extractor and the real features of the seed's split (when the
    study measures features), and a loop's pretrained weights (`synthdata.runs.pretrained_weights`, read once in
    the driver, so workers need no access to the file or the tracking store)."""
    if isinstance(spec, LoopStudy) and (spec.loop.pretrained is None) != (pretrained is None):
        raise ValueError("loop.pretrained: pass its weights (synthdata.runs.pretrained_weights) exactly when the study has one")
    if "features" not in spec.metrics:
        return StudyContext(pretrained=pretrained)
    heldout = splits.heldout
    if heldout.images.shape[-1] == 1:  # toy vectors are their own features
        return StudyContext(RealReference.build(None, heldout.images.flatten(1), heldout.labels), pretrained=pretrained)
    # Trained once per (data, split, feature spec, seed) and kept on disk (synthdata.cache.cache_dir).
    reference, extractor = cached_reference(splits.train, heldout, spec.features, seed=stream_seed(seed, Purpose.FEATURES))
    return StudyContext(reference, extractor, pretrained)


def _real_share(n_synthetic: int, real_fraction: float, available: int) -> int:
    return min(available, round(n_synthetic * real_fraction / (1 - real_fraction)))


def build_training_set(
    loop_type: str,
    splits: Splits,
    history: list[ImageSet],
    *,
    real_fraction: float | None = None,
    generator: torch.Generator | None = None,
    fixed_order: torch.Tensor | None = None,
) -> ImageSet:
    """D_t for the loop type, given the real data and the samples of the generations so far.

    `fixed_order` is a permutation of the real training set drawn once per arm, so that
    `augment` with a real fraction keeps the same real images every generation;
    `generator` draws `fresh`'s new real images (new samples of the true distribution for
    toy sources, a new subset of the real training set otherwise).
    """
    real = splits.train
    if not history:
        return real
    latest = history[-1]
    if loop_type == "replace":
        return latest
    if loop_type == "accumulate":
        return concat(real, *history)
    if loop_type == "augment":
        if real_fraction is None:
            return concat(real, latest)
        order = fixed_order if fixed_order is not None else torch.arange(len(real))
        return concat(real.subset(order[: _real_share(len(latest), real_fraction, len(real))]), latest)
    if loop_type == "fresh":
        g = generator or torch.Generator().manual_seed(0)
        fraction = 0.5 if real_fraction is None else real_fraction
        if splits.truth is not None:
            n = round(len(latest) * fraction / (1 - fraction))
            labels = class_balanced_labels(n, real.labels, real.num_classes, g)
            return concat(sample_truth(splits.truth, labels, g), latest)
        n = _real_share(len(latest), fraction, len(real))
        return concat(real.subset(torch.randperm(len(real), generator=g)[:n]), latest)
    raise ValueError(f"unknown loop type {loop_type!r}")


def grid_subset(images: Images, labels: torch.Tensor, per_class: int = 8) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Up to `per_class` images of each class, ordered by class, for a readable grid (images only)."""
    if images.shape[-1] == 1:  # vectors, not images
        return None
    picks = [torch.nonzero(labels == k).flatten()[:per_class] for k in labels.unique().sort().values]
    idx = torch.cat(picks)
    return as_tensor(images[idx]), labels[idx]


def measure_samples(
    spec: MeasuredStudy,
    splits: Splits,
    context: StudyContext,
    samples: ImageSet,
    eval_images: torch.Tensor,
    seed_of: Callable[[Purpose], int],
    device: str,
    real_reference: bool = False,
) -> dict[str, float]:
    """The metrics of a sample set (S_t), with `eval_images` as held-out samples for detectability.

    `real_reference`: `samples` are the real training images themselves, and detectability
    is the real-vs-real baseline (two disjoint halves of the real data).
    """
    wants, out = set(spec.metrics), {}
    images, labels = samples.images, samples.labels
    if "detectability" in wants:
        seed = seed_of(Purpose.DETECTOR)
        if real_reference:
            d = real_vs_real(splits.train.images, splits.heldout.images, spec.detector, seed=seed, device=device)
        else:
            d = detectability(splits.train.images, images, splits.heldout.images, eval_images, spec.detector, seed=seed, device=device)
        out.update(d.as_metrics())
    if "downstream" in wants:
        acc = downstream_accuracy(images, labels, splits.test.images, splits.test.labels, splits.train.num_classes,
                                  spec.downstream, seed=seed_of(Purpose.DOWNSTREAM), device=device)
        out.update(acc.as_metrics("downstream_accuracy"))
    if "features" in wants and context.reference is not None:
        # The extractor was built once in the driver, on the CPU; features are cheap there.
        feats = context.extractor.embed(images) if context.extractor is not None else as_tensor(images).flatten(1)
        out.update(feature_metrics(context.reference, feats, labels))
    return out
