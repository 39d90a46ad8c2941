"""Classifiers trained from scratch: the detector (real vs generated) and the downstream model.

One small CNN and one training loop serve both; they differ only in labels and classes.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages, halving the resolution until it is at most 4x4, then global pooling."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c_out, size = in_channels, width, image_size
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        c_in = c_out
        while size > 4 and c_out < width * 8:
            c_out = c_in * 2
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            ]
            c_in, size = c_out, (size + 1) // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def create_classifier(spec, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the classifier named by `spec.name`."""
    registry = {"cnn": SmallCNN}
    return registry[spec.name](in_channels, num_classes, image_size, width=spec.width)


def train_classifier(
    spec,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    seed: int,
    device: str = "cpu",
    on_epoch: Callable[[int, nn.Module, float], None] | None = None,
) -> nn.Module:
    """Train a classifier from scratch with AdamW and a one-cycle schedule; return it in eval mode.

    `on_epoch(epoch, model, mean_loss)` is called after each epoch (1-based) with the
    model in eval mode, for per-epoch curves.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_classifier(spec, images.shape[1], num_classes, images.shape[-1]).to(device)
    n = len(labels)
    batch = min(spec.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total_steps = spec.steps or spec.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=total_steps)
    images, labels = images.to(device), labels.to(device)
    model.train()
    for epoch in range(1, -(-total_steps // steps_per_epoch) + 1):
        order = torch.randperm(n, generator=g).to(device)
        total = torch.zeros((), device=device)
        steps = min(steps_per_epoch, total_steps - (epoch - 1) * steps_per_epoch)  # the last pass may be partial
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        if on_epoch is not None:
            on_epoch(epoch, model.eval(), float(total) / steps)
            model.train()
    return model.eval()


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int = 1024, device: str = "cpu") -> torch.Tensor:
    """Logits for `images`, computed in batches."""
    return torch.cat([model(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)])
