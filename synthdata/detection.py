"""The detectability instrument's analyses: what a detector tells apart, and what it keys on.

Every analysis is the same protocol (a classifier two-sample test on balanced, disjoint
train and eval sets; see metrics/detectability.py) applied to different inputs:

- pair: real vs one source;  real_vs_real: two disjoint real halves (must be ~0.5);
- size: the pair with n training images per class (the sample-size curve);
- band: the pair with every image passed through an FFT mask (low / band / high);
- crop: the pair on random s x s crops;
- multiway: real plus every source as K + 1 classes, with a confusion matrix.

Each analysis arm is a plain function of image sets (tensors, or lazy views read per batch), so a runner can farm
them out; filters and crops are applied per batch read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from synthdata.classifiers import predict_logits, train_classifier
from synthdata.data import ImageSet
from synthdata.imagestore import Images, as_tensor, cat_images, map_images
from synthdata.metrics.detectability import detector_scores, real_halves
from synthdata.metrics.stats import accuracy_with_ci, p_value_above_chance
from synthdata.seeds import Purpose, stream_seed
from synthdata.spec import ClassifierSpec, DetectSpec


@dataclass(frozen=True)
class DetectArm:
    """One arm of a detect study, one detector training: an analysis, on a source, at a setting, with a seed."""

    analysis: str  # pair | real_vs_real | size | band | crop | multiway
    source: str = ""  # the generated source ("" for real_vs_real and multiway)
    setting: str = ""  # size: "n=200"; band: "low" / "0.25-0.5" / "high"; crop: "size=4"
    seed: int = 0

    @property
    def name(self) -> str:
        """MLflow run name: `pair/ddpm/seed0`, `band/ddpm/high/seed0`, `real_vs_real/seed0`."""
        return "/".join(p for p in (self.analysis, self.source, self.setting, f"seed{self.seed}") if p)

    def params(self) -> dict[str, str]:
        return {"analysis": self.analysis, "source": self.source or "-", "setting": self.setting or "-", "seed": str(self.seed)}


@dataclass
class DetectResult:
    """Metrics of an arm, plus what its figures need: a confusion matrix, the most/least confident examples."""

    arm: DetectArm
    metrics: dict[str, float]
    confusion: np.ndarray | None = None  # multiway: rows true class, columns predicted (counts)
    classes: list[str] = field(default_factory=list)
    examples: dict[str, torch.Tensor] = field(default_factory=dict)  # pair: "real_most_real", "generated_most_generated", ...


def band_names(radii: tuple[float, ...]) -> list[str]:
    """Band labels for cut-offs [a, b]: low, a-b, high."""
    edges = list(radii)
    return ["low"] + [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])] + ["high"] if edges else []


def band_mask(size: tuple[int, int], radii: tuple[float, ...], band: str) -> torch.Tensor:
    """A 0/1 mask over the FFT grid keeping one band; radius 1 is the Nyquist frequency along an axis."""
    fy = torch.fft.fftfreq(size[0])[:, None] / 0.5
    fx = torch.fft.fftfreq(size[1])[None, :] / 0.5
    r = torch.sqrt(fx**2 + fy**2)
    edges = [0.0, *radii, float("inf")]
    i = band_names(radii).index(band)
    return ((r >= edges[i]) & (r < edges[i + 1])).float()


def filter_band(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Images with every frequency outside the mask removed (per channel)."""
    return torch.fft.ifft2(torch.fft.fft2(images.double()) * mask).real.float()


def band_filtered(images: Images, mask: torch.Tensor) -> Images:
    """`filter_band` on every image (per batch read, for a lazy set)."""
    return map_images(images, lambda x, _: filter_band(x, mask))


def random_crops(images: Images, size: int, g: torch.Generator) -> Images:
    """One random `size` x `size` crop of each image; the offsets are drawn now, so a lazy set's crops do not depend
    on how it is batched."""
    n, c, h, w = images.shape
    if size > min(h, w):
        raise ValueError(f"crop size {size} exceeds the images' {h}x{w}")
    ys = torch.randint(0, h - size + 1, (n,), generator=g).tolist()
    xs = torch.randint(0, w - size + 1, (n,), generator=g).tolist()

    def crop(x: torch.Tensor, positions) -> torch.Tensor:
        return torch.stack([im[:, ys[i] : ys[i] + size, xs[i] : xs[i] + size] for im, i in zip(x, positions.tolist())])

    return map_images(images, crop, (c, size, size))


def split_source(images: Images, eval_fraction: float, seed: int) -> tuple[Images, Images]:
    """A generated source's images cut into disjoint train and eval parts."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    k = max(1, round(len(images) * eval_fraction))
    return images[order[k:]], images[order[:k]]


def _take(x: Images, n: int | None, g: torch.Generator) -> Images:
    idx = torch.randperm(len(x), generator=g)
    return x[idx[: n if n is not None else len(x)]]


def pair_test(real_train: Images, gen_train: Images, real_eval: Images, gen_eval: Images,
              detector: ClassifierSpec, *, seed: int, train_size: int | None = None, examples: int = 0, device: str = "cpu"
              ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The two-sample test (metrics/detectability.py); its metrics plus the most/least confident eval examples of each class."""
    r = detector_scores(real_train, gen_train, real_eval, gen_eval, detector, seed=seed, train_size=train_size, device=device)
    metrics = {**r.stats.as_metrics(), "n_train_per_class": float(r.n_train)}
    if not examples:
        return metrics, {}
    k = min(examples, len(r.real_eval))
    # "most generated-looking real images" are the detector's false alarms: what it thinks fakes look like.
    return metrics, {key: as_tensor(images) for key, images in {
        "real_most_real": r.real_eval[r.p_real.argsort()[:k]], "real_most_generated": r.real_eval[r.p_real.argsort(descending=True)[:k]],
        "generated_most_generated": r.generated_eval[r.p_generated.argsort(descending=True)[:k]],
        "generated_most_real": r.generated_eval[r.p_generated.argsort()[:k]],
    }.items()}


def multiway_test(train_sets: list[Images], eval_sets: list[Images], detector: ClassifierSpec, *, seed: int,
                  train_size: int | None = None, device: str = "cpu") -> tuple[dict[str, float], np.ndarray]:
    """One classifier over K + 1 sources (real first); accuracy with its interval and the confusion matrix (counts)."""
    g = torch.Generator().manual_seed(seed)
    n = min(min(len(t) for t in train_sets), train_size or 10**12)
    m = min(len(e) for e in eval_sets)
    x = cat_images([_take(t, n, g) for t in train_sets])
    y = torch.arange(len(train_sets)).repeat_interleave(n)
    model = train_classifier(detector, x, y, len(train_sets), seed=seed, device=device)
    xe = cat_images([_take(e, m, g) for e in eval_sets])
    ye = torch.arange(len(eval_sets)).repeat_interleave(m)
    pred = predict_logits(model, xe, device=device).argmax(1)
    k = len(train_sets)
    confusion = torch.bincount(ye * k + pred, minlength=k * k).reshape(k, k).numpy()
    correct = int((pred == ye).sum())
    metrics = {**accuracy_with_ci(correct, len(ye)).as_metrics("multiway_accuracy"), "chance": 1.0 / k,
               "multiway_accuracy_p_value": p_value_above_chance(correct, len(ye), 1.0 / k), "n_train_per_class": float(n)}
    return metrics, confusion


def arms_for(detect: DetectSpec, source_names: list[str]) -> list[DetectArm]:
    """Every detector training a detect section asks for, in reading order."""
    arms: list[DetectArm] = []
    for seed in detect.seeds:
        if detect.real_vs_real:
            arms.append(DetectArm("real_vs_real", seed=seed))
        arms += [DetectArm("pair", s, seed=seed) for s in source_names]
        if detect.multiway and len(source_names) >= 2:
            arms.append(DetectArm("multiway", seed=seed))
        for s in source_names:
            arms += [DetectArm("size", s, f"n={n}", seed) for n in detect.sample_sizes]
            arms += [DetectArm("band", s, b, seed) for b in band_names(detect.bands.radii)]
            arms += [DetectArm("crop", s, f"size={c}", seed) for c in detect.crop_sizes]
    return arms


def run_arm(arm: DetectArm, detect: DetectSpec, detector: ClassifierSpec, real_train: ImageSet, real_eval: ImageSet, sources: dict[str, ImageSet],
             *, device: str = "cpu") -> DetectResult:
    """Train and score the detector of one arm."""
    seed = stream_seed(arm.seed, Purpose.DETECTOR)
    split = {name: split_source(s.images, detect.eval_fraction, seed=stream_seed(arm.seed, Purpose.SPLIT)) for name, s in sources.items()}
    rt, re = real_train.images, real_eval.images
    if arm.analysis == "real_vs_real":
        metrics, _ = pair_test(*real_halves(rt, re, seed), detector, seed=seed, train_size=detect.train_size, device=device)
        return DetectResult(arm, metrics)
    if arm.analysis == "multiway":
        names = list(sources)
        metrics, confusion = multiway_test([rt, *(split[s][0] for s in names)], [re, *(split[s][1] for s in names)], detector,
                                           seed=seed, train_size=detect.train_size, device=device)
        return DetectResult(arm, metrics, confusion=confusion, classes=["real", *names])
    gt, ge = split[arm.source]
    train_size = detect.train_size
    if arm.analysis == "size":
        train_size = int(arm.setting.removeprefix("n="))
        # Every size gets the optimizer steps the full-size detector gets: the curve is
        # about data, not about smaller sets being trained for fewer steps.
        n_full = min(len(rt), len(gt), detect.train_size or len(rt))
        per_epoch = max(1, int(2 * n_full * (1 - detector.val_fraction)) // detector.batch_size)
        detector = detector.model_copy(update={"train_steps": detector.train_steps or detector.epochs * per_epoch})
    elif arm.analysis == "band":
        mask = band_mask(tuple(rt.shape[-2:]), detect.bands.radii, arm.setting)
        rt, re, gt, ge = (band_filtered(x, mask) for x in (rt, re, gt, ge))
    elif arm.analysis == "crop":
        size, g = int(arm.setting.removeprefix("size=")), torch.Generator().manual_seed(stream_seed(arm.seed, Purpose.CROPS))
        rt, re, gt, ge = (random_crops(x, size, g) for x in (rt, re, gt, ge))
    examples = detect.examples if arm.analysis == "pair" else 0
    metrics, shown = pair_test(rt, gt, re, ge, detector, seed=seed, train_size=train_size, examples=examples, device=device)
    return DetectResult(arm, metrics, examples=shown)
