"""The autoencoder config: the ``AutoencoderKL`` shape, and how ``train-autoencoder`` trains it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from segsynth.config import StrictModel
from segsynth.tracking import LogWith


class AutoencoderModelConfig(StrictModel):
    """Shape of the diffusers ``AutoencoderKL``.

    Attributes:
        block_out_channels: encoder widths per level; 3 levels downsample by 4 (f4, STEDM's
            VQ-f4 setting: 512² -> 128²), 4 levels by 8 (f8, Stable Diffusion's).
        latent_channels: channels of the latent image.
        layers_per_block: ResBlocks per level.
        norm_num_groups: GroupNorm groups; must divide every width.
    """

    block_out_channels: tuple[int, ...] = (64, 128, 128)
    latent_channels: int = Field(4, ge=1)
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _check(self) -> AutoencoderModelConfig:
        if len(self.block_out_channels) not in (3, 4):
            raise ValueError(f"block_out_channels needs 3 levels (f4) or 4 levels (f8), got {len(self.block_out_channels)}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} not divisible by norm_num_groups {self.norm_num_groups}")
        return self

    @property
    def factor(self) -> int:
        """Image pixels per latent pixel along each side."""
        return 2 ** (len(self.block_out_channels) - 1)


class AutoencoderTrainConfig(StrictModel):
    """Everything ``segsynth train-autoencoder`` needs besides the data and the output folder.

    Attributes:
        model: the autoencoder's shape.
        tile_size: side of the random training (and evaluation) tiles; also the tile of diffusers'
            tiled decoding of large images.
        steps: optimiser steps.
        batch_size: tiles per step.
        lr: Adam learning rate.
        kl_weight: weight of the KL term next to the L1 reconstruction loss (LDM's KL-f4/f8 models
            use about 1e-6: a nearly deterministic code that stays roughly unit-scaled).
        holdout: fraction of cases kept out of training to measure reconstruction (at least one
            image is always held out when the data has more than one case).
        eval_tiles: held-out tiles the PSNR / SSIM are averaged over.
        checkpoint_every: steps between resumable checkpoints.
        log_every: steps between lines of ``train_log.jsonl``.
        seed: seeds the weights, the split, the tile draws and the posterior samples.
        mixed_precision: ``auto`` is bf16 autocast on CUDA and on a CPU with native bf16, full precision elsewhere.
        log_with: also send the training curves to ``tensorboard``, ``csv`` or ``wandb`` (under
            ``RUN/tracking/``, see :mod:`segsynth.tracking`).
    """

    model: AutoencoderModelConfig = Field(default_factory=AutoencoderModelConfig)
    tile_size: int = Field(64, ge=8)
    steps: int = Field(4000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    holdout: float = Field(0.1, ge=0, lt=1)
    eval_tiles: int = Field(64, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    log_with: LogWith = "none"

    @model_validator(mode="after")
    def _check(self) -> AutoencoderTrainConfig:
        if self.tile_size % self.model.factor:
            raise ValueError(f"tile_size {self.tile_size} is not a multiple of the autoencoder's factor {self.model.factor}")
        return self
