"""The config of ``train-diffusion --backbone``: a ControlNet trained on a frozen Stable Diffusion.

Loaded with :func:`segsynth.config.load_config` like every other stage: unknown keys and
impossible values fail before the backbone or any data is read, naming the dotted key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from segsynth.config import SamplerName, StrictModel
from segsynth.diffusion.config import OptimisationConfig
from segsynth.renamed import renamed_attributes


class BackboneSection(StrictModel):
    """Which weights of the backbone folder are read.

    Attributes:
        variant: load ``*.<variant>.safetensors`` files (e.g. ``fp16``) instead of the plain ones,
            for folders that hold only a half-precision copy.
    """

    variant: str | None = Field(None, min_length=1)


class ControlNetSection(StrictModel):
    """The trained ControlNet (initialised from the backbone's UNet, ``ControlNetModel.from_unet``).

    Attributes:
        conditioning_embedding_out_channels: widths of the small network that brings the hint
            down to the latent grid; it halves the resolution ``len - 1`` times, which must match
            the backbone's VAE factor. None: ControlNet's (16, 32, 96, 256) for a factor-8 VAE,
            its first ``log2(factor) + 1`` entries for smaller factors.
    """

    conditioning_embedding_out_channels: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> ControlNetSection:
        widths = self.conditioning_embedding_out_channels
        if widths is not None and (not widths or any(c < 1 for c in widths)):
            raise ValueError(f"conditioning_embedding_out_channels must be positive widths, got {widths}")
        return self


class BackboneDataConfig(StrictModel):
    """Training crops, hint and prompt.

    Attributes:
        image_size: side of the square training crops (pixels); must be divisible by the VAE
            factor times the UNet's downsampling (64 for Stable Diffusion 1.x/2.x). Stable
            Diffusion 1.5 was trained at 512.
        augmentation: paired augmentation of image and mask (``segsynth.data.augment``).
        edge_image_prob: fraction of training samples whose edge channel also holds the Canny
            edges of the image; the others get the mask boundary alone (what generation from a
            layout provides).
        edge_sigma: Canny smoothing (pixels) of the image edges.
        prompt_drop: probability of training a sample with the empty prompt instead of its
            dataset's prompt (ControlNet drops 50 % of prompts), so the ControlNet learns to read
            the hint alone and classifier-free guidance has an unconditional branch.
    """

    image_size: int = Field(512, ge=8)
    augmentation: Literal["none", "light", "heavy"] = "light"
    edge_image_prob: float = Field(0.5, ge=0.0, le=1.0)
    edge_sigma: float = Field(1.0, ge=0.0)
    prompt_drop: float = Field(0.5, ge=0.0, le=1.0)


class BackboneTrainSection(OptimisationConfig):
    """Optimisation and bookkeeping (the ControlNet's weights only; the backbone never changes):
    :class:`~segsynth.diffusion.config.OptimisationConfig` with ControlNet's defaults, plus these.

    Attributes:
        mixed_precision: ``auto`` is bf16 on CUDA (the frozen backbone is stored in bf16, the
            ControlNet stays float32 under autocast) and float32 on the CPU.
        gradient_checkpointing: recompute the activations of ControlNet and UNet in the backward
            pass instead of storing them: much less GPU memory, about a third slower.
    """

    steps: int = Field(10000, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-5, gt=0)  # ControlNet's learning rate
    warmup: int = Field(0, ge=0)
    weight_decay: float = Field(1e-2, ge=0)
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    gradient_checkpointing: bool = False


class BackboneSamplingConfig(StrictModel):
    """Defaults of :func:`segsynth.controlnet.sample.sample_images` for this run.

    Attributes:
        sampler: diffusers scheduler, derived from the backbone's scheduler config.
        steps: denoising steps.
        guidance_scale: classifier-free guidance on the prompt (1: off; 7.5 is Stable Diffusion's default).
        conditioning_scale: multiplier of the ControlNet's residuals (1: as trained).
        seed: noise seed of sample 0 (sample i uses ``seed + i``).
    """

    sampler: SamplerName = "dpmpp"
    steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0)
    conditioning_scale: float = Field(1.0, ge=0)
    seed: int = Field(0, ge=0)


class ControlNetTrainConfig(StrictModel):
    """Everything ``segsynth train-diffusion --backbone`` needs besides data, backbone and run folders."""

    backbone: BackboneSection = Field(default_factory=BackboneSection)
    controlnet: ControlNetSection = Field(default_factory=ControlNetSection)
    data: BackboneDataConfig = Field(default_factory=BackboneDataConfig)
    train: BackboneTrainSection = Field(default_factory=BackboneTrainSection)
    sampling: BackboneSamplingConfig = Field(default_factory=BackboneSamplingConfig)


__getattr__ = renamed_attributes(__name__, {"BackboneTrainConfig": "ControlNetTrainConfig"})
