"""Toy generators: one Gaussian (or a Gaussian mixture) per class over flattened images.

Fast enough for hundreds of generations, and the Gaussian's collapse under
self-consumption has a closed form (the ML variance shrinks by (n-1)/n per `replace`
generation; sampling with temperature lambda multiplies it by lambda), so these are
how the loops are checked against theory. With `ridge: 0` a `replace` loop's variance
reaches 0 (its samples all alike in float32) and the fit becomes singular: `fit` then
raises `Collapsed`, which a loop records as the arm's end, not as an error.
"""
from __future__ import annotations

import torch

from synthdata.data import ImageSet
from synthdata.generators import Collapsed, ProgressFn
from synthdata.seeds import per_image, stacked_randn
from synthdata.spec import GaussianSpec, GMMSpec


def _cholesky(cov: torch.Tensor, what: str = "class") -> torch.Tensor:
    """Cholesky factors of a stack of covariances (..., D, D); `Collapsed` naming the first singular one (a `what`)."""
    chol, info = torch.linalg.cholesky_ex(cov)
    bad = torch.nonzero(info.reshape(-1)).flatten()
    if len(bad):
        k = int(bad[0])
        variance = float(torch.diagonal(cov.reshape(-1, *cov.shape[-2:])[k]).mean())
        raise Collapsed(f"the fitted covariance of {what} {k} is singular (mean variance {variance:.3g})")
    return chol


class GaussianGenerator:
    def __init__(self, spec: GaussianSpec, shape: tuple[int, int, int], num_classes: int, device: str = "cpu") -> None:
        self.spec = spec
        self.shape = shape
        self.num_classes = num_classes
        self.means: torch.Tensor | None = None  # (K, D) float64
        self.covs: torch.Tensor | None = None  # (K, D, D) float64, ridge included
        self._chols: torch.Tensor | None = None  # Cholesky factors of covs * temperature, once fitted or loaded

    def fit(self, data: ImageSet, *, seed: int, progress: ProgressFn | None = None) -> dict[str, float]:
        """Maximum-likelihood mean and covariance per class (the (n-1) covariance if `unbiased`)."""
        x = data.tensors()[0].reshape(len(data), -1).double()  # the fit needs every image at once
        d = x.shape[1]
        means, covs, variances = [], [], []
        for k in range(self.num_classes):
            xk = x[data.labels == k]
            if len(xk) < 2:
                raise ValueError(f"gaussian generator: class {k} has {len(xk)} training images, needs at least 2")
            mu = xk.mean(0)
            centred = xk - mu
            denom = len(xk) - 1 if self.spec.unbiased else len(xk)
            cov = centred.T @ centred / denom
            if self.spec.covariance == "diag":
                cov = torch.diag(torch.diagonal(cov))
            variances.append(torch.diagonal(cov).mean())
            means.append(mu)
            covs.append(cov + self.spec.ridge * torch.eye(d, dtype=x.dtype))
        self.means, self.covs = torch.stack(means), torch.stack(covs)
        # What `sample` needs, factored once here: a singular fit (ridge 0, variance collapsed to 0) stops at the fit.
        self._chols = _cholesky(self.covs * self.spec.temperature)
        if progress:
            progress(1.0)
        return {"fitted_variance": float(torch.stack(variances).mean())}

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class mean (K, D) and covariance (K, D, D) of what `sample` draws from."""
        return self.means, self.covs * self.spec.temperature

    def sample(self, labels: torch.Tensor, *, seeds: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        """One draw per label, image i's noise from seeds[i] (or from the set's seeds under `seed`)."""
        assert self.means is not None, "fit() first"
        z = stacked_randn(per_image(seeds, seed, len(labels)), (self.means.shape[1],), torch.float64)
        if self._chols is None:
            self._chols = _cholesky(self.covs * self.spec.temperature)
        chols = self._chols
        x = self.means[labels] + torch.einsum("nij,nj->ni", chols[labels], z)
        return x.float().reshape(len(labels), *self.shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"means": self.means.contiguous(), "covs": self.covs.contiguous()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.means, self.covs = state["means"].double(), state["covs"].double()
        self._chols = None


class GMMGenerator:
    """A Gaussian mixture per class, fitted by EM (scikit-learn)."""

    def __init__(self, spec: GMMSpec, shape: tuple[int, int, int], num_classes: int, device: str = "cpu") -> None:
        self.spec = spec
        self.shape = shape
        self.num_classes = num_classes
        self.weights: list[torch.Tensor] = []  # per class (C,)
        self.means: list[torch.Tensor] = []  # per class (C, D)
        self.covs: list[torch.Tensor] = []  # per class (C, D, D)

    def fit(self, data: ImageSet, *, seed: int, progress: ProgressFn | None = None) -> dict[str, float]:
        from sklearn.mixture import GaussianMixture

        x = data.tensors()[0].reshape(len(data), -1).double().numpy()  # the fit needs every image at once
        labels = data.labels.numpy()
        self.weights, self.means, self.covs = [], [], []
        for k in range(self.num_classes):
            xk = x[labels == k]
            if len(xk) < max(2, self.spec.components):
                raise ValueError(
                    f"gmm generator: class {k} has {len(xk)} training images, needs at least {max(2, self.spec.components)}"
                )
            gm = GaussianMixture(
                self.spec.components, covariance_type=self.spec.covariance, reg_covar=max(self.spec.ridge, 1e-9), random_state=seed
            ).fit(xk)
            covs = torch.from_numpy(gm.covariances_)
            if self.spec.covariance == "diag":
                covs = torch.diag_embed(covs)
            self.weights.append(torch.from_numpy(gm.weights_))
            self.means.append(torch.from_numpy(gm.means_))
            self.covs.append(covs)
        if progress:
            progress(1.0)
        _, cov = self.moments()
        return {"fitted_variance": float(torch.diagonal(cov, dim1=1, dim2=2).mean())}

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class mean and covariance of the mixture (law of total variance)."""
        means, covs = [], []
        t = self.spec.temperature
        for w, mu, cov in zip(self.weights, self.means, self.covs):
            m = (w[:, None] * mu).sum(0)
            centred = mu - m
            c = (w[:, None, None] * (t * cov + centred[:, :, None] * centred[:, None, :])).sum(0)
            means.append(m)
            covs.append(c)
        return torch.stack(means), torch.stack(covs)

    def sample(self, labels: torch.Tensor, *, seeds: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        """One draw per label: image i's component and noise from seeds[i] (or from the set's seeds under `seed`)."""
        seeds = per_image(seeds, seed, len(labels))
        d = self.means[0].shape[1]
        out = torch.empty(len(labels), d, dtype=torch.float64)
        g = torch.Generator()
        for k in labels.unique().tolist():
            idx = torch.nonzero(labels == k).flatten()
            comp = torch.empty(len(idx), dtype=torch.long)
            z = torch.empty(len(idx), d, dtype=torch.float64)
            for j, s in enumerate(seeds[idx].tolist()):  # each image's component, then its noise, from its own stream
                g.manual_seed(s)
                comp[j] = torch.multinomial(self.weights[k], 1, generator=g)[0]
                z[j] = torch.randn(d, generator=g, dtype=torch.float64)
            chols = _cholesky(self.covs[k] * self.spec.temperature, f"class {k}'s component")
            out[idx] = self.means[k][comp] + torch.einsum("nij,nj->ni", chols[comp], z)
        return out.float().reshape(len(labels), *self.shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{name}.{k}": t.contiguous()
            for k in range(self.num_classes)
            for name, t in (("weights", self.weights[k]), ("means", self.means[k]), ("covs", self.covs[k]))
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.weights = [state[f"weights.{k}"] for k in range(self.num_classes)]
        self.means = [state[f"means.{k}"] for k in range(self.num_classes)]
        self.covs = [state[f"covs.{k}"] for k in range(self.num_classes)]
