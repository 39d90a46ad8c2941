"""Generated image sources for the detectability instrument, loaded into the real data's format.

A source is anything that yields images: a generator of this project trained here, a
saved sample set, a folder of image files, a pretrained diffusers pipeline, or a
generator checkpoint of this project. Whatever it is, its images come back with the
real images' channels and size, quantized to the real data's intensity levels, so a
detector cannot tell them apart by file format alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthdata.data import ImageSet, quantize, read_image_folder
from synthdata.errors import DataError
from synthdata.imagestore import Images, is_lazy, map_images
from synthdata.seeds import Purpose, image_seeds, stream_seed
from synthdata.spec import CheckpointSource, PipelineSource, SourceSpec


def to_real_format(images: Images, real: ImageSet, what: str) -> ImageSet:
    """Images in [-1, 1] converted to the real set's channels (grey <-> RGB) and size, and quantized to its levels
    (at once for a tensor, per batch read for a lazy set)."""
    (c, h, w), levels = real.shape, real.levels  # what `convert` keeps: a lazy view pickles it, never `real` itself
    if images.shape[1] != c and (images.shape[1], c) not in ((3, 1), (1, 3)):
        raise DataError(f"{what}: images have {images.shape[1]} channels, the real data {c}")

    def convert(x: torch.Tensor, _) -> torch.Tensor:
        if x.shape[1] == 3 and c == 1:
            x = x.mean(1, keepdim=True)
        elif x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return quantize(x.clamp(-1, 1), levels).contiguous()

    images = map_images(images, convert, (c, h, w))
    if isinstance(images, torch.Tensor) and not torch.isfinite(images).all():  # files decode to finite values
        raise FloatingPointError(f"{what}: images are not finite")
    labels = torch.zeros(len(images), dtype=torch.long)  # a source's own class labels are not used by a detector
    return ImageSet(images, labels, real.num_classes, real.levels)


def load_source(spec: SourceSpec, real: ImageSet, *, seed: int, device: str = "cpu", in_memory_mb: float | None = None,
                storage: str | None = None, pool: Any = None) -> ImageSet:
    """The images of one source (a `detect.sources` entry), in `real`'s format. A folder larger than `in_memory_mb`
    (as float32) stays on disk, read per batch; a generator's or checkpoint's samples that large are written to
    `storage` as shards while they are drawn. `pool`: a `synthdata.sampling.SamplingPool` of the task's workers
    (`arm_workers`, for `spec.generator`), which draws a generator's samples and a weights file's, the same images."""
    if spec.type == "generator":
        from synthdata.mixing import make_pool

        samples, _ = make_pool(spec.generator, real, spec.size or len(real), seed=seed, device=device,
                               guidance=spec.guidance, storage=storage, in_memory_mb=in_memory_mb, pool=pool)
        return samples  # drawn in the real format already
    if spec.type == "checkpoint":
        return _from_checkpoint(spec, real, seed=seed, device=device, storage=storage, in_memory_mb=in_memory_mb, pool=pool)
    if spec.type == "samples":
        from synthdata.data import load_samples

        try:
            images = load_samples(spec.path).images
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise DataError(f"{spec.path}: cannot read sample set ({type(err).__name__}: {err})") from None
        return to_real_format(images, real, str(spec.path))
    if spec.type == "folder":
        images = read_image_folder(spec.path, real.shape[-1], mode="L" if real.shape[0] == 1 else "RGB", in_memory_mb=in_memory_mb)
        return to_real_format(images, real, str(spec.path))
    if spec.type == "pipeline":
        return _from_pipeline(spec, real, seed=seed, device=device, storage=storage, in_memory_mb=in_memory_mb)
    raise ValueError(f"unknown source type {spec.type!r}")


def _from_checkpoint(spec: CheckpointSource, real: ImageSet, *, seed: int, device: str, storage: str | None = None,
                     in_memory_mb: float | None = None, pool: Any = None) -> ImageSet:
    """Sample a generator checkpoint: a diffusers-format directory as it is, a .safetensors file into `spec.generator`."""
    from synthdata.generators import create_generator, draw_samples

    try:
        if spec.path.is_dir():
            from synthdata.generators.diffusion import DiffusionGenerator

            generator = DiffusionGenerator.from_pretrained(spec.path, device)
        else:
            from safetensors.torch import load_file

            generator = create_generator(spec.generator, real.shape, real.num_classes, device)
            generator.load_state_dict(load_file(str(spec.path)))
    except Exception as err:
        raise DataError(f"{spec.path}: not a checkpoint of this generator ({type(err).__name__}: {str(err)[:200]})") from None
    if generator.num_classes != real.num_classes:
        raise DataError(f"{spec.path}: a generator of {generator.num_classes} classes, the real data has {real.num_classes}")
    # A weights file is `spec.generator`'s, as the pool's workers are; a diffusers directory has its own architecture.
    draw = pool.draw if pool is not None and not spec.path.is_dir() else draw_samples
    drawn = draw(generator, spec.size or len(real), real, label_seed=stream_seed(seed, Purpose.LABELS),
                         sample_seed=stream_seed(seed, Purpose.SAMPLES), context=str(spec.path), storage=storage,
                         in_memory_mb=in_memory_mb)
    return to_real_format(drawn.images if is_lazy(drawn.images) else drawn.images.cpu(), real, str(spec.path))


def _from_pipeline(spec: PipelineSource, real: ImageSet, *, seed: int, device: str, storage: str | None = None,
                   in_memory_mb: float | None = None) -> ImageSet:
    """Sample a diffusers pipeline (unconditional image pipelines: DDPM, DDIM, ...), a batch at a time in the real
    format; a set larger than `in_memory_mb` goes to `storage` as shards as it is drawn."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # no notices about optional packages in the study's output
    diffusers_logging.disable_progress_bar()
    local = Path(spec.path).is_dir()
    try:
        pipe = DiffusionPipeline.from_pretrained(spec.path, local_files_only=local)
    except Exception as err:
        hint = "" if local else " (not a local directory: loading a hub id needs a network)"
        raise DataError(f"{spec.path}: cannot load a diffusers pipeline{hint} ({type(err).__name__}: {str(err)[:200]})") from None
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    from synthdata.generators import collect_samples

    seeds = image_seeds(stream_seed(seed, Purpose.SAMPLES), 0, spec.size)

    def batches():
        for start in range(0, spec.size, spec.batch_size):
            n = min(spec.batch_size, spec.size - start)
            # A generator per image: diffusers then draws each image's noise (every step's) from its own seed alone.
            generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[start : start + n]]
            out = pipe(batch_size=n, generator=generators, num_inference_steps=spec.sampling_steps, output_type="np").images
            yield to_real_format(torch.from_numpy(np.asarray(out, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1, real,
                                 spec.path).images  # (n, H, W, C) in [0, 1] -> the real format

    return collect_samples(batches(), torch.zeros(spec.size, dtype=torch.long), real, storage=storage, in_memory_mb=in_memory_mb)
