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


@pytest.fixture(scope="module")
def two_class_diffusion():
    """One small class-conditional model, trained with label dropout so it can also be guided.

    Two classes that differ only in brightness: a conditional model must keep them apart.
    """
    n = 256
    labels = torch.arange(2).repeat_interleave(n // 2)
    images = torch.where(labels[:, None, None, None] == 0, -0.3, 0.3) + 0.05 * torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = ImageSet(images.clamp(-1, 1), labels, 2)
    spec = DiffusionSpec(channels=(16, 32), train_steps=150, batch_size=64, lr=2e-3, warmup_steps=10, sampling_steps=10, cond_dropout=0.2)
    gen = create_generator(spec, data.shape, 2)
    info = gen.fit(data, seed=0)
    return gen, spec, data, info


def test_diffusion_trains_and_samples_class_conditionally(two_class_diffusion):
    gen, _, _, info = two_class_diffusion
    assert info["generator_loss"] < 0.5
    out = gen.sample(torch.tensor([0] * 32 + [1] * 32), seed=0)
    assert out.shape == (64, 1, 8, 8) and out.min() >= -1 and out.max() <= 1
    assert out[:32].mean() < -0.1 and out[32:].mean() > 0.1


def test_diffusion_levels_must_fit_the_image_size():
    with pytest.raises(SpecError, match="divisible by 4"):
        check_generator(DiffusionSpec(channels=(16, 32, 32)), (1, 6, 6))
    check_generator(DiffusionSpec(channels=(16, 32, 32)), (1, 8, 8))


def test_gaussian_temperature_scales_the_sampled_covariance():
    data, _, _ = gaussian_set()
    hot = create_generator(GaussianSpec(ridge=0.0, temperature=4.0), data.shape, 2)
    hot.fit(data, seed=0)
    x = hot.sample(torch.zeros(20000, dtype=torch.long), seed=0).flatten(1)
    train = data.images.flatten(1)[data.labels == 0]
    assert torch.allclose(x.std(0), 2 * train.std(0, correction=0), rtol=0.05)  # sqrt(4) times the spread
    mean, cov = hot.moments()
    assert torch.allclose(torch.diagonal(cov[0]), 4 * train.double().var(0, correction=0), rtol=1e-6)


def test_gmm_fits_a_two_mode_class_and_reports_its_moments():
    from synthdata.spec import GMMSpec

    g = torch.Generator().manual_seed(0)
    modes = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    idx = torch.arange(600) % 2
    x = modes[idx] + 0.2 * torch.randn(600, 2, generator=g)
    data = ImageSet(x[:, :, None, None], torch.zeros(600, dtype=torch.long), 1, levels=None)
    gen = create_generator(GMMSpec(components=2), data.shape, 1)
    gen.fit(data, seed=0)
    s = gen.sample(torch.zeros(4000, dtype=torch.long), seed=1).flatten(1)
    assert ((s[:, 0] > 0).float().mean() - 0.5).abs() < 0.05  # both modes, equally
    assert (s[:, 0].abs() - 2).abs().median() < 0.2  # and not the gap between them
    mean, cov = gen.moments()
    assert torch.allclose(mean[0], x.double().mean(0), atol=0.05)
    assert cov[0, 0, 0] == pytest.approx(float(x[:, 0].double().var()), rel=0.05)  # law of total variance
    with pytest.raises(ValueError, match="needs at least 2"):
        create_generator(GMMSpec(components=2), data.shape, 2).fit(data, seed=0)  # class 1 has no data


def test_classifier_free_guidance_sharpens_class_separation(two_class_diffusion):
    gen, spec, data, _ = two_class_diffusion
    y = torch.tensor([0] * 32 + [1] * 32)
    plain = gen.sample(y, seed=0)
    gen.spec = spec.model_copy(update={"cfg_scale": 3.0})
    guided = gen.sample(y, seed=0)
    gen.spec = spec
    gap = lambda x: float(x[32:].mean() - x[:32].mean())  # noqa: E731
    assert gap(plain) > 0.2
    assert gap(guided) > gap(plain)  # guidance pushes samples further toward their class
    state = gen.state_dict()
    fresh = create_generator(spec, data.shape, 2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.sample(y, seed=0), plain)


def test_non_finite_diffusion_loss_stops_training_with_the_step():
    # One non-finite pixel (an overflowed sample fed back by a loop) makes the loss NaN at once.
    images = torch.zeros(64, 1, 8, 8)
    images[5, 0, 3, 3] = float("inf")
    spec = DiffusionSpec(channels=(8, 16), train_steps=20, batch_size=64, warmup_steps=0, attention=False)
    with pytest.raises(FloatingPointError, match="diffusion training diverged at step 0"):
        create_generator(spec, (1, 8, 8), 2).fit(ImageSet(images, torch.arange(64) % 2, 2), seed=0)
