"""Real data: load a source, and split it into train / held-out / test.

Images are floats (N, C, H, W) in [-1, 1] with integer class labels. A small set (under
`data.in_memory_mb` as float32: the embedded digits, MNIST) is read into one tensor, which
batches fastest; a larger one stays where it is (image files, a zip, a torchvision array
of uint8) as a `LazyImages` view that is read a batch at a time (synthdata.imagestore).
Splits, subsets and concatenations of a lazy set are views: no pixel is copied.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthdata.errors import DataError
from synthdata.imagestore import (
    IMAGE_EXTENSIONS,
    DatasetStore,
    FileStore,
    Images,
    LazyImages,
    TorchvisionStore,
    as_tensor,
    cat_images,
    check_headers,
    decode_image,
    image_mode,
    is_lazy,
    iter_batches,
    iter_chunks,
    map_images,
    open_zip,
    scan_folder,
    take,
)
from synthdata.seeds import Purpose, stream_seed
from synthdata.spec import DataSpec, ToyDataSpec
from synthdata.spec.base import TORCHVISION_SOURCES

__all__ = ["IMAGE_EXTENSIONS", "ImageSet", "Splits", "ToyTruth", "as_tensor", "cat_images", "is_lazy", "iter_chunks"]


@dataclass
class ImageSet:
    """Images in [-1, 1] with their class labels: a tensor, or a lazy view read per batch (`is_lazy(set.images)`)."""

    images: Images  # (N, C, H, W): a float32 tensor, or a LazyImages view of a store
    labels: torch.Tensor  # (N,) int64
    num_classes: int
    levels: int | None = 256  # intensity levels of the stored format (None: continuous); samples are quantized to match

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.num_classes, self.levels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The images at `index` as a float tensor (read from disk when the set is lazy): a training step's batch."""
        return take(self.images, torch.as_tensor(index, dtype=torch.long))

    def tensors(self, max_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) as tensors in memory, for code that wants the whole set at once; a lazy set too large for
        that (more than `max_bytes` as float32, default `synthdata.imagestore.MAX_LOAD_BYTES`) raises DataError."""
        return as_tensor(self.images, "ImageSet.tensors()", max_bytes), self.labels

    def batches(self, batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (images, labels) batches in a seeded order: the same batches every time for the same seed,
        read from disk per batch when the set is lazy. Loop over it once per epoch (with a new seed for a new order)."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        index = [order[i : min(i + batch_size, stop)] for i in range(0, stop, batch_size)]
        for idx, images in zip(index, iter_batches(self.images, index)):
            yield images, self.labels[idx]


@dataclass(frozen=True)
class ToyTruth:
    """The true distribution of a toy source: class k is N(means[k], std^2 I)."""

    means: torch.Tensor  # (K, D)
    std: float


@dataclass
class Splits:
    """Disjoint real-data roles. `heldout` and `test` never train a generator."""

    train: ImageSet
    heldout: ImageSet
    test: ImageSet
    truth: ToyTruth | None = None  # known only for toy sources


def quantize(x: torch.Tensor, levels: int | None) -> torch.Tensor:
    """Snap [-1, 1] values to `levels` evenly spaced intensities, as saving to the data's format would.

    Without this a detector can separate continuous samples from quantized real images
    by their value grid alone, which says nothing about the generator. `levels=None`
    (continuous toy data) returns `x` unchanged.
    """
    if levels is None:
        return x
    q = levels - 1
    return torch.round((x.clamp(-1, 1) + 1) * (q / 2)) / (q / 2) - 1


def concat(*sets: ImageSet) -> ImageSet:
    """Image sets with the same shape and classes, one after the other (a view when any of them is lazy)."""
    return ImageSet(
        cat_images([s.images for s in sets]),
        torch.cat([s.labels for s in sets]),
        sets[0].num_classes,
        sets[0].levels,
    )


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """(N, H, W[, C]) uint8 -> (N, C, H, W) float in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(array)).float()
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t / 127.5 - 1


def load_digits_set() -> ImageSet:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes, 17 grey levels); no download."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images).float().unsqueeze(1) / 8.0 - 1.0
    return ImageSet(images, torch.from_numpy(d.target).long(), 10, levels=17)


def in_memory(n: int, shape: tuple[int, ...], spec: DataSpec | None) -> bool:
    """Whether n images of `shape` are small enough (float32, `data.in_memory_mb`) to read into one tensor."""
    return fits_in_memory(n, shape, spec.in_memory_mb if spec is not None else DataSpec().in_memory_mb)


def fits_in_memory(n: int, shape: Sequence[int], in_memory_mb: float) -> bool:
    """Whether n images of `shape` as float32 are at most `in_memory_mb` (the one rule for holding a set or not)."""
    return n * int(np.prod(shape)) * 4 <= in_memory_mb * 2**20


def spills(n: int, shape: Sequence[int], storage: str | None, in_memory_mb: float | None) -> bool:
    """Whether a sample set of n images goes to `storage` as shards: there is a storage and the set is too large."""
    return storage is not None and in_memory_mb is not None and not fits_in_memory(n, shape, in_memory_mb)


def _lazy(store, spec: DataSpec | None) -> LazyImages:
    return LazyImages(store, workers=spec.loader_workers if spec is not None else 0)


def _torchvision_sets(spec: DataSpec) -> tuple[ImageSet, ImageSet]:
    """A torchvision set's train and test parts; its uint8 array stays uint8 (decoded per batch) when it is large."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[spec.source]
    out = []
    for train in (True, False):
        try:
            ds = cls(str(spec.root), train=train, download=spec.download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
            raise DataError(f"data.root: {spec.source} not found under {spec.root} ({err}); set download: true to fetch it") from None
        data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
        shape = (1, *data.shape[1:3]) if data.ndim == 3 else (data.shape[3], *data.shape[1:3])
        if in_memory(len(data), shape, spec):
            images = from_uint8(data)
        else:  # read again from `root` in each process that needs it: its array never travels through Ray
            images = _lazy(TorchvisionStore(spec.source, str(spec.root), train, shape, len(data)), spec)
        out.append(ImageSet(images, labels, len(ds.classes)))
    return out[0], out[1]


def _load_folder(root: Path, spec: DataSpec | None = None) -> ImageSet:
    """An image folder (one sub-folder per class, or flat: one class), or a zip written by `synthdata prepare`.

    A small set is read now, every image decoded, so a bad one fails early; a large one is
    read per batch, after every file's header is checked (a file that is no image fails now).
    """
    size = spec.image_size if spec is not None else None
    if root.is_file() and root.suffix.lower() == ".zip":
        images, labels, k = open_zip(root, "data.root", size)
        images.workers = spec.loader_workers if spec is not None else 0
        if in_memory(len(images), images.shape[1:], spec):
            return ImageSet(images.load(), labels, max(k, 1))
        return ImageSet(images, labels, max(k, 1))
    flat = root.is_dir() and not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    if flat and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir()):
        raise DataError(f"data.root: {root} has no images: give one sub-folder per class (at least two), or the images themselves")
    files, labels, classes = scan_folder(root, "data.root", classes=not flat)
    label_tensor = torch.tensor(labels, dtype=torch.long)
    mode = image_mode(files[0])
    probe = decode_image(files[0], f"{files[0]} (image 0)", mode, size)
    shape = (1 if mode == "L" else 3, *probe.shape[:2])
    if in_memory(len(files), shape, spec):
        return ImageSet(from_uint8(read_images(files, size, mode)), label_tensor, max(len(classes), 1))
    check_headers(files)
    return ImageSet(_lazy(FileStore(files, shape, mode, size), spec), label_tensor, max(len(classes), 1))


def read_images(paths: list[Path], image_size: int | None, mode: str | None = None) -> np.ndarray:
    """Decode image files into one uint8 array (N, H, W[, C]); grey unless the first image has colour.

    Every file is read now, so a corrupt one fails before any work starts, naming the file.
    """
    if mode is None and paths:
        try:
            mode = image_mode(paths[0])
        except Exception:
            mode = None  # decode_image names the file below
    arrays: list[np.ndarray] = []
    for i, path in enumerate(paths):
        arrays.append(decode_image(path, f"{path} (image {i})", mode, image_size))
        if arrays[-1].shape != arrays[0].shape:
            raise DataError(
                f"{path}: image size {arrays[-1].shape[:2]} differs from {arrays[0].shape[:2]} of {paths[0]}; "
                "set data.image_size to resize"
            )
    return np.stack(arrays)


def read_image_folder(folder: Path, image_size: int | None = None, mode: str | None = None,
                      in_memory_mb: float | None = None) -> Images:
    """Every image file under `folder` (recursively, in name order) in [-1, 1]: a tensor, or a lazy view when they
    are more than `in_memory_mb` as float32 (None: always a tensor)."""
    files, _, _ = scan_folder(Path(folder), str(folder), classes=False)
    mode = mode or image_mode(files[0])
    if in_memory_mb is not None:
        probe = decode_image(files[0], f"{files[0]} (image 0)", mode, image_size)
        shape = (1 if mode == "L" else 3, *probe.shape[:2])
        if not fits_in_memory(len(files), shape, in_memory_mb):
            check_headers(files)
            return LazyImages(FileStore(files, shape, mode, image_size))
    return from_uint8(read_images(files, image_size, mode))


def _stratified_split(labels: np.ndarray, sizes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Split indices into disjoint parts of the given sizes, keeping class proportions."""
    n = len(labels)
    parts: list[list[int]] = [[] for _ in sizes]
    fractions = np.array(sizes) / n
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        counts = np.floor(fractions * len(idx)).astype(int)
        start = 0
        for i, k in enumerate(counts):
            parts[i] += idx[start : start + k].tolist()
            start += k
    # Top up each part to its exact size from the unused indices.
    used = set(i for p in parts for i in p)
    rest = rng.permutation([i for i in range(n) if i not in used]).tolist()
    for i, size in enumerate(sizes):
        while len(parts[i]) < size and rest:
            parts[i].append(rest.pop())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def toy_gaussian_splits(toy: ToyDataSpec, seed: int = 0) -> Splits:
    """Samples of a known Gaussian per class, as (N, dim, 1, 1) "images" (a 1x1 CNN is an MLP)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.zeros(toy.classes, toy.dim)
    means[:, 0] = toy.separation * (torch.arange(toy.classes) - (toy.classes - 1) / 2)
    truth = ToyTruth(means, toy.std)

    def draw(n: int) -> ImageSet:
        return sample_truth(truth, torch.arange(n) % toy.classes, g)

    return Splits(draw(toy.train), draw(toy.heldout), draw(toy.test), truth)


def sample_truth(truth: ToyTruth, labels: torch.Tensor, g: torch.Generator) -> ImageSet:
    """Fresh samples of a toy source's true distribution for the given labels."""
    k, d = truth.means.shape
    x = truth.means[labels] + truth.std * torch.randn(len(labels), d, generator=g)
    return ImageSet(x[:, :, None, None], labels, k, levels=None)


def _load_real(spec: DataSpec) -> tuple[ImageSet, ImageSet | None]:
    """The real images to split, and the official test split where the source has one (the torchvision sets)."""
    if spec.source in TORCHVISION_SOURCES:
        return _torchvision_sets(spec)
    if spec.source == "digits":
        return load_digits_set(), None
    if spec.source == "folder":
        return _load_folder(Path(spec.root), spec), None
    return _from_loader(spec), None


def _from_loader(spec: DataSpec) -> ImageSet:
    """The user's own loader (`data.source: package.module:load`, called as `load(**data.params)`), as an ImageSet.

    It may return (images, labels) or a torch Dataset of (image, label) pairs. Images are uint8
    (N, H, W), (N, H, W, C) or (N, C, H, W) in 0-255, PIL images, or floats (N, C, H, W) in
    [-1, 1]; labels are class indices 0..K-1.
    """
    from synthdata.plugins import resolve

    loader = resolve("data", spec.source, "data.source")
    try:
        out = loader(**spec.params)
    except Exception as err:  # the loader's own failure is the user's to fix: one line, no traceback
        raise DataError(f"data.source: {spec.source} raised {type(err).__name__}: {str(err)[:300]}") from None
    return as_image_set(out, f"data.source: {spec.source}", spec)


def as_image_set(out: object, what: str, spec: DataSpec | None = None) -> ImageSet:
    """(images, labels), a Dataset of (image, label) pairs, or an ImageSet, checked and brought to [-1, 1].

    A Dataset of uint8 (or PIL) images larger than `data.in_memory_mb` stays a Dataset, read per batch.
    """
    if isinstance(out, ImageSet):
        return out
    if isinstance(out, (tuple, list)) and len(out) == 2:
        images, labels = out
    elif hasattr(out, "__getitem__") and hasattr(out, "__len__") and not isinstance(out, (str, bytes)):
        lazy = _lazy_dataset(out, what, spec)
        if lazy is not None:
            return lazy
        pairs = [out[i] for i in range(len(out))]
        images = [np.array(p[0]) if not isinstance(p[0], torch.Tensor) else p[0] for p in pairs]  # a PIL image's array is read-only
        images = torch.stack([torch.as_tensor(x) for x in images]) if images else torch.zeros(0)
        labels = [int(p[1]) for p in pairs]
    else:
        raise DataError(f"{what}: returned {type(out).__name__}; a loader returns (images, labels) or a Dataset of (image, label)")
    x = torch.as_tensor(np.array(images)) if not isinstance(images, torch.Tensor) else images
    y = torch.as_tensor(np.asarray(labels)).long().flatten()
    if len(x) != len(y) or len(x) < 2:
        raise DataError(f"{what}: {len(x)} images and {len(y)} labels (need as many of each, at least 2)")
    if x.dtype == torch.uint8:
        x = x.unsqueeze(1) if x.ndim == 3 else (x if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3) else x.permute(0, 3, 1, 2))
        x, levels = x.float() / 127.5 - 1, 256
    elif x.is_floating_point() and x.ndim == 4:
        lo, hi = float(x.min()), float(x.max())
        if not (torch.isfinite(x).all() and lo >= -1 - 1e-6 and hi <= 1 + 1e-6):
            raise DataError(f"{what}: float images must be finite and in [-1, 1] (found [{lo:.3g}, {hi:.3g}]); or give uint8")
        levels = None
    else:
        raise DataError(f"{what}: images must be uint8 (N, H, W[, C]) or float (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"{what}: images must have 1 or 3 channels, got shape {tuple(x.shape)}")
    if int(y.min()) < 0:
        raise DataError(f"{what}: labels must be class indices 0..K-1")
    return ImageSet(x.float().contiguous(), y, int(y.max()) + 1, levels)


def _lazy_dataset(ds: object, what: str, spec: DataSpec | None) -> ImageSet | None:
    """A large Dataset of uint8/PIL images as a lazy set (its labels from `targets`, else read item by item); None
    when it is small enough to read, or its images are not uint8 (then it is read and checked as a whole)."""
    n = len(ds)
    if n < 2:
        return None
    first = np.asarray(ds[0][0])
    if first.dtype != np.uint8 or first.ndim not in (2, 3) or (first.ndim == 3 and first.shape[-1] not in (1, 3)):
        return None
    shape = (1 if first.ndim == 2 else first.shape[-1], *first.shape[:2])
    if in_memory(n, shape, spec):
        return None
    targets = getattr(ds, "targets", None)
    labels = torch.as_tensor(np.asarray(targets if targets is not None else [int(ds[i][1]) for i in range(n)])).long().flatten()
    if len(labels) != n or int(labels.min()) < 0:
        raise DataError(f"{what}: {n} images and {len(labels)} labels (labels are class indices 0..K-1)")
    return ImageSet(_lazy(DatasetStore(ds, shape, what), spec), labels, int(labels.max()) + 1, 256)


def _resized(images: Images, size: int) -> Images:
    """Images resized to size x size and stored as 8-bit, like any image file (per batch for a lazy set)."""
    return map_images(images, lambda x, _: quantize(_resize(x, size), 256), (images.shape[1], size, size))


def _split(spec: DataSpec, pool: ImageSet, official_test: ImageSet | None, seed: int) -> Splits:
    rng = np.random.default_rng(seed)
    fr = spec.split
    if official_test is not None:
        total = fr.train + fr.heldout
        n_train = round(len(pool) * fr.train / total)
        tr, ho = _stratified_split(pool.labels.numpy(), [n_train, len(pool) - n_train], rng)
        train, heldout, test = pool.subset(tr), pool.subset(ho), official_test
    else:
        n = len(pool)
        heldout, test = int(n * fr.heldout), int(n * fr.test)
        # Rounding leftovers go to train when the fractions cover all the data.
        train_n = n - heldout - test if fr.train + fr.heldout + fr.test > 1 - 1e-9 else int(n * fr.train)
        sizes = [train_n, heldout, test]
        if min(sizes) < 2:
            raise DataError(f"data: {n} images are too few to split into train/heldout/test {sizes}")
        tr, ho, te = _stratified_split(pool.labels.numpy(), sizes, rng)
        train, heldout, test = pool.subset(tr), pool.subset(ho), pool.subset(te)

    if spec.limit is not None:
        train, heldout, test = (_limit(s, spec.limit, rng) for s in (train, heldout, test))
    if spec.image_size is not None:
        # Resized images are stored as 8-bit, like any image file.
        train, heldout, test = (
            s if s.shape[1:] == (spec.image_size, spec.image_size) and s.levels == 256
            else ImageSet(_resized(s.images, spec.image_size), s.labels, s.num_classes, 256)
            for s in (train, heldout, test)
        )
    return Splits(train, heldout, test)


def make_splits(spec: DataSpec, seed: int = 0) -> Splits:
    """Load the real data named by `spec` and split it into disjoint train / held-out / test parts.

    The split depends only on the data and `seed`. Sources with an official test split (the
    torchvision sets) use it as the test part; a toy source draws its samples with `seed`.
    """
    if spec.source == "gaussian":
        return toy_gaussian_splits(spec.toy, seed)
    return _split(spec, *_load_real(spec), seed)


def split_seed_of(spec: DataSpec, seed: int) -> int:
    """The seed a study's seed draws its real split with (`data.split_seed`)."""
    return stream_seed(seed, Purpose.REAL) if spec.split_seed == "per_seed" else int(spec.split_seed)


def study_splits(spec: DataSpec, seeds: Sequence[int]) -> dict[int, Splits]:
    """The real split of every seed of a study, the data read once; seeds with the same split share one object."""
    wanted = {seed: split_seed_of(spec, seed) for seed in seeds}
    if spec.source == "gaussian":
        made = {s: toy_gaussian_splits(spec.toy, s) for s in set(wanted.values())}
    else:
        pool, official_test = _load_real(spec)
        made = {s: _split(spec, pool, official_test, s) for s in set(wanted.values())}
    return {seed: made[s] for seed, s in wanted.items()}


def _limit(s: ImageSet, limit: int, rng: np.random.Generator) -> ImageSet:
    if len(s) <= limit:
        return s
    return s.subset(np.sort(rng.choice(len(s), size=limit, replace=False)))


def class_balanced_labels(n: int, reference: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """n labels whose class proportions match `reference`, in shuffled order."""
    counts = torch.bincount(reference, minlength=num_classes).double()
    exact = counts / counts.sum() * n
    per_class = exact.floor().long()
    # Largest remainders get the leftover labels.
    leftover = n - int(per_class.sum())
    per_class[torch.argsort(exact - per_class, descending=True)[:leftover]] += 1
    labels = torch.repeat_interleave(torch.arange(num_classes), per_class)
    return labels[torch.randperm(n, generator=generator)]


def fingerprints(images: torch.Tensor) -> list[str]:
    """One short hash per image (its exact values): to tell whether two image sets share images without keeping them."""
    import hashlib

    out = []
    for chunk in iter_chunks(images, 4096):
        flat = chunk.detach().cpu().float().contiguous().flatten(1).numpy()
        out += [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in flat]
    return out


SHARDS_REFERENCE = ".shards.json"  # a sample set kept as shards: the file that stands for it beside (or instead of) safetensors


def shards_reference_path(path: str) -> str:
    """Where a sample set kept as shards is named, for the path its safetensors would have: `pools/seed0.shards.json`."""
    folder, _, name = str(path).rpartition("/")
    return f"{folder}/{name.split('.')[0]}{SHARDS_REFERENCE}" if folder else f"{name.split('.')[0]}{SHARDS_REFERENCE}"


def shard_reference(samples: ImageSet) -> dict | None:
    """Where a sample set drawn as shards is (`{"root", "count", "fingerprint"}`: the first `count` images of the shard
    set at `root`), or None when it is held in memory."""
    images = samples.images
    origin = getattr(getattr(images, "store", None), "origin", None) if is_lazy(images) else None
    if origin is None:
        return None
    root, fingerprint, total = origin
    index = images.index
    if index is not None and not np.array_equal(index, np.arange(len(index))):
        raise ValueError("only a prefix of a shard set can be kept as a reference to it")
    return {"root": root, "count": len(samples), "fingerprint": fingerprint, "of": total}


def save_samples(samples: ImageSet, path: Path) -> Path:
    """Samples as safetensors: quantized images as uint8 codes of their levels (exact), else float32. A set drawn as
    shards is kept as a reference to them instead (`<name>.shards.json`, the pixels stay in the study's storage).
    Returns the file written."""
    from safetensors.torch import save_file

    reference = shard_reference(samples)
    if reference is not None:
        import json

        out = Path(shards_reference_path(Path(path).as_posix()))
        out.write_text(json.dumps(reference, indent=1))
        return out
    if samples.levels is not None and samples.levels <= 256:
        codes = torch.round((samples.images.clamp(-1, 1) + 1) * (samples.levels - 1) / 2).to(torch.uint8)
        tensors = {"images": codes}
    else:
        tensors = {"images": samples.images.float().contiguous()}
    tensors["labels"] = samples.labels.long().contiguous()
    meta = {"levels": str(samples.levels), "num_classes": str(samples.num_classes)}
    save_file(tensors, str(path), metadata=meta)
    return Path(path)


def load_samples(path: Path) -> ImageSet:
    """Inverse of `save_samples` (safetensors only: no pickle is ever loaded). A `.shards.json` reference opens its
    shard set, every file checked against its manifest (a truncated or deleted shard raises DataError naming it)."""
    from safetensors import safe_open

    if str(path).endswith(SHARDS_REFERENCE):
        import json

        from synthdata.shards import open_shards

        reference = json.loads(Path(path).read_text())
        images, labels, manifest = open_shards(reference["root"], verify=True)
        if manifest.fingerprint != reference["fingerprint"]:
            raise DataError(f"{reference['root']}: holds other samples than {path} names (fingerprint differs)")
        n = reference["count"]
        levels = manifest.levels if manifest.dtype == "uint8" else None
        return ImageSet(images[np.arange(n)] if n < len(images) else images, labels[:n], manifest.num_classes, levels)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        images, labels = f.get_tensor("images"), f.get_tensor("labels")
    levels = None if meta["levels"] == "None" else int(meta["levels"])
    if images.dtype == torch.uint8:
        images = images.float() * (2 / (levels - 1)) - 1
    return ImageSet(images, labels, int(meta["num_classes"]), levels)
