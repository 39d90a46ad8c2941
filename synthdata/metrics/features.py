"""Feature-space metrics: Fréchet distance, KID, precision/recall/density/coverage, diversity.

For small data sets (digits, MNIST) Inception features say little, so the feature
space is a classifier trained once per study on the real training data and frozen.
Real features are computed once (`RealReference`) and reused for every generation and
arm; only the samples' features are computed per generation. The Fréchet and kernel
distances come from torchmetrics, fed precomputed features through an identity extractor.

Names say which feature space: `fid` / `kid` only in Inception's (comparable with published
figures, given the same Inception weights and sample counts); `fd` / `kd` in a feature
space trained inside the study, which no published FID can be compared with.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from synthdata.cache import cache_dir
from synthdata.classifiers import SmallCNN, train_classifier
from synthdata.spec import FeatureSpec


class FeatureExtractor(nn.Module):
    """A frozen classifier's globally pooled last conv features."""

    def __init__(self, classifier: SmallCNN) -> None:
        super().__init__()
        self.net = classifier.eval().requires_grad_(False)
        self.num_features = classifier.head.in_features

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.net.features(x), 1).flatten(1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Features of `images` (a tensor or a lazy set, read a batch at a time), on the CPU."""
        return torch.cat([self(chunk.cpu()) for chunk in images.split(batch_size)])


class InceptionFeatures(nn.Module):
    """FID's Inception-v3 pool features (2048-d) from a local weights file, via torchmetrics/torch-fidelity."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        from synthdata.errors import DataError

        # torch-fidelity unpickles the file; accept it only if it is plain tensors.
        try:
            torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:
            raise DataError(f"{weights}: not a weights-only Inception state dict ({type(err).__name__})") from None
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights))
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if codes.shape[1] == 1:
            codes = codes.expand(-1, 3, -1, -1)
        return self.net(codes).reshape(len(x), -1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        return torch.cat([self(chunk) for chunk in images.split(batch_size)])


def train_feature_extractor(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, spec: FeatureSpec, *, seed: int
) -> FeatureExtractor | InceptionFeatures:
    """The study's feature space: Inception from local weights, or a classifier trained on the real data, frozen."""
    if spec.name == "inception":
        return InceptionFeatures(spec.weights)
    return FeatureExtractor(train_classifier(spec, images, labels, num_classes, seed=seed))


class _Identity(nn.Module):
    """Lets torchmetrics take features we computed ourselves."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


CHUNK_ROWS = 4096  # rows of a distance matrix computed at once: 4096 x 50k float64 is 1.6 GB, a full 50k x 50k 20 GB


def _row_chunks(x: torch.Tensor) -> list[torch.Tensor]:
    """`x` whole when it is small (computed as it always was), else in blocks of CHUNK_ROWS rows."""
    return [x] if len(x) <= CHUNK_ROWS else list(x.split(CHUNK_ROWS))


def _kth_neighbour_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (in row blocks: memory grows with N, not N^2)."""
    return torch.cat([torch.cdist(rows, x).kthvalue(k + 1, dim=1).values for rows in _row_chunks(x)])  # +1: the row itself


@dataclass
class RealReference:
    """Real features and their k-NN radii, computed once per study."""

    features: torch.Tensor  # (N, D) float64
    labels: torch.Tensor
    radii: torch.Tensor
    k: int
    inception: bool = False  # features from Inception (metrics named fid/kid), else the study's own (fd/kd)

    @classmethod
    def build(cls, extractor: FeatureExtractor | None, images: torch.Tensor, labels: torch.Tensor, k: int = 5) -> "RealReference":
        """Embed real images (or take vectors as they are when `extractor` is None)."""
        feats = extractor.embed(images).double() if extractor is not None else images.flatten(1).double()
        return cls(feats, labels, _kth_neighbour_radii(feats, k), k, isinstance(extractor, InceptionFeatures))


REFERENCE_VERSION = 1  # bump when what a cached reference holds, or how it is computed, changes


def cached_reference(train, heldout, spec: FeatureSpec, *, seed: int) -> tuple[RealReference, nn.Module]:
    """The study's feature space (trained on `train`, an ImageSet) and the real reference (`heldout`'s features, k-NN
    radii), computed once per (data, split, feature spec, seed) and kept on disk, as NVlabs' EDM2 keeps its reference
    statistics: every seed with that split, every arm and every later study reuses them. A set whose identity cannot
    be told (a user's Dataset read lazily) is computed each time."""
    import hashlib
    import json

    from synthdata.imagestore import fingerprint
    from synthdata.version import __version__

    prints = [fingerprint(train.images), fingerprint(heldout.images)]
    root = cache_dir()
    path = None
    if root is not None and None not in prints:
        h = hashlib.blake2b(digest_size=20)
        for part in (*prints, train.labels.numpy().tobytes(), heldout.labels.numpy().tobytes(),
                     json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode(), str(seed).encode(),
                     f"{REFERENCE_VERSION}|{__version__}|{torch.__version__}".encode()):  # new code: computed anew
            h.update(part if isinstance(part, bytes) else part.encode())
        path = root / "references" / f"{h.hexdigest()}.safetensors"
    if path is not None and path.is_file():
        try:
            return _load_reference(path, train, spec)
        except Exception:  # a damaged cache entry is computed again (and replaced)
            path.unlink(missing_ok=True)
    extractor = train_feature_extractor(train.images, train.labels, train.num_classes, spec, seed=seed)
    reference = RealReference.build(extractor, heldout.images, heldout.labels)
    if path is not None:
        _save_reference(path, reference, extractor)
    return reference, extractor


def _save_reference(path: Path, reference: RealReference, extractor: nn.Module) -> None:
    from safetensors.torch import save_file

    tensors = {"features": reference.features, "labels": reference.labels, "radii": reference.radii}
    if isinstance(extractor, FeatureExtractor):
        tensors.update({f"extractor.{k}": v.detach().cpu().contiguous() for k, v in extractor.net.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{__import__('os').getpid()}.partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"k": str(reference.k)})
    tmp.replace(path)  # atomic: two studies computing the same reference at once both end with a whole file


def _load_reference(path: Path, train, spec: FeatureSpec) -> tuple[RealReference, nn.Module]:
    from safetensors import safe_open

    from synthdata.classifiers import create_classifier

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        k = int(f.metadata()["k"])
    if spec.name == "inception":
        extractor: nn.Module = InceptionFeatures(spec.weights)
    else:
        c, h, _ = train.shape
        net = create_classifier(spec, c, train.num_classes, h)
        net.load_state_dict({key.removeprefix("extractor."): v for key, v in tensors.items() if key.startswith("extractor.")})
        extractor = FeatureExtractor(net)
    reference = RealReference(tensors["features"], tensors["labels"], tensors["radii"], k, spec.name == "inception")
    return reference, extractor


def prdc(real: RealReference, fake: torch.Tensor) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020; Kynkäänniemi et al. 2019), k-NN manifolds."""
    fake = fake.double()
    fake_radii = _kth_neighbour_radii(fake, real.k)
    inside_any = torch.zeros(len(fake), dtype=torch.bool)  # fake j is inside some real ball (precision)
    inside_count = torch.zeros(len(fake), dtype=torch.float64)  # real balls fake j is inside (density)
    recalled, covered = [], []
    start = 0
    for rows in _row_chunks(real.features):  # (N_real, N_fake) distances a block of real rows at a time
        radii = real.radii[start : start + len(rows)]
        d = torch.cdist(rows, fake)
        inside = d < radii[:, None]
        inside_any |= inside.any(0)
        inside_count += inside.sum(0).double()
        recalled.append((d < fake_radii[None, :]).any(1))
        covered.append(d.min(1).values < radii)
        start += len(rows)
    return {
        "precision": inside_any.double().mean().item(),
        "recall": torch.cat(recalled).double().mean().item(),
        "density": (inside_count / real.k).mean().item(),
        "coverage": torch.cat(covered).double().mean().item(),
    }


def class_spread(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the root total variance of the class's features."""
    spreads = [features[labels == c].var(0).sum().sqrt() for c in labels.unique() if (labels == c).sum() > 1]
    return float(torch.stack(spreads).mean())


def feature_metrics(real: RealReference, fake_features: torch.Tensor, fake_labels: torch.Tensor, *, kid_subset: int = 500) -> dict[str, float]:
    """Fréchet and kernel distances (`fd`, `kd` and its std over subsets; `fid`, `kid`... in Inception's
    feature space), PRDC and diversity of samples against the real reference.

    `diversity` is the samples' per-class feature spread divided by the real data's:
    1 is as diverse as real data, below 1 is collapsing.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    dim = real.features.shape[1]
    fid = FrechetInceptionDistance(feature=_Identity(dim))
    fid.update(real.features.float(), real=True)
    fid.update(fake_features.float(), real=False)
    subset = min(kid_subset, len(real.features), len(fake_features))
    with warnings.catch_warnings():  # "will save all extracted features": intended, ours are small vectors
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Identity(dim), subsets=50, subset_size=subset)
    kid.update(real.features.float(), real=True)
    kid.update(fake_features.float(), real=False)
    with torch.random.fork_rng():  # KID draws random subsets: keep them reproducible and leave the caller's RNG alone
        torch.manual_seed(0)
        kid_mean, kid_std = kid.compute()
    fd, kd = ("fid", "kid") if real.inception else ("fd", "kd")
    out = {fd: float(fid.compute()), kd: float(kid_mean), f"{kd}_std": float(kid_std)}
    out.update(prdc(real, fake_features))
    out["diversity"] = class_spread(fake_features.double(), fake_labels) / class_spread(real.features, real.labels)
    return out
