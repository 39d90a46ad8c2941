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
    assert a["fd"] < 0.2 and abs(a["kd"]) < 0.01
    assert a["recall"] > 0.9 and a["coverage"] > 0.9 and 0.85 < a["density"] < 1.15
    assert a["diversity"] == pytest.approx(1.0, abs=0.05)
    # Closed form of the Fréchet distance for N(0, I) vs N(0, 0.09 I) in 6-D: 6 * (1 - 0.3)^2 = 2.94
    assert b["fd"] == pytest.approx(6 * 0.7**2, rel=0.1)
    assert b["precision"] > 0.95 and b["recall"] < 0.3  # all samples plausible, most of the data missed
    assert b["diversity"] == pytest.approx(0.3, abs=0.03)


def test_class_spread():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    y = torch.tensor([0, 0, 1, 1])
    # class 0: var (2, 0) -> sqrt 2 ; class 1: var (0, 8) -> sqrt 8
    assert class_spread(x, y) == pytest.approx((2**0.5 + 8**0.5) / 2)


def _inception_weights(path) -> None:
    """A local, randomly initialised copy of the FID Inception weights (nothing is downloaded here).

    torch-fidelity builds the network and then loads the file; building against an
    empty file raises after the layers exist, which is all we need to save their shapes.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.save({}, path)
    net = FeatureExtractorInceptionV3.__new__(FeatureExtractorInceptionV3)
    with pytest.raises(RuntimeError):
        FeatureExtractorInceptionV3.__init__(net, "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    torch.save(net.state_dict(), path)


def test_inception_features_load_from_a_local_file(tmp_path):
    from synthdata.metrics.features import train_feature_extractor
    from synthdata.spec import FeatureSpec

    weights = tmp_path / "pt_inception.pth"
    _inception_weights(weights)
    spec = FeatureSpec(name="inception", weights=weights)
    extractor = train_feature_extractor(torch.zeros(1), torch.zeros(1), 10, spec, seed=0)
    feats = extractor.embed(torch.rand(3, 1, 8, 8) * 2 - 1)  # grey 8x8 digits work: resized to 299, 3 channels
    assert feats.shape == (3, 2048) and torch.isfinite(feats).all()
    # Only Inception's feature space earns the names FID and KID; a space trained in the study gives fd and kd.
    images, labels = torch.rand(12, 1, 8, 8) * 2 - 1, torch.arange(12) % 2
    inception = RealReference.build(extractor, images, labels)
    assert {"fid", "kid"} <= set(feature_metrics(inception, extractor.embed(images).double(), labels, kid_subset=6))
    own = RealReference.build(None, images, labels)
    names = set(feature_metrics(own, images.flatten(1).double(), labels, kid_subset=6))
    assert {"fd", "kd", "kd_std"} <= names and not names & {"fid", "kid"}


def test_inception_needs_a_safe_local_weights_file(tmp_path):
    from synthdata.errors import DataError
    from synthdata.metrics.features import InceptionFeatures
    from synthdata.spec import parse_spec

    with pytest.raises(Exception, match="features.weights: required"):
        parse_spec({"name": "s", "features": {"name": "inception"}})
    with pytest.raises(Exception, match="features.weights: file does not exist"):
        parse_spec({"name": "s", "features": {"name": "inception", "weights": str(tmp_path / "none.pth")}})
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"not": object()}, unsafe)  # arbitrary pickled objects are refused, never unpickled
    with pytest.raises(DataError, match="not a weights-only Inception state dict"):
        InceptionFeatures(unsafe)


def test_prdc_in_row_blocks_equals_prdc_at_once(monkeypatch):
    """Large sets are measured a block of rows at a time (memory N, not N^2): the same figures as all at once."""
    import synthdata.metrics.features as features

    rng = np.random.default_rng(3)
    real = torch.from_numpy(rng.normal(size=(700, 6)))
    fake = torch.from_numpy(rng.normal(0.3, 1.2, size=(500, 6)))
    at_once = prdc(RealReference.build(None, real, torch.zeros(700, dtype=torch.long)), fake)
    monkeypatch.setattr(features, "CHUNK_ROWS", 128)
    blocks = prdc(RealReference.build(None, real, torch.zeros(700, dtype=torch.long)), fake)
    assert blocks == pytest.approx(at_once, abs=1e-12) and 0 < at_once["precision"] < 1


def test_reference_statistics_are_computed_once_and_kept(tmp_path, monkeypatch):
    """The feature space and the real reference of a (data, split, feature spec, seed) are trained once and read back
    after: the same features; another split is computed anew."""
    import synthdata.metrics.features as features
    from synthdata.data import make_splits
    from synthdata.spec import DataSpec, FeatureSpec

    monkeypatch.setenv("SYNTHDATA_CACHE", str(tmp_path / "cache"))
    splits = make_splits(DataSpec(limit=200), seed=0)
    spec = FeatureSpec(epochs=1, width=8)
    first, extractor = features.cached_reference(splits.train, splits.heldout, spec, seed=5)
    assert len(list((tmp_path / "cache" / "references").glob("*.safetensors"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(features, "train_feature_extractor", no_training)
    again, cached = features.cached_reference(splits.train, splits.heldout, spec, seed=5)
    assert torch.equal(first.features, again.features) and torch.equal(first.radii, again.radii)
    assert torch.equal(extractor.embed(splits.test.images), cached.embed(splits.test.images))  # the same feature space
    with pytest.raises(AssertionError, match="trained again"):  # another seed's split is not the same reference
        other = make_splits(DataSpec(limit=200), seed=1)
        features.cached_reference(other.train, other.heldout, spec, seed=5)
