"""Metrics against cases whose answer is known."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import norm

from synthdata.data import make_splits
from synthdata.metrics.detectability import c2st_stats, detectability, real_vs_real
from synthdata.metrics.downstream import downstream_accuracy
from synthdata.metrics.stats import accuracy_with_ci, p_value_above_chance
from synthdata.spec import ClassifierSpec, DataSpec

DET = ClassifierSpec(epochs=8)


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(2)
    return make_splits(DataSpec(), seed=0)


def gaussian_jsd(mu: float) -> float:
    """JSD (nats) between N(-mu, 1) and N(mu, 1), by numerical integration."""
    p, q = norm(-mu, 1).pdf, norm(mu, 1).pdf

    def integrand(x: float) -> float:
        m = 0.5 * (p(x) + q(x))
        return 0.5 * p(x) * math.log(p(x) / m) + 0.5 * q(x) * math.log(q(x) / m)

    return quad(integrand, -12 - mu, 12 + mu)[0]


def test_bayes_optimal_detector_gives_closed_form_accuracy_and_jsd():
    """Two 1-D Gaussians: the posterior is known, so accuracy is Phi(mu) and ln2 - BCE is the JSD."""
    mu, n = 0.5, 200_000
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], n // 2)
    x = rng.normal(np.where(y == 1, mu, -mu), 1.0)
    p_generated = 1 / (1 + np.exp(-2 * mu * x))  # exact posterior P(y=1 | x)
    s = c2st_stats(p_generated, y)
    assert s.accuracy == pytest.approx(norm.cdf(mu), abs=0.004)
    assert s.ci_low < norm.cdf(mu) < s.ci_high
    assert s.jsd_lower_bound == pytest.approx(gaussian_jsd(mu), abs=0.003)
    assert s.auc == pytest.approx(norm.cdf(2 * mu / math.sqrt(2)), abs=0.004)  # P(X1 > X0)


def test_uninformative_detector_has_zero_jsd_and_chance_accuracy():
    y = np.repeat([0, 1], 500)
    s = c2st_stats(np.full(1000, 0.5), y)
    assert s.jsd_lower_bound == 0.0
    assert s.mean_bce == pytest.approx(math.log(2))
    assert s.auc == pytest.approx(0.5)


def test_exact_binomial_interval_and_p_value():
    acc = accuracy_with_ci(60, 100)
    assert acc.value == 0.6
    assert acc.ci_low == pytest.approx(0.4972, abs=1e-3) and acc.ci_high == pytest.approx(0.6967, abs=1e-3)
    # P(X >= 60 | n=100, p=0.5)
    assert p_value_above_chance(60, 100) == pytest.approx(0.02844, abs=1e-4)


def test_identical_distributions_are_undetectable(digits):
    """Real vs real: two disjoint halves of the same data come out near 0.5.

    One run's 95% interval misses 0.5 one time in twenty by design, so take five
    seeds: their mean accuracy (SE ~0.012) must sit near 0.5, and at most one interval
    may exclude it (P(two or more) ~ 2%)."""
    runs = [real_vs_real(digits.train.images, digits.heldout.images, DET, seed=s) for s in range(5)]
    mean = sum(d.accuracy for d in runs) / len(runs)
    assert abs(mean - 0.5) < 0.04, [d.accuracy for d in runs]
    assert sum(not (d.ci_low < 0.5 < d.ci_high) for d in runs) <= 1
    assert sum(d.jsd_lower_bound for d in runs) / len(runs) < 0.02


def test_a_known_corruption_is_detected(digits):
    """Real vs the same images with added noise (quantized like the data): easy to detect."""
    g = torch.Generator().manual_seed(0)

    def corrupt(x: torch.Tensor) -> torch.Tensor:
        noisy = x + 0.25 * torch.randn(x.shape, generator=g)
        return torch.round((noisy.clamp(-1, 1) + 1) * 8) / 8 - 1

    half = len(digits.train) // 2
    tr, gen_tr = digits.train.images[:half], corrupt(digits.train.images[half:])
    k = len(digits.heldout) // 2
    he, gen_he = digits.heldout.images[:k], corrupt(digits.heldout.images[k:])
    d = detectability(tr, gen_tr, he, gen_he, DET, seed=0)
    assert d.accuracy > 0.9 and d.ci_low > 0.5 and d.p_value < 1e-6
    assert d.jsd_lower_bound > 0.3


def test_downstream_accuracy_on_real_digits_is_high_and_on_shuffled_labels_is_chance(digits):
    ds = ClassifierSpec(epochs=10)
    good = downstream_accuracy(digits.train.images, digits.train.labels, digits.test.images, digits.test.labels, 10, ds, seed=0)
    assert good.value > 0.93
    shuffled = digits.train.labels[torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(0))]
    bad = downstream_accuracy(digits.train.images, shuffled, digits.test.images, digits.test.labels, 10, ds, seed=0)
    assert bad.ci_low < 0.1 + 0.05 and bad.value < 0.25
