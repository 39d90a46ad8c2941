"""The CUDA path (skipped without a GPU; bench/gpu_check.sh runs these on one): training, sampling, per-image seeds
and the detector on the GPU give what they give on the CPU, within float tolerance."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs these)")


def _fitted(device: str):
    from synthdata.data import load_digits_set
    from synthdata.generators import create_generator
    from synthdata.spec import DiffusionSpec

    real = load_digits_set()
    generator = create_generator(DiffusionSpec(channels=[16, 32], train_steps=30, batch_size=64, sampling_steps=5), real.shape,
                                 real.num_classes, device)
    generator.fit(real.subset(torch.arange(400)), seed=0)
    return generator, real


def test_a_diffusion_model_trains_and_samples_on_the_gpu_from_per_image_seeds():
    from synthdata.compute import set_precision
    from synthdata.seeds import image_seeds

    set_precision("fp32")
    generator, _ = _fitted("cuda")
    labels, seeds = torch.arange(64) % 10, image_seeds(3, 0, 64)
    whole = generator.sample(labels, seeds=seeds)
    alone = torch.cat([generator.sample(labels[i : i + 8], seeds=seeds[i : i + 8]) for i in range(0, 64, 8)])
    assert whole.device.type == "cpu" and torch.isfinite(whole).all()
    torch.testing.assert_close(whole, alone, atol=1e-3, rtol=1e-3)  # cuDNN may pick other kernels per batch size


def test_bf16_autocast_samples_stay_finite_and_close_to_fp32():
    from synthdata.compute import set_precision
    from synthdata.seeds import image_seeds

    generator, _ = _fitted("cuda")
    labels, seeds = torch.arange(32) % 10, image_seeds(4, 0, 32)
    set_precision("fp32")
    fp32 = generator.sample(labels, seeds=seeds)
    set_precision("bf16")
    try:
        bf16 = generator.sample(labels, seeds=seeds)
    finally:
        set_precision("auto")
    assert torch.isfinite(bf16).all() and float((bf16 - fp32).abs().mean()) < 0.1


def test_identical_distributions_are_undetectable_on_the_gpu():
    from synthdata.data import make_splits
    from synthdata.metrics.detectability import real_vs_real
    from synthdata.spec import ClassifierSpec, DataSpec

    splits = make_splits(DataSpec(), seed=0)
    d = real_vs_real(splits.train.images, splits.heldout.images, ClassifierSpec(epochs=3), seed=0, device="cuda")
    assert 0.4 < d.accuracy < 0.6 and d.ci_low < 0.5 < d.ci_high


def test_two_sampling_workers_on_one_gpu_draw_the_images_one_draws(local_ray):
    from synthdata.generators import draw_samples
    from synthdata.sampling import draw_sharded
    from synthdata.spec import DiffusionSpec

    generator, real = _fitted("cuda")
    spec = DiffusionSpec(channels=[16, 32], train_steps=30, batch_size=64, sampling_steps=5)
    kw = dict(label_seed=1, sample_seed=2, item_size=64)
    alone = draw_samples(generator, 300, real, label_seed=1, sample_seed=2)
    for workers in (1, 2):
        drawn = draw_sharded(spec, generator, 300, real, workers=workers, gpus_per_worker=0.5, **kw)
        torch.testing.assert_close(drawn.images, alone.images, atol=2 / 16, rtol=0)  # quantized to 17 levels: a level at most
        assert float((drawn.images != alone.images).float().mean()) < 0.01


def _fit_on_two_gpus(spec) -> float:
    """In a Ray task holding one GPU (as an arm does), with an actor holding another: the shared fit's loss."""
    from synthdata.compute import set_precision
    from synthdata.data import load_digits_set
    from synthdata.fitting import fit_generator
    from synthdata.parallel import TrainingGroup

    set_precision("fp32")  # handed to the actor by the group
    group = TrainingGroup(2, gpus_per_worker=1, device="cuda")
    try:
        with group.active():
            return fit_generator(spec, load_digits_set(), seed=0, device="cuda")[1]["generator_loss"]
    finally:
        group.close()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="data-parallel training over NCCL needs a GPU per worker")
def test_a_diffusion_fit_on_two_gpus_takes_the_steps_one_gpu_takes(local_ray):
    """workers_per_arm: 2 on two GPUs (NCCL): the arm's fit and its actor's, one GPU each, give one GPU's fit."""
    from synthdata.compute import set_precision
    from synthdata.data import load_digits_set
    from synthdata.fitting import fit_generator
    from synthdata.spec import DiffusionSpec

    set_precision("fp32")
    spec = DiffusionSpec(channels=[16, 32], train_steps=20, batch_size=64, sampling_steps=5)
    _, info = fit_generator(spec, load_digits_set(), seed=0, device="cuda")
    shared = local_ray.get(local_ray.remote(num_gpus=1)(_fit_on_two_gpus).remote(spec))
    assert shared == pytest.approx(info["generator_loss"], rel=1e-3)
