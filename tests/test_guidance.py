"""Detector guidance against closed-form answers.

For Gaussian data the noised marginals are Gaussian, so the generator's exact noise
prediction and the exact log density ratio are known. Guided DDIM with the exact ratio
must then land on the real distribution at scale 1, and (equal variances) on mean
m_gen + w (m_real - m_gen) at scale w. A learned guiding classifier must get most of
the way there, and a fresh detector must find the guided samples harder to tell from real.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from diffusers import DDIMScheduler, DDPMScheduler

from synthdata.data import ImageSet
from synthdata.generators.diffusion import ddim_sample
from synthdata.guidance import GuidedGenerator, detector_correction, guiding_verdict, with_guidance
from synthdata.seeds import per_image, stacked_randn
from synthdata.spec import GuidanceSpec

SHAPE = (1, 4, 4)


def _schedulers(steps: int) -> tuple[DDPMScheduler, DDIMScheduler]:
    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    sampler = DDIMScheduler.from_config(train.config)
    sampler.set_timesteps(steps)
    return train, sampler


class GaussianEps:
    """The exact noise prediction E[eps | x_t] for data N(mean, std^2 I), under a scheduler's alpha_bar."""

    def __init__(self, mean: float, std: float, alphas_cumprod: torch.Tensor) -> None:
        self.mean, self.var, self.ab = mean, std**2, alphas_cumprod

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.ab[int(t)]
        return ab.sqrt() * self.mean, ab * self.var + 1 - ab

    def __call__(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        mu, v = self.marginal(t)
        return (1 - self.ab[int(t)]).sqrt() * (x - mu) / v

    def log_density(self, x: torch.Tensor, t) -> torch.Tensor:
        mu, v = self.marginal(t)
        return (-0.5 * (x - mu) ** 2 / v).flatten(1).sum(1)


class ExactRatio(nn.Module):
    """A 'classifier' whose logit is the exact log p_real(x_t) / p_gen(x_t)."""

    def __init__(self, real: GaussianEps, gen: GaussianEps) -> None:
        super().__init__()
        self.real, self.gen = real, gen

    def forward(self, x, t, y=None):
        return self.real.log_density(x, t) - self.gen.log_density(x, t)


def _guided(real: GaussianEps, gen: GaussianEps, sampler: DDIMScheduler, scale: float, n: int = 4000) -> torch.Tensor:
    x = torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(0))
    correction = detector_correction(ExactRatio(real, gen), real.ab, scale) if scale else None
    return ddim_sample(gen, sampler, x, torch.zeros(n, dtype=torch.long), correction=correction)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_exact_ratio_moves_the_mean_by_the_scale(scale: float) -> None:
    train, sampler = _schedulers(100)
    m_gen, m_real, std = -0.3, 0.2, 0.15
    gen, real = GaussianEps(m_gen, std, train.alphas_cumprod), GaussianEps(m_real, std, train.alphas_cumprod)
    plain, x = _guided(real, gen, sampler, 0.0), _guided(real, gen, sampler, scale)
    assert float(plain.mean()) == pytest.approx(m_gen, abs=0.005)
    # Equal variances: every noised geometric mix p_gen^(1-w) p_real^w is the marginal of N(m_gen + w (m_real - m_gen), std^2).
    assert float(x.mean()) == pytest.approx(m_gen + scale * (m_real - m_gen), abs=0.005)
    # The spread stays (DDIM's own discretization shrinks both by the same few percent).
    assert float(x.std()) == pytest.approx(float(plain.std()), rel=0.03)


def test_exact_ratio_at_scale_one_is_sampling_the_real_model() -> None:
    """With the exact ratio, guided sampling of the generator is plain sampling of the real data's model, step by step."""
    train, sampler = _schedulers(50)
    gen, real = GaussianEps(0.3, 0.1, train.alphas_cumprod), GaussianEps(-0.1, 0.25, train.alphas_cumprod)
    guided = _guided(real, gen, sampler, 1.0)
    x = torch.randn((4000, *SHAPE), generator=torch.Generator().manual_seed(0))
    of_real = ddim_sample(real, sampler, x, torch.zeros(4000, dtype=torch.long))
    torch.testing.assert_close(guided, of_real, atol=1e-4, rtol=1e-4)
    assert float(guided.mean()) == pytest.approx(-0.1, abs=0.01)
    assert float(_guided(real, gen, sampler, 0.0).std()) < 0.12 < 0.22 < float(guided.std())


class AnalyticGenerator:
    """A 'trained diffusion generator' whose noise prediction is exact for N(mean, std^2): what with_guidance needs of one."""

    def __init__(self, mean: float, std: float, steps: int = 25) -> None:
        self.noise_scheduler, self._sampler = _schedulers(steps)
        self.eps = GaussianEps(mean, std, self.noise_scheduler.alphas_cumprod)
        self.steps = steps

    def sampler(self) -> DDIMScheduler:
        return _schedulers(self.steps)[1]

    def sample(self, labels: torch.Tensor, *, seeds=None, seed=None, correction=None) -> torch.Tensor:
        x = stacked_randn(per_image(seeds, seed, len(labels)), SHAPE)  # image i's noise from its own seed
        return ddim_sample(self.eps, self.sampler(), x, labels, correction=correction)


def test_learned_guide_pulls_samples_toward_the_real_data() -> None:
    """A GuidingClassifier trained on real vs generated (never told the answer) closes most of a mean gap."""
    from synthdata.metrics.detectability import detectability
    from synthdata.spec import ClassifierSpec

    g = torch.Generator().manual_seed(1)
    n = 2000
    m_real, m_gen, std = 0.25, -0.05, 0.2
    real = ImageSet(m_real + std * torch.randn((n, *SHAPE), generator=g), torch.zeros(n, dtype=torch.long), 1, None)
    heldout = ImageSet(m_real + std * torch.randn((n, *SHAPE), generator=g), torch.zeros(n, dtype=torch.long), 1, None)
    generator = AnalyticGenerator(m_gen, std)
    spec = GuidanceSpec(scale=1.0, train_steps=600, batch_size=128, width=16, lr=3e-3)
    guided, info = with_guidance(generator, spec, real, seed=0)
    assert isinstance(guided, GuidedGenerator) and info["guiding_loss"] < 0.69

    labels = torch.zeros(n, dtype=torch.long)
    plain = guided.at(0.0).sample(labels, seed=5)
    steered = guided.sample(labels, seed=5)  # same noise, same labels
    gap_before, gap_after = m_real - float(plain.mean()), m_real - float(steered.mean())
    assert gap_before == pytest.approx(m_real - m_gen, abs=0.02)
    assert abs(gap_after) < 0.25 * gap_before, (gap_before, gap_after)

    # The guiding classifier at the last step knows unguided samples from real ones.
    t_last = int(generator.sampler().timesteps[-1])
    plain_set = ImageSet(plain, labels, 1, None)
    assert guiding_verdict(guided.classifier, heldout, plain_set, t_last, generator.noise_scheduler, seed=0) > 0.7

    # A fresh detector, trained after sampling, finds the guided samples harder to tell from real.
    detector = ClassifierSpec(epochs=4, batch_size=128, width=32)
    half = n // 2

    def fresh(images: torch.Tensor) -> float:
        return detectability(real.images[:half], images[:half], heldout.images[:half], images[half:], detector, seed=0).accuracy

    assert fresh(steered) < fresh(plain) - 0.1


def test_guidance_on_sets_too_large_to_hold_reads_shards_per_step_and_trains_the_same_classifier(tmp_path) -> None:
    """Unguided samples over `in_memory_mb` go to shards, the classifier reads both sets a step at a time: same weights."""
    from synthdata.imagestore import LazyImages, TensorStore, is_lazy

    g = torch.Generator().manual_seed(2)
    n = 300
    images = 0.25 + 0.2 * torch.randn((n, *SHAPE), generator=g)
    real = ImageSet(images, torch.zeros(n, dtype=torch.long), 1, None)
    lazy_real = ImageSet(LazyImages(TensorStore(images)), real.labels, 1, None)
    spec = GuidanceSpec(scale=1.0, train_steps=60, batch_size=32, width=8, lr=3e-3, val_fraction=0.1)
    held, info_held = with_guidance(AnalyticGenerator(-0.05, 0.2), spec, real, seed=0)
    stored, info_stored = with_guidance(AnalyticGenerator(-0.05, 0.2), spec, lazy_real, seed=0,
                                        storage=str(tmp_path / "unguided"), in_memory_mb=0.001)
    assert (tmp_path / "unguided" / "manifest.json").is_file() and not is_lazy(real.images) and is_lazy(lazy_real.images)
    assert info_held == info_stored
    for (name, a), b in zip(held.classifier.state_dict().items(), stored.classifier.state_dict().values()):
        assert torch.equal(a, b), name
