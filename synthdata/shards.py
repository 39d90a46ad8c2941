"""Sample sets written as they are drawn: uint8 shards with a manifest, read back as a lazy view.

A sample set too large to hold (more than `data.in_memory_mb` as float32) is written a
chunk at a time to `images_<first>-<last>.npy` files (uint8 codes of the data's levels;
float32 for continuous toy data) under the study's storage (`tracking.storage`: a local
directory, or any fsspec URL: s3://, gs://, memory://), with `labels.npy` and a
`manifest.json` that says how many images, their shape and levels, and a digest of every
shard. The file names carry the images' indices, so identity is in the names, never in
the order files are listed. MLflow keeps the manifest, not the bulk; `--resume` reads the
shards back through it and refuses a set whose files do not match it.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from synthdata.errors import DataError
from synthdata.imagestore import ArrayStore, LazyImages

MANIFEST = "manifest.json"
SHARD_BYTES = 16 * 2**20  # uint8 bytes per shard file: a second to upload, one read per many batches, and the unit
# of work of sharded sampling (`synthdata.sampling`), so a set drawn by k workers has the shards of a set drawn by one


def _fs(root: str) -> tuple[Any, str]:
    """The filesystem of `root` (a local path or an fsspec URL) and the path inside it."""
    from fsspec.core import url_to_fs

    return url_to_fs(root)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def is_local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")


def study_storage(storage: str | None, report_dir: str, study: str) -> str:
    """A new folder for one run of a study's sample shards: under `tracking.storage` (default REPORT_DIR/<study>/samples),
    named by the time and a random suffix so two runs of a study never share one. A local path is made absolute: a Ray
    worker may run in another directory than the driver."""
    import os
    import time
    import uuid
    from pathlib import Path

    root = storage or str(Path(report_dir) / study / "samples")
    if is_local(root):
        root = str(Path(root.removeprefix("file://")).expanduser().resolve())
    return join(root, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def storage_of(spec: Any) -> str:
    """A new folder for this run's shards of a study (`study_storage` of its `tracking.storage`, report dir and name)."""
    return study_storage(spec.tracking.storage, str(spec.tracking.report_dir), spec.name)


def check_writable(root: str, what: str = "tracking.storage") -> None:
    """Write and remove a probe file under `root`: a storage that cannot be written is refused before a study starts."""
    probe = join(root, ".synthdata-probe")
    try:
        fs, path = _fs(probe)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(b"ok")
        fs.rm(path)
    except Exception as err:  # any backend's error: permissions, a missing bucket, no credentials, an unknown protocol
        raise DataError(f"{what}: cannot write to {root} ({type(err).__name__}: {str(err)[:200]})") from None


@dataclass
class Manifest:
    """What a shard set holds and where: enough to read it back and to tell a damaged set."""

    root: str
    count: int
    shape: list[int]
    levels: int | None
    num_classes: int
    dtype: str  # uint8 (codes of `levels`) or float32 (continuous)
    shards: list[dict] = field(default_factory=list)  # {"file", "start", "count", "digest"}
    labels_digest: str = ""

    @property
    def fingerprint(self) -> str:
        """One digest of every shard's and the labels' digests: two sets with the same fingerprint hold the same images."""
        h = hashlib.blake2b(digest_size=16)
        for s in self.shards:
            h.update(s["digest"].encode())
        h.update(self.labels_digest.encode())
        return h.hexdigest()

    def to_json(self) -> dict:
        return {**asdict(self), "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, d: dict) -> "Manifest":
        return cls(**{k: v for k, v in d.items() if k != "fingerprint"})


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def to_codes(images: torch.Tensor, levels: int | None) -> np.ndarray:
    """Images in [-1, 1] (quantized to `levels` already) as stored: uint8 codes when `levels` <= 256, else float32."""
    x = images.detach().cpu().float()
    if levels is None or levels > 256:
        return x.numpy().astype(np.float32)
    return torch.round((x.clamp(-1, 1) + 1) * ((levels - 1) / 2)).to(torch.uint8).numpy()


def images_per_shard(shape: Sequence[int], levels: int | None) -> int:
    """Images per shard file for images of `shape` (uint8 codes when `levels` <= 256, else float32)."""
    itemsize = 1 if levels is not None and levels <= 256 else 4
    return max(1, SHARD_BYTES // (int(np.prod(shape)) * itemsize))


def merge_parts(root: str, parts: Sequence[Manifest], labels: torch.Tensor) -> Manifest:
    """One shard set of parts written side by side under `root` (each in its own folder, by several workers): the
    manifest lists every part's shards in image order and the set's labels are written once. Parts laid out as one
    writer would have cut the set give its very shards, digests and fingerprint."""
    parts = sorted(parts, key=lambda m: m.shards[0]["start"] if m.shards else 0)
    shards, offset = [], 0
    for part in parts:
        prefix = part.root.rstrip("/").rsplit("/", 1)[-1]
        for s in part.shards:
            shards.append({**s, "file": f"{prefix}/{s['file']}", "start": offset})
            offset += s["count"]
    if offset != len(labels):
        raise ValueError(f"merge_parts: the parts hold {offset} images, the labels {len(labels)}")
    fs, path = _fs(root)
    data = _npy(labels.cpu().long().numpy())
    with fs.open(join(path, "labels.npy"), "wb") as f:
        f.write(data)
    first = parts[0]
    manifest = Manifest(str(root), offset, first.shape, first.levels, first.num_classes, first.dtype, shards, _digest(data))
    with fs.open(join(path, MANIFEST), "w") as f:
        json.dump(manifest.to_json(), f, indent=1)
    return manifest


class ShardWriter:
    """Writes a sample set a chunk at a time: `add(images, labels)` as they are drawn, then `close()` -> Manifest."""

    def __init__(self, root: str, shape: tuple[int, int, int], levels: int | None, num_classes: int, *,
                 start: int = 0, per_shard: int | None = None) -> None:
        self.root, self.shape, self.levels, self.num_classes = str(root), tuple(shape), levels, num_classes
        self.dtype = "uint8" if levels is not None and levels <= 256 else "float32"
        self.per_shard = per_shard or images_per_shard(shape, levels)
        self.start = start  # the first image's index in the whole set: file names say where a part's images sit
        self.fs, self.path = _fs(self.root)
        self.fs.makedirs(self.path, exist_ok=True)
        self.pending: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.count = 0
        self.written = 0
        self.shards: list[dict] = []

    def _codes(self, images: torch.Tensor) -> np.ndarray:
        return to_codes(images, self.levels)

    def add(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Append images (n, C, H, W) in [-1, 1] (quantized to the set's levels already) and their labels."""
        self.pending.append(self._codes(images))
        self.labels.append(labels.detach().cpu().long().numpy())
        self.count += len(images)
        while sum(len(p) for p in self.pending) >= self.per_shard:
            self._flush(self.per_shard)

    def _flush(self, n: int) -> None:
        block = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        shard, rest = block[:n], block[n:]
        self.pending = [rest] if len(rest) else []
        first = self.start + self.written
        name = f"images_{first:08d}-{first + len(shard) - 1:08d}.npy"
        data = _npy(np.ascontiguousarray(shard))
        with self.fs.open(join(self.path, name), "wb") as f:
            f.write(data)
        self.shards.append({"file": name, "start": first, "count": len(shard), "digest": _digest(data)})
        self.written += len(shard)

    def close(self) -> Manifest:
        """Write what is left, the labels and the manifest (last: a set without one was not finished)."""
        if self.pending:
            self._flush(sum(len(p) for p in self.pending))
        labels = _npy(np.concatenate(self.labels) if self.labels else np.zeros(0, dtype=np.int64))
        with self.fs.open(join(self.path, "labels.npy"), "wb") as f:
            f.write(labels)
        manifest = Manifest(self.root, self.count, list(self.shape), self.levels, self.num_classes, self.dtype, self.shards,
                            _digest(labels))
        with self.fs.open(join(self.path, MANIFEST), "w") as f:
            json.dump(manifest.to_json(), f, indent=1)
        return manifest


class RemoteShardStore(ArrayStore):
    """Shards on an fsspec filesystem (object storage): each shard is fetched whole on first use and kept in this
    process (the last few), since object storage has no memory map."""

    KEEP = 4

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.levels = manifest.levels if manifest.dtype == "uint8" else None
        self._codes = None
        self.shards = [join(manifest.root, s["file"]) for s in manifest.shards]
        self.shape = tuple(manifest.shape)
        self.dtype = np.dtype(manifest.dtype)
        self._offsets = np.cumsum([0, *(s["count"] for s in manifest.shards)])
        self._maps = None
        self._cache: dict[int, np.ndarray] = {}
        self.origin = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}

    def _open(self) -> list:
        return [_LazyShard(self, k) for k in range(len(self.shards))]

    def _fetch(self, k: int) -> np.ndarray:
        if k not in self._cache:
            if len(self._cache) >= self.KEEP:
                self._cache.pop(next(iter(self._cache)))
            fs, path = _fs(self.shards[k])
            with fs.open(path, "rb") as f:
                self._cache[k] = np.load(io.BytesIO(f.read()), allow_pickle=False)
        return self._cache[k]


class _LazyShard:
    def __init__(self, store: RemoteShardStore, k: int) -> None:
        self.store, self.k = store, k

    def __getitem__(self, index):
        return self.store._fetch(self.k)[index]


def open_shards(root: str, *, verify: bool = False) -> tuple[LazyImages, torch.Tensor, Manifest]:
    """A shard set's images as a lazy view, its labels and manifest. `verify` reads every file and checks it against
    the manifest's digests (a truncated, deleted or changed shard raises DataError naming it)."""
    root = str(root)
    fs, path = _fs(root)
    try:
        with fs.open(join(path, MANIFEST), "r") as f:
            manifest = Manifest.from_json(json.load(f))
    except FileNotFoundError:
        raise DataError(f"{root}: no {MANIFEST} (the sample set was not finished, or is not there)") from None
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"{root}: unreadable {MANIFEST} ({type(err).__name__})") from None
    manifest.root = root  # where it is now (a copied set keeps working)
    if verify:
        verify_shards(manifest)
    with fs.open(join(path, "labels.npy"), "rb") as f:
        labels = torch.from_numpy(np.load(io.BytesIO(f.read()), allow_pickle=False)).long()
    if len(labels) != manifest.count:
        raise DataError(f"{root}: labels.npy has {len(labels)} labels, the manifest {manifest.count} images")
    if is_local(root):
        local = root.removeprefix("file://")
        store = ArrayStore(shards=[join(local, s["file"]) for s in manifest.shards],
                           levels=manifest.levels if manifest.dtype == "uint8" else None)
    else:
        store = RemoteShardStore(manifest)
    store.origin = (root, manifest.fingerprint, manifest.count)  # what a kept reference to this set names
    return LazyImages(store), labels, manifest


def verify_shards(manifest: Manifest) -> None:
    """Every shard (and the labels) present and as the manifest says: DataError naming the first that is not."""
    fs, path = _fs(manifest.root)
    for s in [*manifest.shards, {"file": "labels.npy", "digest": manifest.labels_digest}]:
        where = join(manifest.root, s["file"])
        try:
            with fs.open(join(path, s["file"]), "rb") as f:
                data = f.read()
        except (FileNotFoundError, OSError):
            raise DataError(f"{where}: missing (the shard set does not match its manifest)") from None
        if _digest(data) != s["digest"]:
            raise DataError(f"{where}: differs from the manifest (truncated or changed)")
