"""Detectability: how well a classifier tells generated images from real ones (a C2ST).

A detector is trained on a balanced set of real vs generated images and evaluated on
held-out images of both. Held-out accuracy near 0.5 means the two distributions look
the same to the classifier; near 1.0 means it separates them easily. Alongside the
accuracy we report an exact 95% interval and the one-sided binomial p-value against 0.5
(a test on the detector's decisions); the ROC-AUC with DeLong's interval and the one-sided
Mann-Whitney p-value (the same question asked of its scores, which uses more of what the
detector says); and the Jensen-Shannon lower bound `JSD >= ln 2 - mean BCE` (nats),
which holds for any classifier evaluated on balanced held-out data.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from synthdata.classifiers import predict_logits, train_classifier
from synthdata.imagestore import Images, cat_images
from synthdata.metrics.stats import accuracy_with_ci, auc_with_ci, p_value_above_chance, rank_test_p
from synthdata.spec import ClassifierSpec

REAL, GENERATED = 0, 1


@dataclass(frozen=True)
class Detectability:
    accuracy: float
    ci_low: float
    ci_high: float
    p_value: float  # binomial, on the decisions
    auc: float
    auc_ci_low: float
    auc_ci_high: float
    auc_p_value: float  # Mann-Whitney, on the scores
    mean_bce: float
    jsd_lower_bound: float
    n_eval: int

    def as_metrics(self, prefix: str = "detectability") -> dict[str, float]:
        """Flat MLflow metric names: `detectability`, `detectability_ci_low`, ..."""
        d = asdict(self)
        out = {prefix: d.pop("accuracy")}
        out.update({f"{prefix}_{k}": float(v) for k, v in d.items()})
        return out


def c2st_stats(p_generated: torch.Tensor | np.ndarray, is_generated: torch.Tensor | np.ndarray) -> Detectability:
    """Statistics of a detector's held-out predictions.

    `p_generated` is the detector's probability that each image is generated,
    `is_generated` the truth (0 real, 1 generated). Classes should be balanced for the
    JSD bound to hold.
    """
    p = np.clip(np.asarray(p_generated, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(is_generated).astype(np.int64)
    n = len(y)
    correct = int(((p >= 0.5).astype(np.int64) == y).sum())
    acc = accuracy_with_ci(correct, n)
    bce = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    nan = float("nan")
    both = 0 < y.sum() < n
    auc, auc_low, auc_high = auc_with_ci(p[y == 1], p[y == 0]) if both else (nan, nan, nan)
    return Detectability(
        accuracy=acc.value,
        ci_low=acc.ci_low,
        ci_high=acc.ci_high,
        p_value=p_value_above_chance(correct, n),
        auc=auc,
        auc_ci_low=auc_low,
        auc_ci_high=auc_high,
        auc_p_value=rank_test_p(p[y == 1], p[y == 0]) if both else nan,
        mean_bce=bce,
        jsd_lower_bound=max(0.0, math.log(2) - bce),
        n_eval=n,
    )


def _balanced(a: Images, b: Images, g: torch.Generator, cap: int | None = None) -> tuple[Images, Images]:
    n = min(len(a), len(b), cap or len(a))
    return a[torch.randperm(len(a), generator=g)[:n]], b[torch.randperm(len(b), generator=g)[:n]]


@dataclass
class DetectorScores:
    """A detector's result with what it saw: held-out images of both classes and its p(generated) for each."""

    stats: Detectability
    n_train: int  # training images per class
    real_eval: Images
    generated_eval: Images
    p_real: torch.Tensor  # p(generated) for each real eval image
    p_generated: torch.Tensor  # p(generated) for each generated eval image


def detector_scores(
    real_train: Images,
    generated_train: Images,
    real_eval: Images,
    generated_eval: Images,
    spec: ClassifierSpec,
    *,
    seed: int,
    train_size: int | None = None,
    device: str = "cpu",
) -> DetectorScores:
    """Train a detector on real vs generated images and score it on held-out images of both.

    Each pair is subsampled to equal size (at most `train_size` per class for training)
    so that chance is exactly 0.5. The eval images must not overlap the training images. Any
    of the four may be a lazy set (read per batch): the balanced sets are views, not copies.
    """
    g = torch.Generator().manual_seed(seed)
    rt, gt = _balanced(real_train, generated_train, g, train_size)
    re, ge = _balanced(real_eval, generated_eval, g)
    x = cat_images([rt, gt])
    y = torch.cat([torch.full((len(rt),), REAL), torch.full((len(gt),), GENERATED)])
    model = train_classifier(spec, x, y, 2, seed=seed, device=device)
    x_eval = cat_images([re, ge])
    y_eval = torch.cat([torch.full((len(re),), REAL), torch.full((len(ge),), GENERATED)])
    p_gen = F.softmax(predict_logits(model, x_eval, device=device), dim=1)[:, GENERATED]
    return DetectorScores(c2st_stats(p_gen, y_eval), len(rt), re, ge, p_gen[: len(re)], p_gen[len(re) :])


def detectability(real_train, generated_train, real_eval, generated_eval, spec: ClassifierSpec, *, seed: int, device: str = "cpu") -> Detectability:
    """`detector_scores`' statistics alone."""
    return detector_scores(real_train, generated_train, real_eval, generated_eval, spec, seed=seed, device=device).stats


def real_halves(train: Images, heldout: Images, seed: int) -> tuple[Images, ...]:
    """Two disjoint random halves of real data, as (train A, train B, eval A, eval B) for a detector."""
    g = torch.Generator().manual_seed(seed)
    tr, ho = torch.randperm(len(train), generator=g), torch.randperm(len(heldout), generator=g)
    h, k = len(tr) // 2, len(ho) // 2
    return train[tr[:h]], train[tr[h:]], heldout[ho[:k]], heldout[ho[k:]]


def real_vs_real(train: Images, heldout: Images, spec: ClassifierSpec, *, seed: int, device: str = "cpu") -> Detectability:
    """The sanity baseline: two disjoint halves of real data must come out near 0.5."""
    return detectability(*real_halves(train, heldout, seed), spec, seed=seed, device=device)
