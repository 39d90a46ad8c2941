"""Feature-space metrics against known answers and the reference PRDC implementation."""
import numpy as np
import pytest
import torch

from synthdata.metrics.features import RealReference, class_spread, feature_metrics, prdc


def reference(features: torch.Tensor, labels: torch.Tensor | None = None, k: int = 5) -> RealReference:
    from synthdata.metrics.features import _kth_neighbour_radii

    f = features.double()
    labels = labels if labels is not None else torch.zeros(len(f), dtype=torch.long)
    return RealReference(f, labels, _kth_neighbour_radii(f, k), k)


def test_prdc_matches_the_reference_implementation(capsys):
    from prdc import compute_prdc

    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (300, 8)).astype(np.float32)
    fake = rng.normal(0.3, 0.8, (250, 8)).astype(np.float32)
    expected = compute_prdc(real, fake, nearest_k=5)
    got = prdc(reference(torch.from_numpy(real)), torch.from_numpy(fake))
    for key in ("precision", "recall", "density", "coverage"):
        assert got[key] == pytest.approx(float(expected[key]), abs=1e-9), key


def test_same_distribution_scores_near_ideal_and_a_collapsed_one_does_not():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(1000, 6, generator=g)
    labels = torch.arange(1000) % 4
    same = torch.randn(1000, 6, generator=g)
    collapsed = 0.3 * torch.randn(1000, 6, generator=g)  # mode-collapsed: right centre, a third of the spread
    ref = reference(real, labels)
    a = feature_metrics(ref, same, labels)
    b = feature_metrics(ref, collapsed, labels)
    assert a["fid"] < 0.2 and abs(a["kid"]) < 0.01
    assert a["recall"] > 0.9 and a["coverage"] > 0.9 and 0.85 < a["density"] < 1.15
    assert a["diversity"] == pytest.approx(1.0, abs=0.05)
    # Closed form of the Fréchet distance for N(0, I) vs N(0, 0.09 I) in 6-D: 6 * (1 - 0.3)^2 = 2.94
    assert b["fid"] == pytest.approx(6 * 0.7**2, rel=0.1)
    assert b["precision"] > 0.95 and b["recall"] < 0.3  # all samples plausible, most of the data missed
    assert b["diversity"] == pytest.approx(0.3, abs=0.03)


def test_class_spread():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    y = torch.tensor([0, 0, 1, 1])
    # class 0: var (2, 0) -> sqrt 2 ; class 1: var (0, 8) -> sqrt 8
    assert class_spread(x, y) == pytest.approx((2**0.5 + 8**0.5) / 2)
