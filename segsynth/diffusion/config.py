"""The diffusion training config: model, objective, optimisation, data and preview sampling.

Loaded with :func:`segsynth.config.load_config`, so unknown keys and impossible values fail before
any data is read, with the key's dotted path in the message.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from segsynth.config import SamplerName, StrictModel
from segsynth.data.style_sampling import STYLE_SAMPLERS
from segsynth.diffusion.objective import ObjectiveConfig
from segsynth.models.config import ModelConfig
from segsynth.renamed import renamed_attributes
from segsynth.tracking import LogWith


class OptimisationConfig(StrictModel):
    """The optimiser and bookkeeping settings every training command shares.

    Attributes:
        steps: optimiser steps in total (a resumed run continues up to this number).
        batch_size: samples per step on each process.
        lr: peak AdamW learning rate, reached after ``warmup`` steps.
        lr_schedule: ``constant`` after warm-up, or ``cosine`` decay to zero at ``steps``.
        warmup: linear warm-up steps.
        weight_decay: AdamW weight decay.
        grad_clip: max gradient norm (None: no clipping).
        checkpoint_every: steps between resumable checkpoints (one is also written at the end).
        keep_checkpoints: complete checkpoints kept on disk.
        log_every: steps between lines of ``train_log.jsonl``.
        seed: seeds the weights, the data order, the augmentation and every random draw of a step.
        num_workers: DataLoader worker processes (results do not depend on it).
        log_with: also send the training curves to ``tensorboard``, ``csv`` or ``wandb`` (under
            ``RUN/tracking/``, see :mod:`segsynth.tracking`); ``train_log.jsonl`` is always written.
    """

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(1, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = Field(0, ge=0)
    num_workers: int = Field(0, ge=0)
    log_with: LogWith = "none"

    @model_validator(mode="after")
    def _check_warmup(self) -> Self:
        if self.warmup > self.steps:
            raise ValueError(f"warmup ({self.warmup}) must not exceed steps ({self.steps})")
        return self


class DiffusionTrainSection(OptimisationConfig):
    """Optimisation and bookkeeping of the diffusion model (:class:`OptimisationConfig` plus these).

    Attributes:
        ema_decay: the EMA's maximum decay (diffusers ``EMAModel`` ramps up to it).
        sample_every: steps between preview grids (0: only at the end).
        mixed_precision: ``auto`` is bf16 autocast on CUDA and on a CPU with native bf16
            (AVX512-BF16 / AMX), full precision elsewhere; the loss, weights and EMA stay fp32.
        channels_last: store the model's convolution weights (and so its activations) in NHWC
            order, the native layout of tensor-core convolutions; same results up to rounding.
        compile: run the denoiser's UNet through ``torch.compile`` (inductor); the first training
            step and the first preview compile it (minutes), later calls run the compiled graph
            (``benchmarks/bench_gpu.py`` measures what it gains). Needs Triton on a GPU, a C++
            compiler on a CPU; the run stops before any work when they are missing.
    """

    ema_decay: float = Field(0.999, ge=0, lt=1)
    sample_every: int = Field(500, ge=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    compile: bool = False


class DataConfig(StrictModel):
    """How training samples and their style references are drawn.

    Attributes:
        augmentation: paired augmentation of image and layout (``segsynth.data.augment``).
        style_sampler: ``multi_patch`` (default: other images of the same case, STEDM's setting,
            so the style encoder cannot copy the target's content), ``nearby`` (the target's
            neighbours in its case) or ``augmented`` (copies of the target). The first two never
            use the target itself and refuse a training set with a case of a single image.
        style_augment: random flips / rotations of every style reference (None: the sampler's
            default, on for ``augmented`` only).
        edge_image_prob: for edge models (``model.edge``), the fraction of training samples whose
            edge map also holds the image's edges; the others get the mask boundary alone, which is
            what generation from a layout (no real image) provides.
        cache_latents: latent models only: encode each training image once, store the latents in
            ``RUN/latent_cache/`` and train on latent-aligned crops of them instead of encoding
            every crop (one autoencoder pass per image instead of per sample and step). Needs
            ``augmentation: none`` (see :mod:`segsynth.autoencoder.cache`).
        include_unlabeled: also train on the images of ``DATA/unlabeled/`` (the low-label user has
            few masks and many images): they enter every epoch with the layout and the edge map
            dropped to their learned null embeddings, so the denoiser and the style encoder learn
            the unlabelled images' appearance and style without a layout; labelled samples keep
            the usual condition drops. Off by default.
    """

    augmentation: Literal["none", "light", "heavy"] = "light"
    style_sampler: str = "multi_patch"
    style_augment: bool | None = None
    edge_image_prob: float = Field(0.5, ge=0.0, le=1.0)
    cache_latents: bool = False
    include_unlabeled: bool = False

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.style_sampler not in STYLE_SAMPLERS:
            raise ValueError(f"style_sampler {self.style_sampler!r} is not one of {sorted(STYLE_SAMPLERS)}")
        if self.cache_latents and self.augmentation != "none":
            raise ValueError(f"cache_latents needs augmentation 'none' (cached latents cannot be flipped, rotated "
                             f"or rescaled exactly), got {self.augmentation!r}")
        if self.cache_latents and self.include_unlabeled:
            raise ValueError("cache_latents caches the labelled images only; it cannot be combined with include_unlabeled")
        return self


class SamplingConfig(StrictModel):
    """Preview sampling during training (the grids under ``RUN/samples/``).

    Attributes:
        sampler: diffusers scheduler used by the pipeline.
        steps: denoising steps.
        style_guidance_scale / layout_guidance_scale / guidance_rescale: classifier-free guidance
            (STEDM: style 1.5, rescale 0.7).
        edge_guidance_scale / text_guidance_scale: guidance of the edge and text conditions (used
            only by models built with them; 1 is off).
        grid_rows: training samples shown in each grid.
        seed: noise seed of the previews, fixed so grids of different steps are comparable.
    """

    sampler: SamplerName = "dpmpp"
    steps: int = Field(20, ge=1, le=1000)
    style_guidance_scale: float = Field(1.5, ge=0)
    layout_guidance_scale: float = Field(1.0, ge=0)
    guidance_rescale: float = Field(0.7, ge=0, le=1)
    edge_guidance_scale: float = Field(1.0, ge=0)
    text_guidance_scale: float = Field(1.0, ge=0)
    grid_rows: int = Field(4, ge=1)
    seed: int = Field(0, ge=0)


class DiffusionTrainConfig(StrictModel):
    """Everything ``segsynth train-diffusion`` needs besides the data folder and the run folder."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: DiffusionTrainSection = Field(default_factory=DiffusionTrainSection)
    data: DataConfig = Field(default_factory=DataConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _check(self) -> DiffusionTrainConfig:
        if self.sampling.steps > self.objective.num_train_timesteps:
            raise ValueError(
                f"sampling.steps ({self.sampling.steps}) exceeds objective.num_train_timesteps "
                f"({self.objective.num_train_timesteps})"
            )
        drops = self.objective.cond_drop
        for name, scale, drop in (
            ("style", self.sampling.style_guidance_scale, drops.style),
            ("layout", self.sampling.layout_guidance_scale, drops.layout),
            *((("edge", self.sampling.edge_guidance_scale, drops.edge),) if self.model.edge else ()),
            *((("text", self.sampling.text_guidance_scale, drops.text),) if self.model.text else ()),
        ):
            if scale != 1.0 and drop == 0.0:
                raise ValueError(
                    f"sampling.{name}_guidance_scale is {scale} but objective.cond_drop.{name} is 0, so the null "
                    f"{name} embedding that guidance needs is never trained; set the drop > 0 or the scale to 1"
                )
        return self


__getattr__ = renamed_attributes(__name__, {"TrainConfig": "DiffusionTrainSection"})
