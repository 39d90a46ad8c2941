"""Detector guidance: steer a diffusion generator's sampling toward the real data with a noise-aware classifier.

A classifier D(x_t, t, y) is trained to tell noised real images from noised samples of
the trained generator, at the sampler's own timesteps. At its optimum its logit is the
log density ratio log p_real(x_t | y) / p_gen(x_t | y), whose gradient is exactly what
the generator's score lacks: score_real = score_gen + grad log ratio. With the noise
prediction eps = -sqrt(1 - alpha_bar_t) * score, a guided DDIM step uses

    eps_guided = eps - w * sqrt(1 - alpha_bar_t) * grad_x logit D(x_t, t, y)

w = 1 is the density-ratio correction (discriminator guidance, Kim et al. 2023); w > 1
steers harder, like classifier guidance's scale; w = 0 is plain sampling.

Guided samples must be judged by a detector trained afresh on them (the guiding
classifier is the one thing they were optimised to fool); the loops and the guide study
do that, and log the guiding classifier's own verdict beside it for contrast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.optimization import get_cosine_schedule_with_warmup

from synthdata.data import ImageSet
from synthdata.generators import ProgressFn, draw_samples
from synthdata.generators.diffusion import Correction, DiffusionGenerator
from synthdata.imagestore import as_tensor, is_lazy, take
from synthdata.seeds import Purpose, Scope, per_image, stream_seed
from synthdata.spec import GuidanceSpec


class _Stage(nn.Module):
    """Conv, then a FiLM scale and shift from the (timestep + class) embedding, SiLU.

    No normalization layer: GroupNorm or LayerNorm would subtract each image's own mean
    and so hide a global brightness shift, and BatchNorm would make one image's guidance
    depend on the others in its batch. The net is shallow enough to train without.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        return F.silu(self.conv(x) * (1 + scale) + shift)


class GuidingClassifier(nn.Module):
    """Real vs generated at noise level t: one logit, log p(real | x_t, t, y) / p(generated | x_t, t, y).

    Smooth activations (SiLU): its input gradient is what guides sampling. It runs in
    fp32 whatever the precision mode: it is small, and that gradient is the whole point.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int | None, width: int = 32) -> None:
        super().__init__()
        emb_dim = 4 * width
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_mlp = TimestepEmbedding(width, emb_dim)
        self.class_emb = nn.Embedding(num_classes, emb_dim) if num_classes else None
        stages, c, size = [_Stage(in_channels, width, emb_dim, 1)], width, image_size
        while size > 4 and c < width * 4:
            stages += [_Stage(c, 2 * c, emb_dim, 2), _Stage(2 * c, 2 * c, emb_dim, 1)]
            c, size = 2 * c, (size + 1) // 2
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).expand(len(x))  # a sampler's timestep is a CPU scalar
        emb = self.time_mlp(self.time_proj(t).to(x.dtype))
        if self.class_emb is not None and y is not None:
            emb = emb + self.class_emb(y)
        emb = F.silu(emb)
        for stage in self.stages:
            x = stage(x, emb)
        return self.head(x.mean(dim=(2, 3))).squeeze(1)


def create_guiding_classifier(spec: GuidanceSpec, shape: tuple[int, int, int], num_classes: int) -> GuidingClassifier:
    """An untrained guiding classifier for images of `shape` (class-conditional when `spec.class_conditional`)."""
    return GuidingClassifier(shape[0], shape[1], num_classes if spec.class_conditional else None, spec.width)


Held = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # noised images, timesteps, labels, truth (1 = real)


def _held_out(spec: GuidanceSpec, real: ImageSet, generated: ImageSet, timesteps: torch.Tensor, noise_scheduler,
              g: torch.Generator, device: str) -> tuple[ImageSet, ImageSet, Held | None]:
    """`spec.val_fraction` of both kinds held out, noised once at fixed timesteps; the rest to train on."""

    def split(s: ImageSet) -> tuple[ImageSet, ImageSet]:
        order = torch.randperm(len(s), generator=g)
        k = round(len(s) * spec.val_fraction) if len(s) > 10 else 0
        return s.subset(order[k:]), s.subset(order[:k])

    real, real_val = split(real)
    generated, gen_val = split(generated)
    if not (len(real_val) and len(gen_val)):
        return real, generated, None
    x0 = torch.cat([as_tensor(real_val.images, "guidance (held-out real images)"),
                    as_tensor(gen_val.images, "guidance (held-out samples)")])
    t = timesteps[torch.randint(0, len(timesteps), (len(x0),), generator=g)]
    xt = noise_scheduler.add_noise(x0, torch.randn(x0.shape, generator=g), t)
    truth = torch.cat([torch.ones(len(real_val)), torch.zeros(len(gen_val))])
    return real, generated, (xt.to(device), t.to(device), torch.cat([real_val.labels, gen_val.labels]).to(device), truth.to(device))


@torch.no_grad()
def _val_loss(model: GuidingClassifier, val: Held) -> float:
    return float(torch.cat([F.binary_cross_entropy_with_logits(model(xv, tv, yv), zv, reduction="none")
                            for xv, tv, yv, zv in zip(*(v.split(1024) for v in val))]).mean())


def train_guiding_classifier(spec: GuidanceSpec, real: ImageSet, generated: ImageSet, timesteps: torch.Tensor, noise_scheduler,
                             *, seed: int, device: str = "cpu", progress: ProgressFn | None = None
                             ) -> tuple[GuidingClassifier, dict[str, float]]:
    """Train a GuidingClassifier on real vs generated images noised at `timesteps` (the sampler's); return it and its figures.

    Every step sees `spec.batch_size` images of each kind, each at a timestep drawn
    uniformly from the sampler's: those are the only noise levels guidance queries.
    With `spec.val_fraction` > 0, that share of both kinds is held out (with fixed noise
    and timesteps) and the weights with the lowest validation loss are kept: a guiding
    classifier that has memorised its few real images steers toward them, not toward the data.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_guiding_classifier(spec, real.shape, real.num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = get_cosine_schedule_with_warmup(opt, min(100, spec.train_steps // 10), spec.train_steps)

    real, generated, val = _held_out(spec, real, generated, timesteps, noise_scheduler, g, device)
    # Sets held in memory move to the device once; a lazy set is read per step (only the step's images).
    x_real = real.images.to(device) if not is_lazy(real.images) else real.images
    x_gen = generated.images.to(device) if not is_lazy(generated.images) else generated.images
    y_real, y_gen = real.labels.to(device), generated.labels.to(device)
    check_every = max(25, spec.train_steps // 20)
    best = {"guiding_val_loss": float("inf"), "guiding_best_step": float(spec.train_steps)}
    best_state = None
    b = spec.batch_size
    target = torch.cat([torch.ones(b), torch.zeros(b)]).to(device)  # 1 = real
    running = None
    model.train()
    for step in range(1, spec.train_steps + 1):
        ir = torch.randint(0, len(x_real), (b,), generator=g).to(device)
        ig = torch.randint(0, len(x_gen), (b,), generator=g).to(device)
        x0 = torch.cat([take(x_real, ir).to(device), take(x_gen, ig).to(device)])
        y = torch.cat([y_real[ir], y_gen[ig]])
        t = timesteps[torch.randint(0, len(timesteps), (2 * b,), generator=g)].to(device)
        xt = noise_scheduler.add_noise(x0, torch.randn(x0.shape, generator=g).to(device), t)
        loss = F.binary_cross_entropy_with_logits(model(xt, t, y), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if val is not None and (step % check_every == 0 or step == spec.train_steps):
            val_loss = _val_loss(model, val)
            if val_loss < best["guiding_val_loss"]:
                best = {"guiding_val_loss": val_loss, "guiding_best_step": float(step)}
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress and step % 50 == 0:
            progress(step / spec.train_steps)
    if not math.isfinite(running):
        raise FloatingPointError(f"guiding classifier diverged (loss {running})")
    if best_state is not None:
        model.load_state_dict(best_state)
    info = {"guiding_loss": float(running), **(best if val is not None else {})}
    return model.eval(), info


def detector_correction(model: GuidingClassifier, alphas_cumprod: torch.Tensor, scale: float) -> Correction:
    """The guided DDIM step's noise correction: -scale * sqrt(1 - alpha_bar_t) * grad_x logit D(x_t, t, y)."""

    def correction(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(xg, t, y).sum(), xg)
        sigma = (1 - alphas_cumprod[int(t)]).sqrt().to(x.dtype)
        return -scale * sigma * grad

    return correction


@torch.no_grad()
def guiding_verdict(model: GuidingClassifier, real: ImageSet, generated: ImageSet, t: int, noise_scheduler, *, seed: int,
                   device: str = "cpu") -> float:
    """The guiding classifier's own held-out accuracy at timestep `t` (balanced: the first min(n) of each)."""
    g = torch.Generator().manual_seed(seed)
    n = min(len(real), len(generated))
    x0 = torch.cat([as_tensor(real.images[:n]), as_tensor(generated.images[:n])]).to(device)
    y = torch.cat([real.labels[:n], generated.labels[:n]]).to(device)
    tt = torch.full((2 * n,), t, dtype=torch.long, device=device)
    logits = torch.cat([model(chunk_x, chunk_t, chunk_y) for chunk_x, chunk_t, chunk_y in zip(
        noise_scheduler.add_noise(x0, torch.randn(x0.shape, generator=g).to(device), tt).split(1024), tt.split(1024), y.split(1024))])
    truth = torch.cat([torch.ones(n), torch.zeros(n)]).to(device)
    return float(((logits > 0).float() == truth).float().mean())


@dataclass
class GuidedGenerator:
    """A trained diffusion generator sampled with detector guidance at `scale` (0: as it is). Same methods as a Generator."""

    generator: DiffusionGenerator
    classifier: GuidingClassifier
    scale: float

    def sample(self, labels: torch.Tensor, *, seeds: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        """Guided samples, image i from seeds[i] (the same noise as the unguided generator's)."""
        correction = None
        if self.scale > 0:
            correction = detector_correction(self.classifier, self.generator.noise_scheduler.alphas_cumprod, self.scale)
        return self.generator.sample(labels, seeds=per_image(seeds, seed, len(labels)), correction=correction)

    def at(self, scale: float) -> "GuidedGenerator":
        """The same generator and classifier at another scale."""
        return GuidedGenerator(self.generator, self.classifier, scale)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator's weights (what a checkpoint restores; the guiding classifier is retrained from them)."""
        return self.generator.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.load_state_dict(state)

    def save_pretrained(self, directory: Path) -> None:
        """The generator's checkpoint (the guiding classifier is retrained from it)."""
        self.generator.save_pretrained(directory)


def with_guidance(generator: DiffusionGenerator, spec: GuidanceSpec, real: ImageSet, *, seed: int, generation: int = 0,
                  device: str = "cpu", progress: ProgressFn | None = None, storage: str | None = None,
                  in_memory_mb: float | None = None) -> tuple[GuidedGenerator, dict[str, float]]:
    """Train the guiding classifier for a fitted generator: `real` against its unguided samples.

    Returns the generator wrapped to sample at `spec.scale`, and the classifier's training
    figures (final training loss; best validation loss and its step). The samples are
    drawn (and quantized) as every other sample set is: to `storage` as shards when larger
    than `in_memory_mb`, and the classifier then reads them per step.
    """
    n = spec.train_samples or len(real)
    def seed_of(purpose: Purpose) -> int:
        return stream_seed(seed, purpose, generation, Scope.GUIDANCE)

    unguided = draw_samples(generator, n, real, label_seed=seed_of(Purpose.LABELS), sample_seed=seed_of(Purpose.SAMPLES),
                            context="generator diverged before guidance", storage=storage, in_memory_mb=in_memory_mb)
    timesteps = generator.sampler().timesteps
    model, info = train_guiding_classifier(spec, real, unguided, timesteps, generator.noise_scheduler, seed=seed_of(Purpose.FIT), device=device,
                              progress=progress)
    return GuidedGenerator(generator, model, spec.scale), info
