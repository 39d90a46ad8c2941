import pytest
import torch

from synthdata.data import ImageSet
from synthdata.errors import SpecError
from synthdata.generators import check_generator, create_generator
from synthdata.spec import DiffusionSpec, GaussianSpec


def gaussian_set(n_per_class=400, k=2, shape=(1, 2, 2), seed=0) -> tuple[ImageSet, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.linspace(-0.5, 0.5, k)[:, None] * torch.ones(k, shape[0] * shape[1] * shape[2])
    std = 0.1 * (torch.arange(k) + 1).float()
    labels = torch.arange(k).repeat_interleave(n_per_class)
    x = means[labels] + std[labels, None] * torch.randn(len(labels), means.shape[1], generator=g)
    return ImageSet(x.reshape(len(labels), *shape), labels, k), means, std


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_gaussian_recovers_class_means_and_spreads(covariance):
    data, means, std = gaussian_set()
    gen = create_generator(GaussianSpec(covariance=covariance, ridge=0.0), data.shape, 2)
    gen.fit(data, seed=0)
    labels = torch.arange(2).repeat_interleave(2000)
    x = gen.sample(labels, seed=1).flatten(1)
    assert x.shape == (4000, 4)
    train = data.images.flatten(1)
    for k in range(2):
        xk, tk = x[labels == k], train[data.labels == k]
        # The ML fit reproduces the training data's moments; 2000 samples pin them to ~1%.
        assert torch.allclose(xk.mean(0), tk.mean(0), atol=4 * float(std[k]) / 2000**0.5)
        assert torch.allclose(xk.std(0), tk.std(0), rtol=0.08)
        assert torch.allclose(tk.mean(0), means[k], atol=5 * float(std[k]) / 400**0.5)  # sanity of the fixture
    assert torch.equal(gen.sample(labels, seed=1), gen.sample(labels, seed=1))


def test_gaussian_ml_fit_is_biased_by_n_minus_1_over_n():
    data, _, _ = gaussian_set(n_per_class=5, k=2)
    ml = create_generator(GaussianSpec(covariance="diag", ridge=0.0), data.shape, 2)
    unbiased = create_generator(GaussianSpec(covariance="diag", ridge=0.0, unbiased=True), data.shape, 2)
    v_ml = ml.fit(data, seed=0)["fitted_variance"]
    v_unb = unbiased.fit(data, seed=0)["fitted_variance"]
    assert v_ml == pytest.approx(v_unb * 4 / 5)


def test_diffusion_trains_and_samples_class_conditionally():
    torch.set_num_threads(2)
    # Two classes that differ only in brightness: a conditional model must keep them apart.
    n = 256
    labels = torch.arange(2).repeat_interleave(n // 2)
    images = torch.where(labels[:, None, None, None] == 0, -0.6, 0.6) + 0.05 * torch.randn(n, 1, 8, 8)
    data = ImageSet(images.clamp(-1, 1), labels, 2)
    spec = DiffusionSpec(channels=(16, 32), train_steps=150, batch_size=64, lr=2e-3, warmup_steps=10, sampling_steps=10)
    gen = create_generator(spec, data.shape, 2)
    info = gen.fit(data, seed=0)
    assert info["generator_loss"] < 0.5
    out = gen.sample(torch.tensor([0] * 32 + [1] * 32), seed=0)
    assert out.shape == (64, 1, 8, 8) and out.min() >= -1 and out.max() <= 1
    assert out[:32].mean() < -0.2 and out[32:].mean() > 0.2


def test_diffusion_levels_must_fit_the_image_size():
    with pytest.raises(SpecError, match="divisible by 4"):
        check_generator(DiffusionSpec(channels=(16, 32, 32)), (1, 6, 6))
    check_generator(DiffusionSpec(channels=(16, 32, 32)), (1, 8, 8))
