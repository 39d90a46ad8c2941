"""Toy generator: one Gaussian per class over flattened images, fitted by maximum likelihood.

Fast enough for hundreds of generations, and its collapse under self-consumption has a
closed form (the variance shrinks by (n-1)/n per `replace` generation), so it is how
the loops are checked against theory.
"""
from __future__ import annotations

import torch

from synthdata.data import ImageSet
from synthdata.generators import Progress


class GaussianGenerator:
    def __init__(self, spec, shape: tuple[int, int, int], num_classes: int, device: str = "cpu") -> None:
        self.spec = spec
        self.shape = shape
        self.num_classes = num_classes
        self.means: torch.Tensor | None = None  # (K, D)
        self.chols: torch.Tensor | None = None  # (K, D, D), or (K, D) standard deviations for diag

    def fit(self, data: ImageSet, *, seed: int, progress: Progress | None = None) -> dict[str, float]:
        x = data.images.reshape(len(data), -1).double()
        d = x.shape[1]
        means, chols, variances = [], [], []
        for k in range(self.num_classes):
            xk = x[data.labels == k]
            if len(xk) < 2:
                raise ValueError(f"gaussian generator: class {k} has {len(xk)} training images, needs at least 2")
            mu = xk.mean(0)
            centred = xk - mu
            denom = len(xk) - 1 if self.spec.unbiased else len(xk)
            if self.spec.covariance == "diag":
                var = (centred**2).sum(0) / denom + self.spec.ridge
                chols.append(var.sqrt())
                variances.append(var.mean())
            else:
                cov = centred.T @ centred / denom + self.spec.ridge * torch.eye(d, dtype=x.dtype)
                chols.append(torch.linalg.cholesky(cov))
                variances.append(torch.diagonal(cov).mean())
            means.append(mu)
        self.means, self.chols = torch.stack(means), torch.stack(chols)
        if progress:
            progress(1.0)
        return {"fitted_variance": float(torch.stack(variances).mean())}

    def sample(self, labels: torch.Tensor, *, seed: int) -> torch.Tensor:
        assert self.means is not None, "fit() first"
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(len(labels), self.means.shape[1], generator=g, dtype=torch.float64)
        if self.spec.covariance == "diag":
            x = self.means[labels] + z * self.chols[labels]
        else:
            x = self.means[labels] + torch.einsum("nij,nj->ni", self.chols[labels], z)
        return x.float().reshape(len(labels), *self.shape).clamp(-1, 1)
