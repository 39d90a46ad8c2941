"""Generator sections: the built-in generators by name, and detector guidance of their sampling."""
from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import Discriminator, Field, PrivateAttr, Tag, model_validator

from synthdata.spec.base import Strict


class DiffusionSpec(Strict):
    """A class-conditional diffusers UNet2DModel trained from scratch (DDPM), sampled with DDIM."""

    name: Literal["diffusion"] = "diffusion"
    channels: tuple[int, ...] = Field((32, 64, 64), min_length=1, max_length=5, description="UNet block widths.")
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = Field(True, description="Self-attention in the lowest-resolution blocks.")
    train_steps: int = Field(3000, ge=1, description="Optimizer steps per generation.")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, lt=1)
    warmup_steps: int = Field(200, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the weights used for sampling (0 turns it off).")
    train_timesteps: int = Field(1000, ge=10, description="DDPM noise-schedule length.")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    sampling_steps: int = Field(25, ge=1, le=1000, description="DDIM denoising steps when sampling.")
    sample_batch_size: int = Field(512, ge=1)
    cond_dropout: float = Field(
        0.0, ge=0, lt=1, description="Fraction of training steps with the label dropped (needed for cfg_scale != 1)."
    )
    cfg_scale: float = Field(
        1.0, ge=0, le=20, description="Sampling bias: classifier-free guidance scale (1 = plain conditional sampling)."
    )

    @model_validator(mode="after")
    def _cfg_needs_dropout(self) -> "DiffusionSpec":
        if self.cfg_scale != 1.0 and self.cond_dropout == 0:
            raise ValueError("cfg_scale != 1 needs an unconditional model: set cond_dropout > 0 (e.g. 0.1)")
        return self


class GaussianSpec(Strict):
    """Toy generator: one Gaussian per class over flattened images, fitted by maximum likelihood."""

    name: Literal["gaussian"] = "gaussian"
    covariance: Literal["full", "diag"] = Field("full", description="Full or diagonal covariance.")
    ridge: float = Field(1e-3, ge=0, description="Added to the covariance diagonal so that it stays invertible.")
    unbiased: bool = Field(False, description="Refit with the (n-1) covariance instead of the ML (n) one.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling bias: sample from N(mu, temperature * Sigma).")


class GMMSpec(Strict):
    """Toy generator: a Gaussian mixture per class (scikit-learn, EM)."""

    name: Literal["gmm"] = "gmm"
    components: int = Field(3, ge=1, le=100, description="Mixture components per class.")
    covariance: Literal["full", "diag"] = "full"
    ridge: float = Field(1e-3, ge=0, description="Added to every covariance diagonal (scikit-learn's reg_covar).")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling bias: component covariances scaled by this.")


class PluginSpec(Strict):
    """A generator from a plug-in: a name an installed package registers (entry point group
    `synthdata.generators`) or an import path `package.module:Class`, built as
    `Class(shape=(C, H, W), num_classes=K, device=..., **params)`."""

    name: str = Field(..., min_length=1, description="A registered generator name or an import path package.module:Class.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the plug-in's constructor.")
    _factory: Any = PrivateAttr(None)  # a class given as an object (the Python API), pickled with the spec to workers

    @classmethod
    def of(cls, factory: Any, params: dict[str, Any]) -> "PluginSpec":
        """The section for a generator class given as an object (a notebook's own class, say) rather than by name."""
        from synthdata.errors import SpecError
        from synthdata.plugins import check_generator_class

        name = f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', type(factory).__name__)}"
        try:
            check_generator_class(factory, "generator")
        except SpecError as err:
            raise TypeError(str(err)) from None
        spec = cls.model_construct(name=name, params=dict(params))
        spec._factory = factory
        return spec

    @model_validator(mode="after")
    def _is_a_generator(self) -> "PluginSpec":
        from synthdata.errors import SpecError
        from synthdata.plugins import check_generator_class, check_params, resolve

        try:
            cls = resolve("generator", self.name, "name")
            check_generator_class(cls, "name")
            check_params(cls, self.name, self.params, shape=(1, 1, 1), num_classes=1, device="cpu")
        except SpecError as err:  # as a ValueError, so that the message names where in the file this section is
            raise ValueError(str(err).removeprefix("name: ")) from None
        return self


BUILTIN_SPECS = (DiffusionSpec, GaussianSpec, GMMSpec)
GENERATOR_NAMES: tuple[str, ...] = tuple(get_args(s.model_fields["name"].annotation)[0] for s in BUILTIN_SPECS)
GUIDABLE = ("diffusion",)  # generators whose sampling detector guidance can steer
WARM_STARTABLE = ("diffusion",)  # built-ins whose fit can start from given weights (fit(..., init=state))


def warm_startable(spec: Any) -> bool:
    """Whether the generator can start from given weights: a built-in in WARM_STARTABLE, or a plug-in whose
    `fit` takes `init` (checked on the class, without building it)."""
    if not isinstance(spec, PluginSpec):
        return spec.name in WARM_STARTABLE
    from synthdata.plugins import resolve

    cls = spec._factory or resolve("generator", spec.name, "generator.name")
    try:
        return "init" in inspect.signature(cls.fit).parameters
    except (TypeError, ValueError):
        return False


def _generator_tag(v: Any) -> str:
    """A built-in's own section by its name; any other name is a plug-in's."""
    name = v.get("name", "diffusion") if isinstance(v, dict) else getattr(v, "name", None)
    return name if name in GENERATOR_NAMES else "plugin"


GeneratorSpec = Annotated[
    Union[tuple(Annotated[s, Tag(n)] for s, n in zip(BUILTIN_SPECS, GENERATOR_NAMES)) + (Annotated[PluginSpec, Tag("plugin")],)],
    Discriminator(_generator_tag),
]


def not_guidable(name: str) -> str:
    """The one message for detector guidance asked of a generator it cannot steer."""
    return f"guidance: detector guidance steers a diffusion generator's sampling; generator is '{name}'"


class GuidanceSpec(Strict):
    """Detector guidance of diffusion sampling: a guiding classifier steers every DDIM step.

    After a diffusion generator is trained, a small noise-aware classifier D(x_t, t, y) (the
    guiding classifier) learns to tell noised real training images from noised unguided
    samples at the sampler's timesteps. Its logit estimates log p_real(x_t|y) / p_gen(x_t|y),
    so adding `scale` times its gradient to the generator's score moves samples toward the
    real data (discriminator guidance): scale 1 is the exact correction for a perfect
    classifier, above 1 over-steers.
    """

    scale: float = Field(0.0, ge=0, le=50, description="Guidance scale w (0: off, plain sampling; 1: the density-ratio "
                         "correction; > 1 steers harder).")
    train_samples: int | None = Field(None, ge=10, description="Unguided samples the guiding classifier trains on "
                                      "(default: as many as the real images it sees).")
    width: int = Field(32, ge=4, le=256, description="Channels of its first stage (doubled at each halving, up to 4x).")
    train_steps: int = Field(1500, ge=1, description="Optimizer steps (each: a batch of real and a batch of generated images).")
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0, lt=1)
    val_fraction: float = Field(0.0, ge=0, le=0.5, description="Hold out this share of the real and the generated "
                                "images and keep the weights with the lowest validation loss (0: the last weights). "
                                "Guards a long schedule against memorising the real images.")
    class_conditional: bool = Field(True, description="Condition on the class label too: the ratio p_real(x|y)/p_gen(x|y) "
                                    "of a class-conditional generator.")
