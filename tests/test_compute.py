"""The fast path keeps the results: each optimisation against the plain way, within noise.

- bf16 autocast (what `precision: auto` turns on for GPUs; forced here on the CPU) trains
  a classifier to the same accuracy as fp32, and a diffusion model to the same loss;
- sampling in large batches gives the same images as the small batches of the diffusers
  examples (the noise stream does not depend on the batching);
- a worker gets as many torch threads as the CPUs Ray gave it.
"""
from __future__ import annotations

import pytest
import torch

from synthdata import compute
from synthdata.spec import ClassifierSpec, DiffusionSpec, ResourcesSpec

TINY_DIFFUSION = dict(channels=(8, 16), attention=False, train_steps=40, batch_size=64, sampling_steps=5, warmup_steps=5)


@pytest.fixture(autouse=True)
def _restore_precision():
    threads = torch.get_num_threads()
    yield
    compute.set_precision("auto")
    torch.set_num_threads(threads)


def test_precision_modes_resolve_per_device():
    compute.set_precision("auto")
    assert compute.autocast_dtype("cpu") is None  # no native bf16 on most CPUs: stay fp32
    compute.set_precision("bf16")
    assert compute.autocast_dtype("cpu") is torch.bfloat16
    with compute.autocast("cpu"):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype is torch.bfloat16
    compute.set_precision("fp32")
    with compute.autocast("cpu"):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype is torch.float32
    with pytest.raises(ValueError):
        compute.set_precision("fp8")


def test_configure_worker_matches_threads_to_the_cpus_ray_gave():
    assert compute.configure_worker(ResourcesSpec(cpus_per_arm=1, precision="fp32")) == "cpu"
    assert torch.get_num_threads() == 1 and compute.autocast_dtype("cpu") is None
    compute.configure_worker(ResourcesSpec(cpus_per_arm=2))
    assert torch.get_num_threads() == 2


def test_bf16_training_is_within_noise_of_fp32():
    from synthdata.data import load_digits_set
    from synthdata.generators.diffusion import DiffusionGenerator
    from synthdata.metrics.downstream import downstream_accuracy

    data = load_digits_set()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=g)
    train, test = data.subset(order[:700]), data.subset(order[700:])
    spec = ClassifierSpec(epochs=4, batch_size=64)
    diffusion = DiffusionSpec(**{**TINY_DIFFUSION, "train_steps": 80, "batch_size": 32, "lr": 3e-3})
    accs, losses = {}, {}
    for mode in ("fp32", "bf16"):
        compute.set_precision(mode)
        accs[mode] = downstream_accuracy(train.images, train.labels, test.images, test.labels, 10, spec, seed=0)
        losses[mode] = DiffusionGenerator(diffusion, data.shape, 10).fit(train.subset(torch.arange(600)), seed=0)["generator_loss"]
    # ~1100 test images: the 95% interval is about +-0.02 at 0.9; the two must agree within it.
    assert accs["fp32"].value > 0.88 and abs(accs["bf16"].value - accs["fp32"].value) < 0.03, accs
    # The loss has come well down from the noise's variance (1), and bf16 follows the same path.
    assert losses["fp32"] < 0.7 and losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05), losses


def test_large_sampling_batches_give_the_same_images_as_small_ones():
    from synthdata.data import load_digits_set
    from synthdata.generators.diffusion import DiffusionGenerator

    data = load_digits_set()
    labels = torch.arange(200) % 10
    samples = {}
    for batch in (16, 512):
        gen = DiffusionGenerator(DiffusionSpec(**TINY_DIFFUSION, sample_batch_size=batch), data.shape, 10)
        gen.fit(data.subset(torch.arange(300)), seed=0)
        samples[batch] = gen.sample(labels, seed=1)
    torch.testing.assert_close(samples[512], samples[16], atol=1e-4, rtol=1e-4)
