"""Class-conditional diffusion generator: a diffusers UNet2DModel trained with DDPM, sampled with DDIM.

diffusers has no class-conditional pipeline, so training and sampling are written out
here in the style of the diffusers training examples: `num_class_embeds` on the UNet,
`class_labels` passed at every step.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

from synthdata import parallel
from synthdata.compute import autocast
from synthdata.data import ImageSet
from synthdata.generators import ProgressFn
from synthdata.imagestore import take
from synthdata.seeds import per_image, stacked_randn
from synthdata.spec import DiffusionSpec


def build_unet(spec: DiffusionSpec, shape: tuple[int, int, int], num_classes: int) -> UNet2DModel:
    """A small UNet with attention only at the lowest resolution (cheap at 8-32 px)."""
    channels, size = shape[0], shape[1]
    levels = len(spec.channels)
    attn_last = spec.attention and levels > 1
    down = ["DownBlock2D"] * (levels - 1) + ["AttnDownBlock2D" if attn_last else "DownBlock2D"]
    up = ["AttnUpBlock2D" if attn_last else "UpBlock2D"] + ["UpBlock2D"] * (levels - 1)
    groups = math.gcd(*spec.channels, 8)
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(spec.channels),
        layers_per_block=spec.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=groups,
        attention_head_dim=min(32, spec.channels[-1]),
        add_attention=spec.attention,
        # One more embedding for "no label" when the model is trained for guidance.
        num_class_embeds=num_classes + (1 if spec.cond_dropout > 0 else 0),
    )


Eps = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t, y) -> predicted noise
Correction = Eps  # (x_t, t, y) -> a term added to the predicted noise


def ddim_sample(eps: Eps, scheduler: DDIMScheduler, x: torch.Tensor, y: torch.Tensor, *,
                correction: Correction | None = None) -> torch.Tensor:
    """Run deterministic DDIM from noise `x` over `scheduler.timesteps`; return the images clamped to [-1, 1].

    The network runs without gradients; only `correction` (which may need them, to
    differentiate a classifier) runs with autograd on.
    """
    for t in scheduler.timesteps:
        with torch.no_grad():
            e = eps(x, t, y)
        if correction is not None:
            e = e + correction(x, t, y)
        x = scheduler.step(e, t, x, eta=0.0).prev_sample.detach()
    return x.clamp(-1, 1)


class DiffusionGenerator:
    data_parallel = True  # its fit takes its part of every batch (synthdata.parallel): resources.workers_per_arm applies

    def __init__(self, spec: DiffusionSpec, shape: tuple[int, int, int], num_classes: int, device: str = "cpu") -> None:
        self.spec = spec
        self.shape = shape
        self.num_classes = num_classes
        self.device = device
        self.model = build_unet(spec, shape, num_classes).to(device)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=spec.train_timesteps, beta_schedule=spec.beta_schedule, clip_sample=True
        )

    def fit(self, data: ImageSet, *, seed: int, progress: ProgressFn | None = None,
            init: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Train the UNet on `data` (noise prediction, MSE), keeping an EMA of the weights: from scratch, or from
        `init` (a state_dict: the previous generation's, or pretrained weights) with a fresh optimizer and schedule."""
        spec, model, device = self.spec, self.model, self.device
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # UNet init
        self.model = model = build_unet(spec, self.shape, self.num_classes).to(device)
        if init is not None:
            model.load_state_dict(init)
        images = data.images.to(device) if isinstance(data.images, torch.Tensor) else data.images  # lazy: read per step
        labels = data.labels.to(device)
        n = len(data)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
        lr_schedule = get_cosine_schedule_with_warmup(opt, min(spec.warmup_steps, spec.train_steps // 2), spec.train_steps)
        ema = EMAModel(model.parameters(), decay=spec.ema_decay, use_ema_warmup=True) if spec.ema_decay > 0 else None
        T = self.noise_scheduler.config.num_train_timesteps

        share = parallel.current()  # with resources.workers_per_arm > 1: this worker's part of every batch
        net = parallel.wrap(model, device)
        model.train()
        order, pos = torch.randperm(n, generator=g), 0
        running = None
        for step in range(spec.train_steps):
            if pos + spec.batch_size > n:  # new epoch
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos : pos + spec.batch_size].to(device)
            pos += spec.batch_size
            # Every draw is made for the whole batch and cut to this worker's part: the same steps for any number of workers.
            mine = share.part(len(idx))
            x0, y = take(images, idx[mine]).to(device), labels[idx][mine]
            if spec.cond_dropout > 0:  # label dropout: the same network learns the unconditional model
                drop = (torch.rand(len(idx), generator=g) < spec.cond_dropout)[mine].to(device)
                y = torch.where(drop, self.num_classes, y)
            noise = torch.randn((len(idx), *x0.shape[1:]), generator=g)[mine].to(device)
            t = torch.randint(0, T, (len(idx),), generator=g)[mine].to(device)
            xt = self.noise_scheduler.add_noise(x0, noise, t)
            with autocast(device):  # bf16 where the hardware gains from it (synthdata.compute); a no-op in fp32
                pred = net(xt, t, class_labels=y).sample
            loss = F.mse_loss(pred.float(), noise) * share.weight(len(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # of the averaged gradient: one value on all workers
            opt.step()
            lr_schedule.step()
            if ema is not None:
                ema.step(model.parameters())
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            # A worker's own loss may be finite where another's is not; the averaged gradient's norm is the same on all,
            # so all stop together.
            if not math.isfinite(running if share.world == 1 else float(norm)):
                raise FloatingPointError(f"diffusion training diverged at step {step} (loss {running})")
            if progress and step % 50 == 0:
                progress(step / spec.train_steps)
        running = parallel.mean(running)  # the workers' averages of their parts: the global batch's (the average is linear)
        if ema is not None:
            ema.copy_to(model.parameters())
        model.eval()
        if progress:
            progress(1.0)
        return {"generator_loss": float(running)}

    def _eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Noise prediction, with classifier-free guidance when `cfg_scale` != 1."""
        w = self.spec.cfg_scale
        with autocast(self.device):
            if w == 1.0:
                return self.model(x, t, class_labels=y).sample.float()
            null = torch.full_like(y, self.num_classes)
            eps_c, eps_u = self.model(torch.cat([x, x]), t, class_labels=torch.cat([y, null])).sample.float().chunk(2)
        return eps_u + w * (eps_c - eps_u)

    def sampler(self) -> DDIMScheduler:
        """The DDIM scheduler `sample` uses, with its timesteps set (guidance trains on exactly these)."""
        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config)
        scheduler.set_timesteps(self.spec.sampling_steps)
        return scheduler

    def sample(self, labels: torch.Tensor, *, seeds: torch.Tensor | None = None, seed: int | None = None,
               correction: Correction | None = None) -> torch.Tensor:
        """Deterministic DDIM (eta=0) in `sampling_steps` steps, in batches of `sample_batch_size`.

        Image i starts from noise drawn from seeds[i] alone (or from the set's seeds under
        `seed`), so the images do not depend on the batch size. `correction(x, t, y)`, when
        given, is added to the noise prediction at every step (detector guidance, see
        `synthdata.guidance`).
        """
        seeds = per_image(seeds, seed, len(labels))
        scheduler = self.sampler()
        out = []
        for chunk, chunk_seeds in zip(labels.split(self.spec.sample_batch_size), seeds.split(self.spec.sample_batch_size)):
            y = chunk.to(self.device)
            x = stacked_randn(chunk_seeds, self.shape).to(self.device)
            out.append(ddim_sample(self._eps, scheduler, x, y, correction=correction).cpu())
        return torch.cat(out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The sampled (EMA) UNet weights."""
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
        self.model.eval()

    def save_pretrained(self, directory: Path) -> None:
        """diffusers' format: `unet/` (the sampled, EMA, weights) and `scheduler/`, plus `synthdata.json` (the spec and data shape)."""
        self.model.save_pretrained(directory / "unet")
        self.noise_scheduler.save_pretrained(directory / "scheduler")
        meta = {"generator": self.spec.model_dump(mode="json"), "shape": list(self.shape), "num_classes": self.num_classes}
        (directory / "synthdata.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> "DiffusionGenerator":
        """A generator saved by `save_pretrained`, ready to sample."""
        meta = json.loads((Path(directory) / "synthdata.json").read_text())
        generator = cls(DiffusionSpec.model_validate(meta["generator"]), tuple(meta["shape"]), meta["num_classes"], device)
        generator.model = UNet2DModel.from_pretrained(Path(directory) / "unet").to(device).eval()
        generator.noise_scheduler = DDPMScheduler.from_pretrained(Path(directory) / "scheduler")
        return generator
