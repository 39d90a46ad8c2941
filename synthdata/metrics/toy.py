"""Toy metrics: how far a fitted Gaussian model is from the known true distribution."""
from __future__ import annotations

import torch

from synthdata.data import ToyTruth


def w2_gaussian(mean: torch.Tensor, cov: torch.Tensor, true_mean: torch.Tensor, true_std: float) -> float:
    """2-Wasserstein distance between N(mean, cov) and N(true_mean, true_std^2 I), closed form.

    W2^2 = |m1 - m2|^2 + tr(S1) + d s^2 - 2 s tr(S1^{1/2}) when S2 = s^2 I (the two commute).
    """
    eig = torch.linalg.eigvalsh(cov.double()).clamp(min=0)
    d = len(eig)
    w2sq = (mean.double() - true_mean.double()).pow(2).sum() + eig.sum() + d * true_std**2 - 2 * true_std * eig.sqrt().sum()
    return float(w2sq.clamp(min=0).sqrt())


def toy_metrics(truth: ToyTruth, means: torch.Tensor, covs: torch.Tensor) -> dict[str, float]:
    """Class-averaged distance of the fitted mean to the true mean, and W2 to the truth."""
    k = len(truth.means)
    mean_err = sum(float((means[c] - truth.means[c].double()).norm()) for c in range(k)) / k
    w2 = sum(w2_gaussian(means[c], covs[c], truth.means[c], truth.std) for c in range(k)) / k
    return {"fitted_mean_error": mean_err, "w2_to_truth": w2}
