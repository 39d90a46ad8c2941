"""Per-image seeds: every sampled image is drawn from its own seed, so a sample set is the same image for image
however it is cut into calls, batches or workers."""
from __future__ import annotations

import pytest
import torch

from synthdata.data import ImageSet, load_digits_set
from synthdata.generators import create_generator, draw_samples
from synthdata.seeds import SEED_GROUP, image_seeds, stacked_randn
from synthdata.spec import GaussianSpec, GMMSpec


def test_image_seeds_depend_on_the_set_seed_and_the_index_only():
    whole = image_seeds(7, 0, 10_000)
    assert torch.equal(whole, torch.cat([image_seeds(7, 0, 3), image_seeds(7, 3, 4_997), image_seeds(7, 5_000, 5_000)]))
    assert len(set(whole.tolist()) | set(image_seeds(8, 0, 10_000).tolist())) == 20_000  # no two images share a seed
    assert whole.dtype == torch.int64 and bool((whole >= 0).all())
    noise = stacked_randn(whole[:500], (3, 4))
    assert torch.equal(noise[123], stacked_randn(whole[123:124], (3, 4))[0])  # row i from seed i alone
    assert abs(float(noise.mean())) < 0.1 and abs(float(noise.std()) - 1) < 0.05


class _PerImage:
    """A plug-in that takes per-image seeds (the protocol's form)."""

    def sample(self, labels: torch.Tensor, *, seeds: torch.Tensor) -> torch.Tensor:
        return stacked_randn(seeds, (1, 4, 4)).tanh() + 0 * labels[:, None, None, None]


class _OneSeed:
    """A plug-in whose sample takes one seed per call (the older form): drawn per group of SEED_GROUP images."""

    def sample(self, labels: torch.Tensor, *, seed: int) -> torch.Tensor:
        return torch.rand((len(labels), 1, 4, 4), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("generator", [_PerImage(), _OneSeed()], ids=["seeds", "seed"])
def test_a_sample_set_does_not_depend_on_how_many_images_each_call_draws(monkeypatch, generator):
    import synthdata.generators as generators

    real = ImageSet(torch.zeros(20, 1, 4, 4), torch.arange(20) % 4, 4, 256)
    sets = []
    for images_per_call in (SEED_GROUP // 2, SEED_GROUP, 10_000):
        monkeypatch.setattr(generators, "SAMPLE_CHUNK_BYTES", 4 * 16 * images_per_call)
        sets.append(draw_samples(generator, 3 * SEED_GROUP + 17, real, label_seed=1, sample_seed=2))
    for other in sets[1:]:
        assert torch.equal(sets[0].images, other.images) and torch.equal(sets[0].labels, other.labels)
    assert not torch.equal(sets[0].images, draw_samples(generator, 3 * SEED_GROUP + 17, real, label_seed=1, sample_seed=3).images)


@pytest.mark.parametrize("spec", [GaussianSpec(covariance="diag"), GaussianSpec(covariance="full"), GMMSpec(components=3)],
                         ids=["gaussian-diag", "gaussian-full", "gmm"])
def test_a_builtin_draws_each_image_from_its_own_seed(spec):
    real = load_digits_set().subset(torch.arange(600))
    generator = create_generator(spec, real.shape, real.num_classes)
    generator.fit(real, seed=0)
    labels, seeds = torch.arange(40) % 10, image_seeds(5, 0, 40)
    whole = generator.sample(labels, seeds=seeds)
    one_by_one = torch.cat([generator.sample(labels[i : i + 1], seeds=seeds[i : i + 1]) for i in range(40)])
    torch.testing.assert_close(whole, one_by_one, rtol=1e-6, atol=1e-6)  # per-class Cholesky batched vs not
    assert torch.equal(generator.sample(labels, seed=5), whole)  # `seed` alone: the seeds of a set drawn with it


def test_the_diffusion_generator_and_the_vae_plugin_draw_each_image_from_its_own_seed():
    from synthdata.spec import DiffusionSpec, PluginSpec

    real = load_digits_set().subset(torch.arange(200))
    labels, seeds = torch.arange(12) % 10, image_seeds(9, 0, 12)
    diffusion = DiffusionSpec(channels=[8, 16], train_steps=2, batch_size=32, sampling_steps=3, sample_batch_size=5)
    vae = PluginSpec(name="vae", params={"latent": 4, "hidden": 16, "train_steps": 2, "batch_size": 32})
    for spec in (diffusion, vae):
        generator = create_generator(spec, real.shape, real.num_classes)
        generator.fit(real, seed=0)
        whole = generator.sample(labels, seeds=seeds)
        reversed_order = generator.sample(labels.flip(0), seeds=seeds.flip(0)).flip(0)
        torch.testing.assert_close(whole, reversed_order, rtol=1e-4, atol=1e-4)  # batch composition moves nothing
