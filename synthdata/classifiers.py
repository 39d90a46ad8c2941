"""Classifiers: the detector (real vs generated) and the downstream model.

A small CNN, or any timm backbone by name (trained from scratch, or from a local
weights file), and one training loop for all: AdamW with a one-cycle schedule,
optional crop/flip augmentation, and an optional validation split for early stopping.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from synthdata import parallel
from synthdata.compute import autocast
from synthdata.imagestore import Images, iter_batches
from synthdata.spec import AugmentSpec, ClassifierSpec


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


class TimmClassifier(nn.Module):
    """A timm backbone adapted to small images: inputs under 32 px are upsampled to 32, ViTs get 4-px patches."""

    def __init__(self, name: str, in_channels: int, num_classes: int, image_size: int, pretrained: str | None = None) -> None:
        super().__init__()
        import timm

        self.size = max(32, image_size)
        kwargs: dict = {"num_classes": num_classes, "in_chans": in_channels}
        if name.startswith(("vit", "deit")):
            kwargs.update(img_size=self.size, patch_size=4 if self.size <= 64 else 16)
        if pretrained:  # a local file only: nothing is fetched from a hub at run time
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)})
        self.model = timm.create_model(name, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x)


def create_classifier(spec: ClassifierSpec, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the classifier named by `spec.name`: `cnn`, a timm model name (`resnet18`, `convnext_tiny`, ...), or your own
    factory (a registered name or `package.module:factory`, through `synthdata.plugins`)."""
    from synthdata.plugins import is_import_path, registered, resolve

    if spec.name == "cnn":
        return SmallCNN(in_channels, num_classes, image_size, width=spec.width)
    if is_import_path(spec.name) or spec.name in registered("classifier"):
        model = resolve("classifier", spec.name, "classifier name")(in_channels=in_channels, num_classes=num_classes,
                                                                     image_size=image_size, **spec.params)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{spec.name} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    pretrained = spec.pretrained
    return TimmClassifier(spec.name, in_channels, num_classes, image_size, str(pretrained) if pretrained else None)


def augment_batch(x: torch.Tensor, crop_padding: int, flip: bool, g: torch.Generator, part: slice | None = None,
                  drawn: int | None = None) -> torch.Tensor:
    """Random crops after reflect padding (one offset per image) and random horizontal flips.

    `x` may be `part` of a batch of `drawn` images (a worker's, `synthdata.parallel`): the
    draws are made for the whole batch and cut, so every image gets what one process gives it."""
    n, _, h, w = x.shape
    part, drawn = part or slice(0, n), drawn or n
    if crop_padding > 0:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        dy = torch.randint(0, 2 * p + 1, (drawn,), generator=g)[part]
        dx = torch.randint(0, 2 * p + 1, (drawn,), generator=g)[part]
        rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
        cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
        idx = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(drawn, generator=g) < 0.5)[part].to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def _validation_split(n: int, fraction: float, labels: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a stratified validation split (each class in proportion) and of the rest."""
    val, train = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train), torch.cat(val)


def _pass(model: nn.Module, opt: torch.optim.Optimizer, sched, images: Images, labels: torch.Tensor, order: torch.Tensor,
          steps: int, batch: int, augment: AugmentSpec, g: torch.Generator, device: str) -> torch.Tensor:
    """One pass of `steps` batches in `order`; returns the summed loss (on the device, read once per epoch).

    A lazy set is read batch by batch (in `data.loader_workers` processes when set). In a shared
    call (`synthdata.parallel`) each worker reads and trains on its part of every batch."""
    share = parallel.current()
    total = torch.zeros((), device=device)
    index = [order[i * batch : (i + 1) * batch] for i in range(steps)]
    parts = [share.part(len(idx)) for idx in index]
    for idx, mine, x in zip(index, parts, iter_batches(images, [idx[mine] for idx, mine in zip(index, parts)])):
        x = x.to(device)
        if augment.crop_padding or augment.flip:
            x = augment_batch(x, augment.crop_padding, augment.flip, g, mine, len(idx))
        with autocast(device):  # bf16 where the hardware gains from it (synthdata.compute); a no-op in fp32
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels[idx][mine]) * share.weight(len(idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.detach()
    return total


@parallel.shared
def train_classifier(
    spec: ClassifierSpec,
    images: Images,
    labels: torch.Tensor,
    num_classes: int,
    *,
    seed: int,
    device: str = "cpu",
    on_epoch: Callable[[int, nn.Module, float], None] | None = None,
) -> nn.Module:
    """Train a classifier from scratch with AdamW and a one-cycle schedule; return it in eval mode.

    With `spec.val_fraction` > 0 a stratified validation split is held out; the model
    returned is the one with the lowest validation loss after the schedule's warm-up, and
    with `spec.patience` set, training stops after that many checks without improvement. `on_epoch(epoch, model,
    mean_loss)` is called after each epoch (1-based) with the model in eval mode. `images` are a tensor (moved to
    the device once) or a lazy set (`synthdata.imagestore.LazyImages`, read per batch).

    In an arm with `resources.workers_per_arm` > 1 it trains in all of the arm's workers at once
    (`synthdata.parallel`: each takes its part of every batch; the arm alone calls `on_epoch`).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_classifier(spec, images.shape[1], num_classes, images.shape[-1]).to(device)
    val_fraction = spec.val_fraction
    x_val = y_val = None
    if val_fraction > 0:
        tr, va = _validation_split(len(labels), val_fraction, labels, g)
        x_val, y_val = images[va], labels[va].to(device)
        x_val = x_val.to(device) if isinstance(x_val, torch.Tensor) else x_val
        images, labels = images[tr], labels[tr]
    n = len(labels)
    batch = min(spec.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total_steps = spec.train_steps or spec.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=total_steps)
    images = images.to(device) if isinstance(images, torch.Tensor) else images  # a lazy set is read per batch
    labels = labels.to(device)
    best, best_state, stale = float("inf"), None, 0
    net = parallel.wrap(model, device)  # DDP in a shared call
    # Validate about once per epoch's worth of steps (with a `steps` budget on a small set,
    # a pass is only a step or two: checking every pass would be noise). Epochs inside the
    # one-cycle warm-up are never picked: a near-untrained model has a low loss only
    # because it is unsure, and a biased one predicts a single class.
    check_every = max(1, total_steps // spec.epochs) if spec.train_steps else steps_per_epoch
    warmup = int(0.3 * total_steps)  # OneCycleLR's pct_start
    done, last_check = 0, 0
    epochs = -(-total_steps // steps_per_epoch)
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=g).to(device)
        steps = min(steps_per_epoch, total_steps - (epoch - 1) * steps_per_epoch)  # the last pass may be partial
        total = parallel.mean(float(_pass(net, opt, sched, images, labels, order, steps, batch, spec.augment, g, device)))
        if on_epoch is not None:
            on_epoch(epoch, model.eval(), total / steps)
        done += steps
        if x_val is not None and done >= warmup and (done - last_check >= check_every or epoch == epochs):
            last_check = done
            # Averaged: BatchNorm's statistics differ a little between workers, and all must pick the same epoch.
            val_loss = parallel.mean(float(F.cross_entropy(predict_logits(model.eval(), x_val, device=device), y_val.cpu())))
            if val_loss < best - 1e-4:
                best, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if spec.patience is not None and stale >= spec.patience:
                    break
        model.train()
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


@torch.no_grad()
def predict_logits(model: nn.Module, images: Images, *, batch_size: int | None = None, device: str = "cpu") -> torch.Tensor:
    """Logits for `images` (a tensor or a lazy set), computed in batches: by default about 2^20 pixel values per batch
    (1024 digits; 341 CIFAR images), so a batch's activations stay a few hundred MB whatever the image size."""
    if batch_size is None:
        batch_size = max(16, min(1024, 2**20 // max(1, int(torch.tensor(images.shape[1:]).prod()))))
    with autocast(device):
        return torch.cat([model(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)])
