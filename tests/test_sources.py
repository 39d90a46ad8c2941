"""Sources a detector can be pointed at, and detectors beyond the small CNN: each loads and trains for real."""
from __future__ import annotations

from pathlib import Path

import torch

from synthdata.classifiers import augment_batch, create_classifier, predict_logits, train_classifier
from synthdata.data import ImageSet, load_digits_set
from synthdata.sources import load_source, to_real_format
from synthdata.spec import CheckpointSource, ClassifierSpec, GaussianSpec, PipelineSource, SamplesSource


def _tiny_pipeline(path: Path) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20)).save_pretrained(path)
    return path


def test_a_diffusers_pipeline_saved_locally_loads_back_and_samples_in_the_real_format(tmp_path):
    real = load_digits_set()
    spec = PipelineSource(type="pipeline", path=str(_tiny_pipeline(tmp_path / "ddpm")), size=20, sampling_steps=4, batch_size=8)
    a, b = load_source(spec, real, seed=0), load_source(spec, real, seed=0)
    assert a.images.shape == (20, 1, 8, 8) and torch.isfinite(a.images).all()
    assert set(torch.unique(a.images).tolist()) <= set(torch.unique(real.images).tolist())  # quantized to the 17 digit levels
    assert torch.equal(a.images, b.images)  # seeded


def test_a_generator_checkpoint_samples_what_the_generator_would(tmp_path):
    from safetensors.torch import save_file

    from synthdata.generators import create_generator

    real = load_digits_set()
    gen_spec = GaussianSpec(name="gaussian", covariance="diag")
    generator = create_generator(gen_spec, real.shape, real.num_classes)
    generator.fit(real, seed=0)
    save_file(generator.state_dict(), str(tmp_path / "generator.safetensors"))
    loaded = load_source(CheckpointSource(type="checkpoint", path=tmp_path / "generator.safetensors", generator=gen_spec, size=50), real, seed=3)
    labels = loaded.labels  # the source drops labels; compare against the generator's own draw with the same seeds
    from synthdata.data import class_balanced_labels, quantize
    from synthdata.seeds import Purpose, stream_seed

    labels_seed, noise_seed = stream_seed(3, Purpose.LABELS), stream_seed(3, Purpose.SAMPLES)
    expected = quantize(generator.sample(class_balanced_labels(50, real.labels, 10, torch.Generator().manual_seed(labels_seed)),
                                         seed=noise_seed), real.levels)
    assert loaded.images.shape == (50, 1, 8, 8) and labels.eq(0).all()
    assert torch.allclose(loaded.images, expected)


def test_a_colour_sample_set_is_converted_to_the_real_channels_and_size(tmp_path):
    from synthdata.data import load_samples, quantize, save_samples

    real = load_digits_set()
    g = torch.Generator().manual_seed(0)
    rgb = ImageSet(quantize(torch.rand(12, 3, 16, 16, generator=g) * 2 - 1, 256), torch.zeros(12, dtype=torch.long), 1, 256)
    save_samples(rgb, tmp_path / "s.safetensors")
    out = load_source(SamplesSource(type="samples", path=tmp_path / "s.safetensors"), real, seed=0)
    assert out.images.shape == (12, 1, 8, 8)
    # Compared with the stored images (8-bit codes), not the float ones: a value on a rounding edge of the
    # 17 grey levels could otherwise land on either side.
    saved = load_samples(tmp_path / "s.safetensors").images
    assert torch.allclose(saved, rgb.images, atol=1e-6)
    assert torch.equal(out.images, to_real_format(saved, real, "x").images)


def test_timm_detectors_train_on_8px_grey_images():
    real = load_digits_set()
    x, y = real.images[:96], (real.labels[:96] % 2)
    for name in ("resnet18", "vit_tiny_patch16_224"):
        model = train_classifier(ClassifierSpec(name=name, epochs=1, batch_size=32), x, y, 2, seed=0)
        assert predict_logits(model, x[:5]).shape == (5, 2), name


def test_pretrained_timm_weights_come_from_a_local_file(tmp_path):
    import timm

    source = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    spec = ClassifierSpec(name="resnet18", pretrained=tmp_path / "resnet18.pth")
    model = create_classifier(spec, in_channels=1, num_classes=2, image_size=8).model
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    # timm folds the RGB stem into one grey channel by summing it.
    assert torch.allclose(model.conv1.weight, source.conv1.weight.sum(1, keepdim=True), atol=1e-5)


def test_early_stopping_ends_training_on_unlearnable_labels_and_augmentation_keeps_shapes():
    real = load_digits_set()
    x = real.images[:300]
    y = torch.randint(0, 2, (300,), generator=torch.Generator().manual_seed(0))  # nothing to learn
    epochs = []
    spec = ClassifierSpec(epochs=40, batch_size=64, val_fraction=0.2, patience=2)
    train_classifier(spec, x, y, 2, seed=0, on_epoch=lambda e, m, loss: epochs.append(e))
    assert len(epochs) < 40  # stopped once validation loss stopped improving
    g = torch.Generator().manual_seed(0)
    img = torch.arange(64.0).reshape(1, 1, 8, 8).repeat(4, 1, 1, 1)
    out = augment_batch(img, crop_padding=2, flip=True, g=g)
    assert out.shape == img.shape and not torch.equal(out, img)
    assert set(out.unique().tolist()) <= set(range(64))  # crops of the reflect-padded image: no new values


def test_a_diffusion_checkpoint_is_diffusers_format_and_samples_without_its_generator_section(tmp_path):
    """A loop's diffusion checkpoint (checkpoints/generation_XXX/generator/) loads in plain diffusers, and a detect
    source reads it with no `generator:` section, drawing exactly what the generator itself draws."""
    from diffusers import UNet2DModel

    from synthdata.data import class_balanced_labels, quantize
    from synthdata.generators import checkpoint_files, create_generator
    from synthdata.seeds import Purpose, stream_seed
    from synthdata.spec import DiffusionSpec

    real = load_digits_set()
    spec = DiffusionSpec(channels=(8, 16), attention=False, train_steps=20, batch_size=64, warmup_steps=0, sampling_steps=4)
    generator = create_generator(spec, real.shape, real.num_classes)
    generator.fit(real, seed=0)
    for name, data in checkpoint_files(generator).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    unet = UNet2DModel.from_pretrained(tmp_path / "generator" / "unet")
    assert unet.config.num_class_embeds == 10 and unet.config.sample_size == 8
    loaded = load_source(CheckpointSource(type="checkpoint", path=tmp_path / "generator", size=30), real, seed=1)
    labels = class_balanced_labels(30, real.labels, 10, torch.Generator().manual_seed(stream_seed(1, Purpose.LABELS)))
    expected = quantize(generator.sample(labels, seed=stream_seed(1, Purpose.SAMPLES)), real.levels)
    assert torch.allclose(loaded.images, expected, atol=1e-6)


def test_a_pipeline_source_too_large_to_hold_is_written_as_shards_with_the_same_images(tmp_path):
    from synthdata.imagestore import as_tensor, is_lazy

    real = load_digits_set()
    spec = PipelineSource(type="pipeline", path=str(_tiny_pipeline(tmp_path / "ddpm")), size=20, sampling_steps=4, batch_size=8)
    held = load_source(spec, real, seed=1)
    stored = load_source(spec, real, seed=1, storage=str(tmp_path / "shards"), in_memory_mb=0.001)
    assert not is_lazy(held.images) and is_lazy(stored.images) and (tmp_path / "shards" / "manifest.json").is_file()
    assert torch.equal(held.images, as_tensor(stored.images)) and len(stored) == 20
