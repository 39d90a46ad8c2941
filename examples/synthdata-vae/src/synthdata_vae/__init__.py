"""A class-conditional VAE (Kingma & Welling 2014; Sohn et al. 2015), as a synthdata generator plug-in.

It uses nothing of synthdata but the interface every generator follows: built as
`ConditionalVAE(shape=(C, H, W), num_classes=K, device=..., **params)`, then
`fit(data, seed=..., progress=..., init=...)` on an image set (`len(data)`, `.labels` (N,), and
`data.take(index)`: those images as (n, C, H, W) floats in [-1, 1], read from disk when the set is
too large to hold), `sample(labels, seeds=...)` (one seed per image), and `state_dict` / `load_state_dict`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Net(nn.Module):
    """Encoder q(z | x, y) and decoder p(x | z, y), both MLPs over flattened images and a one-hot label."""

    def __init__(self, dim: int, num_classes: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = nn.Sequential(nn.Linear(dim + num_classes, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.mean = nn.Linear(hidden, latent)
        self.log_var = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent + num_classes, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, dim))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(torch.cat([z, F.one_hot(y, self.num_classes).float()], 1)))

    def forward(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([x, F.one_hot(y, self.num_classes).float()], 1))
        mean, log_var = self.mean(h), self.log_var(h).clamp(-10, 10)
        return self.decode(mean + noise * (0.5 * log_var).exp(), y), mean, log_var


class ConditionalVAE:
    """A class-conditional VAE for small images. `beta` weighs the KL term; `train_steps` of Adam at batch `batch_size`."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, device: str = "cpu", *, latent: int = 16,
                 hidden: int = 256, train_steps: int = 2000, batch_size: int = 128, lr: float = 1e-3, beta: float = 1.0) -> None:
        self.shape, self.num_classes, self.device = tuple(shape), num_classes, device
        self.latent, self.hidden, self.train_steps, self.batch_size, self.lr, self.beta = latent, hidden, train_steps, batch_size, lr, beta
        self.net = self._new_net(seed=0)

    def _new_net(self, seed: int) -> _Net:
        torch.manual_seed(seed)  # the weights' initialisation is part of the replicate
        dim = self.shape[0] * self.shape[1] * self.shape[2]
        return _Net(dim, self.num_classes, self.hidden, self.latent).to(self.device)

    def fit(self, data, *, seed: int, progress: Callable[[float], None] | None = None,
            init: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Train on `data` (every random draw from `seed`), from scratch or from the weights `init` (a warm start:
        the previous generation's, or pretrained ones); return the final loss per image."""
        self.net = self._new_net(seed)
        if init is not None:
            self.net.load_state_dict(init)
        n, y = len(data), data.labels.to(self.device)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        loss_value = float("nan")
        for step in range(self.train_steps):
            idx = torch.randint(0, n, (min(self.batch_size, n),), generator=g)
            x = data.take(idx).reshape(len(idx), -1).to(self.device)  # a batch: read from disk when the set is large
            noise = torch.randn(len(idx), self.latent, generator=g).to(self.device)
            recon, mean, log_var = self.net(x, y[idx], noise)
            # Gaussian likelihood with unit variance (sum over pixels) plus the KL to N(0, I), per image.
            rec = 0.5 * ((recon - x) ** 2).sum(1).mean()
            kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1).mean()
            loss = rec + self.beta * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
            if progress is not None and step % 100 == 0:
                progress(step / self.train_steps)
        return {"final_loss": loss_value}

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, *, seeds: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        """One image per label, (N, C, H, W) in [-1, 1]: image i's z ~ N(0, I) from seeds[i] alone, decoded.

        synthdata passes `seeds` (one per image), so the images do not depend on how a set is
        batched or spread over workers; `seed` alone (calling it by hand) draws every z from one stream.
        """
        if seeds is not None:
            z = torch.empty(len(labels), self.latent)
            g = torch.Generator()
            for i, s in enumerate(seeds.tolist()):
                g.manual_seed(int(s))
                z[i] = torch.randn(self.latent, generator=g)
        else:
            z = torch.randn(len(labels), self.latent, generator=torch.Generator().manual_seed(seed))
        z = z.to(self.device)
        self.net.eval()
        out = self.net.decode(z, labels.to(self.device)).reshape(len(labels), *self.shape)
        self.net.train()
        return out.cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)
