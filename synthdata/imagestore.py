"""Images read from where they are kept, a batch at a time: image files, a zip of PNGs, uint8 shards, a Dataset.

An `ImageSet`'s images are a float tensor (N, C, H, W) when the set is small (the
embedded digits, a sample set drawn in memory), or a `LazyImages` view when it is not:
a store (where the pixels are) and an index (which of them, in what order). A view
indexes, concatenates and maps like a tensor without reading a pixel; `load()` reads
it (into [-1, 1] floats), `split(n)` reads it a chunk at a time. Pickling a view carries
paths and indices, never pixels, so Ray's object store holds manifests, not images.

Stores keep the data's own format (uint8 codes of its intensity levels) and decode per
read. The helpers at the bottom (`cat_images`, `as_tensor`, `iter_batches`,
`iter_chunks`) take either kind, so the library's loops are written once for both.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from synthdata.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_LOAD_BYTES = 8 * 2**30  # what `load()` reads into memory at most (float32); a larger set is iterated, not held
LABELS_FILE = "dataset.json"  # beside the images in a zip (EDM2's dataset_tool format): {"labels": [[name, label], ...]}


class Store(Protocol):
    """Where a set's pixels are. `read(index)` returns float images (n, C, H, W) in [-1, 1], in `index` order."""

    shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def read(self, index: np.ndarray) -> torch.Tensor: ...


def codes_to_float(codes: np.ndarray | torch.Tensor, levels: int | None = 256) -> torch.Tensor:
    """uint8 codes (n, H, W[, C]) or (n, C, H, W) with `channels_last` decided by the caller -> float in [-1, 1].

    256 levels use `x / 127.5 - 1`, the same arithmetic as reading the files into memory, so a
    set gives the same floats whether it is held or read per batch.
    """
    t = torch.as_tensor(codes)
    if t.is_floating_point():  # continuous data (a toy's) is stored as it is
        return t.float()
    t = t.float()
    return t / 127.5 - 1 if levels in (None, 256) else t / ((levels - 1) / 2) - 1  # quantize's own arithmetic


def _hwc_to_chw(array: np.ndarray) -> np.ndarray:
    return array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)


def decode_image(data: Any, where: str, mode: str | None, size: int | None) -> np.ndarray:
    """One image file (a path or bytes) as uint8 (H, W) or (H, W, 3); a file PIL cannot read raises DataError naming `where`."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.load()
            mode = mode or ("L" if im.mode in ("1", "L", "LA", "I", "I;16") else "RGB")
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where}: cannot read image ({type(err).__name__})") from None


def image_mode(first: Any, where: str | None = None) -> str:
    """"L" for a grey first image, else "RGB": every image of a set is read in the first one's mode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(first) as im:
            return "L" if im.mode in ("1", "L", "LA", "I", "I;16") else "RGB"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where or f'{first} (image 0)'}: cannot read image ({type(err).__name__})") from None


def _stack(arrays: list[np.ndarray], wheres: list[str], first: str) -> np.ndarray:
    for a, where in zip(arrays, wheres):
        if a.shape != arrays[0].shape:
            raise DataError(f"{where}: image size {a.shape[:2]} differs from {arrays[0].shape[:2]} of {first}; "
                            "set data.image_size to resize")
    return np.stack(arrays)


class FileStore:
    """Image files on disk (a folder), decoded when read; `size` resizes (bicubic), `mode` is "L" or "RGB"."""

    def __init__(self, paths: Sequence[str | Path], shape: tuple[int, int, int], mode: str, size: int | None) -> None:
        self.paths = [str(p) for p in paths]
        self.shape, self.mode, self.size = tuple(shape), mode, size

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: np.ndarray) -> torch.Tensor:
        wheres = [f"{self.paths[i]} (image {i})" for i in index]
        arrays = [decode_image(self.paths[i], w, self.mode, self.size) for i, w in zip(index, wheres)]
        if not arrays:
            return torch.zeros((0, *self.shape))
        return codes_to_float(_hwc_to_chw(_stack(arrays, wheres, self.paths[0])))


class ZipStore:
    """An uncompressed zip of PNGs with a `dataset.json` of labels (`synthdata prepare`; NVlabs EDM2's format).

    The zip opens on first read in each process and is dropped when pickled, so every
    worker opens its own handle (a zipfile handle cannot be shared across processes).
    """

    def __init__(self, path: str | Path, names: Sequence[str], shape: tuple[int, int, int], mode: str, size: int | None) -> None:
        self.path, self.names = str(path), list(names)
        self.shape, self.mode, self.size = tuple(shape), mode, size
        self._zip: zipfile.ZipFile | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}

    def read(self, index: np.ndarray) -> torch.Tensor:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        wheres = [f"{self.path}:{self.names[i]} (image {i})" for i in index]
        arrays = []
        for i, where in zip(index, wheres):
            try:
                data = self._zip.read(self.names[i])
            except (KeyError, zipfile.BadZipFile, OSError) as err:
                raise DataError(f"{where}: cannot read from the zip ({type(err).__name__})") from None
            arrays.append(decode_image(data, where, self.mode, self.size))
        if not arrays:
            return torch.zeros((0, *self.shape))
        return codes_to_float(_hwc_to_chw(_stack(arrays, wheres, self.names[0])))


class ArrayStore:
    """uint8 codes (N, C, H, W) of `levels` intensities: in memory (a torchvision set's array), or .npy shards
    opened memory-mapped (sample shards), pickled as their paths."""

    def __init__(self, codes: np.ndarray | None = None, *, shards: Sequence[str | Path] = (), levels: int | None = 256) -> None:
        self.levels = levels
        self._codes = codes
        self.shards = [str(s) for s in shards]
        self._maps: list[np.ndarray] | None = None
        self.origin: tuple | None = None  # (root, fingerprint, count) of the shard set it reads (synthdata.shards)
        if codes is not None:
            self.shape, self._offsets, self.dtype = tuple(codes.shape[1:]), np.array([0, len(codes)]), codes.dtype
        else:
            maps = self._open()
            self.shape = tuple(maps[0].shape[1:]) if maps else (0, 0, 0)
            self.dtype = maps[0].dtype if maps else np.dtype(np.uint8)
            self._offsets = np.cumsum([0, *(len(m) for m in maps)])

    def _open(self) -> list[np.ndarray]:
        if self._maps is None:
            maps = []
            for s in self.shards:
                try:
                    maps.append(np.load(s, mmap_mode="r"))
                except (OSError, ValueError) as err:
                    raise DataError(f"{s}: cannot read shard ({type(err).__name__}: {err})") from None
            self._maps = maps
        return self._maps

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def read(self, index: np.ndarray) -> torch.Tensor:
        index = np.asarray(index, dtype=np.int64)
        if self._codes is not None:
            return codes_to_float(self._codes[index], self.levels)
        maps = self._open()
        shard = np.searchsorted(self._offsets, index, side="right") - 1
        out = np.empty((len(index), *self.shape), dtype=self.dtype)
        for k in np.unique(shard):
            at = shard == k
            out[at] = maps[k][index[at] - self._offsets[k]]
        return codes_to_float(out, self.levels)


class TorchvisionStore:
    """A torchvision set's uint8 array (MNIST, CIFAR-10), loaded from `root` on first read in each process and dropped
    when pickled: Ray carries the name and root, never the array."""

    def __init__(self, source: str, root: str, train: bool, shape: tuple[int, int, int], count: int) -> None:
        self.source, self.root, self.train, self.shape, self.count = source, root, train, tuple(shape), count
        self._codes: np.ndarray | None = None

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_codes": None}

    def read(self, index: np.ndarray) -> torch.Tensor:
        if self._codes is None:
            import torchvision.datasets as tvd

            cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[self.source]
            data = cls(self.root, train=self.train, download=False).data
            data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
            self._codes = np.ascontiguousarray(data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2))
        return codes_to_float(self._codes[np.asarray(index, dtype=np.int64)])


class DatasetStore:
    """A user's torch Dataset of (image, label) pairs, read item by item; images are uint8 (H, W[, C]) or PIL."""

    def __init__(self, dataset: Any, shape: tuple[int, int, int], what: str) -> None:
        self.dataset, self.shape, self.what = dataset, tuple(shape), what

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, index: np.ndarray) -> torch.Tensor:
        arrays = []
        for i in index:
            try:
                image = self.dataset[int(i)][0]
            except Exception as err:  # the loader's own failure, on the image it names
                raise DataError(f"{self.what}: item {int(i)} raised {type(err).__name__}: {str(err)[:200]}") from None
            arrays.append(np.asarray(image, dtype=np.uint8))
        if not arrays:
            return torch.zeros((0, *self.shape))
        return codes_to_float(_hwc_to_chw(_stack(arrays, [f"{self.what}: item {int(i)}" for i in index], "item 0")))


class TensorStore:
    """Float images already in memory, as a part of a concatenation with lazy parts."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.shape = images, tuple(images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: np.ndarray) -> torch.Tensor:
        return self.images[torch.as_tensor(index, dtype=torch.long)]


class ConcatStore:
    """Several sets one after the other (a loop's real set plus its samples): a view, never a copy."""

    def __init__(self, parts: Sequence["torch.Tensor | LazyImages"]) -> None:
        self.parts = [p if isinstance(p, LazyImages) else LazyImages(TensorStore(p)) for p in parts]
        self.shape = tuple(self.parts[0].shape[1:])
        self._offsets = np.cumsum([0, *(len(p) for p in self.parts)])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def read(self, index: np.ndarray) -> torch.Tensor:
        index = np.asarray(index, dtype=np.int64)
        part = np.searchsorted(self._offsets, index, side="right") - 1
        out = torch.empty((len(index), *self.shape))
        for k in np.unique(part):
            at = np.flatnonzero(part == k)
            out[torch.as_tensor(at)] = self.parts[k].read(index[at] - self._offsets[k])
        return out


class MappedStore:
    """A view with a function applied per batch: `fn(images, positions)` -> images of `shape` (a filter, a crop, a resize).

    `positions` are the images' places in the mapped view, so a per-image random choice
    drawn up front (a crop's offset) follows its image in any batch and order.
    """

    def __init__(self, inner: "LazyImages", fn: Callable[[torch.Tensor, np.ndarray], torch.Tensor], shape: tuple[int, int, int]) -> None:
        self.inner, self.fn, self.shape = inner, fn, tuple(shape)

    def __len__(self) -> int:
        return len(self.inner)

    def read(self, index: np.ndarray) -> torch.Tensor:
        return self.fn(self.inner.read(index), np.asarray(index, dtype=np.int64))


class LazyImages:
    """Images (N, C, H, W) in a store, read only when asked: indexing and `cat_images` give views; `load` reads."""

    def __init__(self, store: Store, index: np.ndarray | None = None, workers: int = 0) -> None:
        self.store = store
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.workers = workers  # DataLoader processes that decode its training batches (data.loader_workers)

    def __len__(self) -> int:
        return len(self.store) if self.index is None else len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.store.shape))

    @property
    def ndim(self) -> int:
        return 4

    def __repr__(self) -> str:
        return f"LazyImages({type(self.store).__name__}, shape={tuple(self.shape)})"

    def _base(self, index: np.ndarray) -> np.ndarray:
        return index if self.index is None else self.index[index]

    def __getitem__(self, key: Any) -> "LazyImages | torch.Tensor":
        """A view of the selected images (a slice, or an index array/tensor); an integer reads that one image."""
        if isinstance(key, (int, np.integer)):
            return self.read(np.array([int(key) % len(self)]))[0]
        if isinstance(key, slice):
            key = np.arange(len(self))[key]
        elif isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return LazyImages(self.store, self._base(key.astype(np.int64)), self.workers)

    def read(self, index: np.ndarray) -> torch.Tensor:
        """The images at positions `index` of this view, as floats in [-1, 1]."""
        return self.store.read(self._base(np.asarray(index, dtype=np.int64)))

    def nbytes(self) -> int:
        """What `load()` would hold, as float32."""
        return int(np.prod(self.shape)) * 4

    def load(self, max_bytes: int | None = None) -> torch.Tensor:
        """Every image of the view in memory, refused (DataError) above `max_bytes` (default `MAX_LOAD_BYTES`)."""
        limit = MAX_LOAD_BYTES if max_bytes is None else max_bytes
        if self.nbytes() > limit:
            raise DataError(f"{len(self)} images of {tuple(self.shape[1:])} are {self.nbytes() / 2**30:.1f} GiB as float32, more "
                            f"than {limit / 2**30:.1f} GiB to hold in memory; iterate them in batches (ImageSet.batches)")
        return self.read(np.arange(len(self)))

    def split(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The images read `batch_size` at a time, in order (as `Tensor.split` chunks a tensor)."""
        for start in range(0, len(self), batch_size):
            yield self.read(np.arange(start, min(start + batch_size, len(self))))

    def map(self, fn: Callable[[torch.Tensor, np.ndarray], torch.Tensor], shape: tuple[int, int, int] | None = None) -> "LazyImages":
        """A view with `fn(images, positions)` applied to every batch read (positions in this view)."""
        return LazyImages(MappedStore(self, fn, shape or tuple(self.shape[1:])), workers=self.workers)


Images = torch.Tensor | LazyImages  # what an ImageSet's images are


def _store_identity(store: Any) -> str | None:
    """What a store reads, as a digest: its files (path, size, mtime), its codes, or its parts; None when it cannot be
    told (a user's Dataset, a mapped view's function)."""
    import hashlib
    import os

    h = hashlib.blake2b(digest_size=16)
    if isinstance(store, (FileStore, ZipStore)):
        for p in store.paths if isinstance(store, FileStore) else [store.path]:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        if isinstance(store, ZipStore):
            h.update("|".join(store.names).encode())
        h.update(f"{store.mode}|{store.size}".encode())
    elif isinstance(store, ArrayStore):
        if store._codes is not None:
            h.update(np.ascontiguousarray(store._codes).tobytes())
        elif store.origin is not None:
            h.update(str(store.origin[1]).encode())
        else:
            for p in store.shards:
                st = os.stat(p)
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(str(store.levels).encode())
    elif isinstance(store, TorchvisionStore):
        h.update(f"{store.source}|{os.path.abspath(store.root)}|{store.train}|{store.count}".encode())
    elif isinstance(store, TensorStore):
        h.update(store.images.detach().cpu().float().contiguous().numpy().tobytes())
    elif isinstance(store, ConcatStore):
        for part in store.parts:
            d = fingerprint(part)
            if d is None:
                return None
            h.update(d.encode())
    else:
        return None
    return h.hexdigest()


def fingerprint(images: "Images") -> str | None:
    """A digest of a set's images (a tensor's values; a view's store and index), to key what is computed from them once
    (reference features); None when a lazy set's store cannot be told apart from another."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    if isinstance(images, torch.Tensor):
        h.update(images.detach().cpu().float().contiguous().numpy().tobytes())
        h.update(str(tuple(images.shape)).encode())
        return h.hexdigest()
    identity = _store_identity(images.store)
    if identity is None:
        return None
    h.update(identity.encode())
    h.update(b"all" if images.index is None else np.ascontiguousarray(images.index).tobytes())
    return h.hexdigest()


def is_lazy(images: Any) -> bool:
    return isinstance(images, LazyImages)


def cat_images(parts: Sequence[Images]) -> Images:
    """Images one after the other: `torch.cat` of tensors, a view (no copy) when any part is lazy."""
    parts = [p for p in parts if len(p)] or list(parts[:1])
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(list(parts))
    return LazyImages(ConcatStore(parts), workers=max(getattr(p, "workers", 0) for p in parts))


def as_tensor(images: Images, what: str = "images", max_bytes: int | None = None) -> torch.Tensor:
    """The images as one float tensor: a tensor as it is; a lazy set read, refused with one line when too large."""
    if isinstance(images, torch.Tensor):
        return images
    limit = MAX_LOAD_BYTES if max_bytes is None else max_bytes
    if images.nbytes() > limit:  # the one line that says how large, prefixed with who asked
        raise DataError(f"{what}: {len(images)} images of {tuple(images.shape[1:])} are {images.nbytes() / 2**30:.1f} GiB as "
                        f"float32, more than {limit / 2**30:.1f} GiB to hold in memory; iterate them in batches (ImageSet.batches)")
    return images.load(limit)  # a file that cannot be read is named by the store


def take(images: Images, index: torch.Tensor) -> torch.Tensor:
    """The images at `index` as a float tensor: indexed from a tensor (on its device), read from a lazy set."""
    if isinstance(images, torch.Tensor):
        return images[index.to(images.device)]
    return images.read(index.cpu().numpy())


def map_images(images: Images, fn: Callable[[torch.Tensor, np.ndarray], torch.Tensor], shape: tuple[int, int, int] | None = None
               ) -> Images:
    """`fn(images, positions)` applied: at once to a tensor, per batch read to a lazy set."""
    if isinstance(images, torch.Tensor):
        return fn(images, np.arange(len(images)))
    return images.map(fn, shape)


def iter_chunks(images: Images, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive chunks of `batch_size` images, as float tensors."""
    return iter(images.split(batch_size))


class _Reader(torch.utils.data.Dataset):
    """Batches of a lazy set for a DataLoader: `__getitems__` reads a whole index batch in one call."""

    def __init__(self, images: LazyImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, index: list[int]) -> torch.Tensor:
        return self.images.read(np.asarray(index))


def iter_batches(images: Images, batches: Sequence[torch.Tensor], workers: int | None = None) -> Iterator[torch.Tensor]:
    """The images of each index batch in turn (an epoch's shuffled order, cut in batches).

    A tensor is indexed; a lazy set is read per batch, in `workers` DataLoader processes
    when decoding costs (0: in this process). The batches are exactly the ones asked for,
    in order, so a seeded order gives the same batches with or without workers.
    """
    if isinstance(images, torch.Tensor):
        for idx in batches:
            yield images[idx.to(images.device)]
        return
    workers = images.workers if workers is None else workers
    if workers <= 0:
        for idx in batches:
            yield images.read(idx.cpu().numpy())
        return
    loader = torch.utils.data.DataLoader(_Reader(images), batch_sampler=[idx.cpu().tolist() for idx in batches],
                                         num_workers=workers, collate_fn=lambda x: x, persistent_workers=False)
    try:
        yield from loader
    except DataError as err:  # re-raised by the DataLoader with the worker's traceback in its message: its last line
        raise DataError(str(err).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None


# --- the shard format of `synthdata prepare`, and its reader -----------------------------------------------------


def scan_folder(root: Path, what: str, classes: bool = True) -> tuple[list[Path], list[int], list[str]]:
    """The image files of a folder in name order with their labels: one sub-folder per class (`classes`), else
    every image under `root` (label 0). DataError naming the folder when there is nothing to read."""
    if not root.is_dir():
        raise DataError(f"{what}: directory does not exist: {root}")
    if not classes:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"{root}: no image files in this folder")
        return files, [0] * len(files), []
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise DataError(f"{what}: {root} needs at least two class sub-folders, found {len(names)}")
    files, labels = [], []
    for label, name in enumerate(names):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(f"{what}: class folder has no images: {root / name}")
        files += found
        labels += [label] * len(found)
    return files, labels, names


def check_headers(paths: Sequence[Path]) -> None:
    """Open every file's header (cheap: no pixels decoded), so a file that is no image fails before any run opens."""
    from PIL import Image, UnidentifiedImageError

    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018  the header is parsed on open; reading a field keeps linters quiet
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise DataError(f"{path} (image {i}): cannot read image ({type(err).__name__})") from None


def write_zip(files: Sequence[Path], labels: Sequence[int], classes: Sequence[str], out: Path, *, size: int | None = None,
              progress: bool = True) -> dict:
    """Write images as an uncompressed zip of PNGs with `dataset.json` (labels, classes): every image decoded, so a
    corrupt one fails here, naming it. Returns what `dataset.json` holds besides the labels."""


    mode = image_mode(files[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        return _write_zip(files, labels, classes, out, tmp, mode, size, progress)
    finally:
        tmp.unlink(missing_ok=True)  # nothing half-written is left (the finished zip was moved to `out`)


def _write_zip(files: Sequence[Path], labels: Sequence[int], classes: Sequence[str], out: Path, tmp: Path, mode: str,
               size: int | None, progress: bool) -> dict:
    import io

    from PIL import Image
    from tqdm import tqdm

    shape = None
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        names = []
        for i, path in enumerate(tqdm(files, desc=f"prepare {out.name}", unit="img", disable=not progress)):
            array = decode_image(path, f"{path} (image {i})", mode, size)
            if shape is None:
                shape = array.shape
            elif array.shape != shape:
                raise DataError(f"{path} (image {i}): image size {array.shape[:2]} differs from {shape[:2]} of {files[0]}; "
                                "pass --image-size to resize")
            name = f"{i // 1000:05d}/img{i:08d}.png"
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="png", compress_level=0)
            z.writestr(name, buf.getvalue())
            names.append(name)
        meta = {"classes": list(classes), "mode": mode, "shape": [1 if mode == "L" else 3, *shape[:2]]}
        z.writestr(LABELS_FILE, json.dumps({**meta, "labels": [[n, int(lab)] for n, lab in zip(names, labels)]}))
    tmp.replace(out)
    return meta


def open_zip(path: Path, what: str, size: int | None) -> tuple[LazyImages, torch.Tensor, int]:
    """A zip written by `synthdata prepare` (or EDM2's dataset_tool): its images as a view, labels and class count."""
    try:
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if Path(n).suffix.lower() in IMAGE_EXTENSIONS)
            meta = json.loads(z.read(LABELS_FILE)) if LABELS_FILE in z.namelist() else {}
            first = z.read(names[0]) if names else b""
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as err:
        raise DataError(f"{what}: {path}: not a readable zip of images ({type(err).__name__})") from None
    if not names:
        raise DataError(f"{what}: {path}: holds no images")
    pairs = dict(meta.get("labels") or [])
    labels = torch.tensor([int(pairs.get(n, 0)) for n in names], dtype=torch.long)
    mode = meta.get("mode") or image_mode(__import__("io").BytesIO(first))
    probe = decode_image(first, f"{path}:{names[0]} (image 0)", mode, size)
    shape = (1 if mode == "L" else 3, *probe.shape[:2])
    num_classes = len(meta.get("classes") or []) or int(labels.max()) + 1
    return LazyImages(ZipStore(path, names, shape, mode, size)), labels, num_classes
