"""Generators, picked by name: `create_generator(spec, shape, num_classes)`.

The built-ins and plug-ins resolve through one registry (`synthdata.plugins`). Every
generator follows the `Generator` protocol below: `fit(data, seed=..., progress=...)`
trains it from scratch on an ImageSet, `sample(labels, seeds=...)` returns images in
[-1, 1] for the given class labels (image i drawn from seeds[i] alone), and its state goes
to and from tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import torch

from synthdata.data import ImageSet, Splits
from synthdata.spec import GeneratorSpec

ProgressFn = Callable[[float], None]  # called with the fraction done (0..1); loops turn it into progress events


class Collapsed(ArithmeticError):
    """A fit that became singular: the model has collapsed (a Gaussian's variance reached 0) and cannot be sampled.

    In a loop this is a finding, not a crash: the arm records the generation and ends
    FINISHED (`loops.autophagy.Collapse`). Any generator, a plug-in's too, may raise it
    from `fit` or `sample`; the message says what became singular.
    """


class Generator(Protocol):
    """What every generator offers; a plug-in is built as `Class(shape=(C, H, W), num_classes=K, device=..., **params)`.

    Images are float tensors (N, C, H, W) in [-1, 1]; labels are class indices. `fit` must
    draw all its randomness from `seed` (a replicate replicates it), and may call
    `progress(fraction)` now and then. A generator that ignores labels is unconditional:
    it still receives them, and downstream accuracy then measures nothing useful.
    """

    def fit(self, data: ImageSet, *, seed: int, progress: ProgressFn | None = None) -> dict[str, float]:
        """Train from scratch; return summary figures (final loss, ...). Raise `Collapsed` when the fit is singular."""

    def sample(self, labels: torch.Tensor, *, seeds: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1], one per label, image i drawn from `seeds[i]` (int64) alone.

        Per-image seeds make a sample set the same image for image however it is batched or
        spread over workers (`synthdata.seeds.stacked_randn` draws such noise). A plug-in whose
        `sample` takes `seed: int` instead still works: it is called once per group of
        `synthdata.seeds.SEED_GROUP` images, each group with its first image's seed.
        """

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that restore the fitted generator (saved as safetensors)."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from `state_dict()`."""

    # Optional: `save_pretrained(directory)` writes a checkpoint that loads on its own (the diffusion
    # generator writes diffusers' format); without it a checkpoint is `state_dict()` as safetensors.
    # Optional: a class attribute `data_parallel = True` says `fit` takes its part of every batch through
    # `synthdata.parallel`, so `resources.workers_per_arm` runs it on all of an arm's workers at once.


def create_generator(spec: GeneratorSpec, shape: tuple[int, int, int], num_classes: int, device: str = "cpu") -> Generator:
    """Build the generator named by `spec.name` for images of `shape` with `num_classes` classes.

    Built-ins take their typed section; a plug-in (`PluginSpec`) its `params` as keywords.
    Modules are imported on demand: diffusers takes seconds to import, and toy arms never need it.
    """
    from synthdata.plugins import resolve
    from synthdata.spec import PluginSpec

    if isinstance(spec, PluginSpec):
        cls = spec._factory or resolve("generator", spec.name, "generator.name")
        return cls(shape=tuple(shape), num_classes=num_classes, device=device, **spec.params)
    return resolve("generator", spec.name, "generator.name")(spec, shape, num_classes, device)


def trains_data_parallel(spec: GeneratorSpec) -> bool:
    """Whether the generator named by `spec` trains data-parallel (`data_parallel = True` on its class: its `fit` takes
    its part of every batch through `synthdata.parallel`), so `resources.workers_per_arm` spreads its fit."""
    from synthdata.plugins import resolve
    from synthdata.spec import PluginSpec

    factory = (spec._factory if isinstance(spec, PluginSpec) else None) or resolve("generator", spec.name, "generator.name")
    return bool(getattr(factory, "data_parallel", False))


SAMPLE_CHUNK_BYTES = 256 * 2**20  # float32 images per call of `Generator.sample`: what one chunk holds in memory


def sample_chunk(shape: tuple[int, int, int]) -> int:
    """Images per `Generator.sample` call for images of `shape` (every digits or MNIST set is one chunk)."""
    return max(1, SAMPLE_CHUNK_BYTES // (4 * int(torch.tensor(shape).prod())))


def sample_images(generator: Generator, labels: torch.Tensor, seeds: torch.Tensor, shape: tuple[int, int, int],
                  levels: int | None, context: str = "generator diverged") -> Iterator[torch.Tensor]:
    """The images (of `shape`) for `labels`, image i from `seeds[i]`, quantized to `levels`: `sample_chunk` at a time.

    A generator that takes only `seed` is called per fixed group of `SEED_GROUP` images (the
    group's first seed), so its images too do not depend on the chunk size. Non-finite samples
    raise FloatingPointError: a generator that blew up (temperature > 1 compounds every
    generation of a loop) must stop there, not poison later metrics.
    """
    from synthdata.data import quantize
    from synthdata.seeds import SEED_GROUP, takes_image_seeds

    per_image = takes_image_seeds(generator)
    step = sample_chunk(shape) if per_image else max(1, sample_chunk(shape) // SEED_GROUP) * SEED_GROUP
    for first in range(0, len(labels), step):
        y, s = labels[first : first + step], seeds[first : first + step]
        if per_image:
            images = generator.sample(y, seeds=s)
        else:  # groups start at multiples of SEED_GROUP of the whole set (`step` is a multiple of it)
            images = torch.cat([generator.sample(yg, seed=int(sg[0])) for yg, sg in zip(y.split(SEED_GROUP), s.split(SEED_GROUP))])
        images = quantize(images, levels)
        if not torch.isfinite(images).all():
            raise FloatingPointError(f"{context}: its samples are not finite")
        yield images


def draw_samples(generator: Generator, n: int, real: ImageSet, *, label_seed: int, sample_seed: int,
                 context: str = "generator diverged", storage: str | None = None, in_memory_mb: float | None = None) -> ImageSet:
    """`n` samples with the real set's class balance, quantized to its intensity levels (as saving them would).

    Image i is drawn from its own seed (`image_seeds(sample_seed, i)`) for the i-th of the
    set's class-balanced labels (`label_seed`), so the set does not depend on how many images
    are drawn per call, on the generator's batch size or on the number of workers drawing it.
    When `storage` is given and the set is larger than `in_memory_mb` as float32, each chunk
    is written there as uint8 shards as it is drawn (`synthdata.shards`) and the set comes
    back as a lazy view of them; otherwise it is held in memory.
    """
    from synthdata.data import class_balanced_labels
    from synthdata.seeds import image_seeds

    labels = class_balanced_labels(n, real.labels, real.num_classes, torch.Generator().manual_seed(label_seed))
    seeds = image_seeds(sample_seed, 0, n)
    chunks = sample_images(generator, labels, seeds, real.shape, real.levels, context)
    return collect_samples(chunks, labels, real, storage=storage, in_memory_mb=in_memory_mb)


def collect_samples(chunks: Iterable[torch.Tensor], labels: torch.Tensor, real: ImageSet, *, storage: str | None = None,
                    in_memory_mb: float | None = None) -> ImageSet:
    """Image chunks (in the real format, in order) for `labels` as one sample set: written to `storage` as shards while
    they come when the set is larger than `in_memory_mb` (a lazy view of them comes back), else held in memory."""
    from synthdata.data import spills

    shape, n = real.shape, len(labels)
    writer = None
    if spills(n, shape, storage, in_memory_mb):
        from synthdata.shards import ShardWriter

        writer = ShardWriter(storage, shape, real.levels, real.num_classes)
    held, done = [], 0
    for images in chunks:
        if writer is not None:
            writer.add(images, labels[done : done + len(images)])
        else:
            held.append(images)
        done += len(images)
    if writer is None:
        images = torch.cat(held) if len(held) != 1 else held[0] if held else torch.zeros((0, *shape))
        return ImageSet(images, labels, real.num_classes, real.levels)
    from synthdata.shards import open_shards

    writer.close()
    images, stored_labels, _ = open_shards(storage)
    return ImageSet(images, stored_labels, real.num_classes, real.levels)


def check_generator(spec: GeneratorSpec, shape: tuple[int, int, int]) -> None:
    """Raise SpecError when the generator cannot work on images of this shape."""
    from synthdata.errors import SpecError

    if spec.name == "diffusion":
        factor = 2 ** (len(spec.channels) - 1)
        if shape[1] % factor or shape[2] % factor:
            raise SpecError(
                f"generator.channels: {len(spec.channels)} UNet levels need an image size divisible by {factor}, "
                f"the data is {shape[1]}x{shape[2]} (set data.image_size or use fewer channels)"
            )


def checkpoint_files(generator: Generator) -> dict[str, bytes]:
    """A fitted generator's checkpoint as files (relative path -> bytes), to travel from a worker to the driver.

    `generator/...` from its `save_pretrained` when it has one (the diffusion generator: diffusers'
    format, loadable by `UNet2DModel.from_pretrained` and by a detect study's checkpoint source
    without a `generator:` section), else `generator.safetensors` from its `state_dict()`.
    """
    import tempfile
    from pathlib import Path

    if hasattr(generator, "save_pretrained"):
        with tempfile.TemporaryDirectory() as tmp:
            generator.save_pretrained(Path(tmp))
            return {f"generator/{p.relative_to(tmp)}": p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    from safetensors.torch import save

    return {"generator.safetensors": save(generator.state_dict())}


PRETRAINED_RECORD = "pretrained.json"  # beside a pretrained checkpoint: what it was trained on


def save_pretrained_generator(generator: Generator, out: Path, record: dict) -> Path:
    """Save a fitted generator as a pretrained start and return the path `loop.pretrained` takes: a diffusers
    directory `out` when it has `save_pretrained`, else a .safetensors state (`out` itself when it ends so, else
    `out/generator.safetensors`). `record` (what it was trained on, with `train_fingerprints`) is written beside it."""
    import json

    from safetensors.torch import save_file

    if hasattr(generator, "save_pretrained"):
        out.mkdir(parents=True, exist_ok=True)
        generator.save_pretrained(out)
        path, record_path = out, out / PRETRAINED_RECORD
    else:
        path = out if out.suffix == ".safetensors" else out / "generator.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}, str(path))
        record_path = path.with_name(PRETRAINED_RECORD)
    record_path.write_text(json.dumps(record, indent=1))
    return path


def pretrained_overlap(path: Path, splits: dict[int, Splits]) -> tuple[dict, dict[int, tuple[int, int]]]:
    """For each seed, how many of its evaluation images (held-out and test) were among a pretrained checkpoint's
    training images, and of how many: from the record `synthdata pretrain` wrote beside it; ({}, {}) when it has
    none (a checkpoint made elsewhere)."""
    import json

    from synthdata.data import cat_images, fingerprints

    path = Path(path)
    record_path = (path if path.is_dir() else path.parent) / PRETRAINED_RECORD
    if not record_path.is_file():
        return {}, {}
    record = json.loads(record_path.read_text())
    seen = set(record.get("train_fingerprints", ()))
    overlap = {}
    for seed, split in splits.items():
        evaluated = fingerprints(cat_images([split.heldout.images, split.test.images]))
        overlap[seed] = (sum(f in seen for f in evaluated), len(evaluated))
    return record, overlap


def pretrained_state(path: Path, spec: GeneratorSpec, shape: tuple[int, int, int], num_classes: int) -> dict[str, torch.Tensor]:
    """The weights a loop's generation 1 starts from (`loop.pretrained`), as the generator's `state_dict`.

    A directory is a generator checkpoint in diffusers' format (as this project saves them:
    `unet/`, `scheduler/`, `synthdata.json`; or a bare `UNet2DModel.save_pretrained` folder);
    a file is a .safetensors state of `spec`'s generator. Raises DataError naming the path
    when the weights do not fit the study's generator.
    """
    from synthdata.errors import DataError

    path = Path(path)
    try:
        if path.is_dir():
            from diffusers import UNet2DModel
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.set_verbosity_error()  # its notices (accelerate, fallbacks) are not the user's concern
            unet_dir = path / "unet" if (path / "unet").is_dir() else path
            weights = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
            if not (unet_dir / "config.json").is_file() or not any((unet_dir / w).is_file() for w in weights):
                raise DataError(f"{path}: not a diffusers model (no unet/ or config.json with {weights[0]})")
            state = UNet2DModel.from_pretrained(unet_dir).state_dict()
        else:
            from safetensors.torch import load_file

            state = load_file(str(path))
        create_generator(spec, shape, num_classes).load_state_dict(state)  # they must fit the study's generator
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: not weights of this study's generator ({type(err).__name__}: {str(err)[:200]})") from None
    return {k: v.detach().cpu() for k, v in state.items()}
