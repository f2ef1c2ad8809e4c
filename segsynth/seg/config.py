"""Typed configuration of a segmentation run (``segsynth train-seg --config``).

Defaults follow the anchors: MONAI UNet with Dice+CE (DiffBoost), AdamW, a validation split drawn
by case from the training cases, and the STEDM 0.2 real : 0.8 synthetic ratio when a synthetic
set is mixed in with ``ratio``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from segsynth.config import ConfigError, StrictModel
from segsynth.renamed import renamed_attributes
from segsynth.tracking import LogWith


class NetworkConfig(StrictModel):
    """Which MONAI network to build and how wide (see :mod:`segsynth.seg.networks`).

    ``channels``/``strides``/``num_res_units`` apply to ``unet`` and ``attention_unet``;
    ``backbone``/``decoder_channels`` to ``flexible_unet`` (always ``pretrained=False``: no weights
    are downloaded).
    """

    name: Literal["unet", "attention_unet", "flexible_unet"] = "unet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = Field(default=2, ge=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    backbone: str = "resnet18"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)

    @model_validator(mode="after")
    def _shapes_agree(self) -> NetworkConfig:
        if len(self.channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {self.channels}")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides needs len(channels) - 1 = {len(self.channels) - 1} entries, got {len(self.strides)}"
            )
        if any(c < 1 for c in self.channels) or any(s < 1 for s in self.strides):
            raise ValueError("channels and strides must be positive")
        if self.name == "flexible_unet" and not self.backbone.startswith("resnet"):
            raise ValueError(f"flexible_unet supports resnet backbones here, got {self.backbone!r}")
        return self


class LossConfig(StrictModel):
    """MONAI ``DiceCELoss`` weights (STEDM uses 0.9 Dice + 0.1 CE; DiffBoost 1 + 1)."""

    lambda_dice: float = Field(default=1.0, ge=0.0)
    lambda_ce: float = Field(default=1.0, ge=0.0)

    @model_validator(mode="after")
    def _not_both_zero(self) -> LossConfig:
        if self.lambda_dice == 0 and self.lambda_ce == 0:
            raise ValueError("lambda_dice and lambda_ce cannot both be 0")
        return self


class OptimConfig(StrictModel):
    """AdamW with an optional cosine decay over the whole run (per optimisation step)."""

    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    schedule: Literal["constant", "cosine"] = "cosine"


class SegTrainSection(StrictModel):
    """Loop settings. The budget is counted in optimiser steps, never in epochs.

    A step is one batch of ``batch_size`` examples, whatever the examples are: mixing synthetic
    data in changes what a batch holds, never how many batches a run takes, so settings compared
    in a benchmark differ in one factor only. Validation runs every ``val_every`` steps (the same
    schedule for every setting) and the network with the best validation Dice is kept.

    Convergence is read from the validation curve smoothed by a moving average of ``smoothing``
    validations: a run whose smoothed curve still gained more than ``min_delta`` over the last
    fifth of its steps is flagged ``still_rising`` in ``training.json``. ``patience`` (optional)
    stops a stand-alone run once the smoothed curve has not improved by ``min_delta`` for that many
    validations; benchmarks leave it unset so every setting trains the same number of steps.

    ``patch_size`` (optional) random-crops training images to a square patch (images smaller
    than it are padded) and evaluates with MONAI sliding-window inference; without it every
    image of a batch must share one size.

    Under ``torchrun`` / ``accelerate launch`` the run is data-parallel: ``batch_size`` is per
    process, and W processes of batch b take, step by step, the rows of the batch W·b that one
    process would take (same examples, augmentation and merge grids), so they learn the same.
    """

    steps: int = Field(default=600, ge=1, description="optimiser steps of the whole run")
    batch_size: int = Field(default=8, ge=1)
    val_every: int = Field(default=25, ge=1, description="steps between validations (and checkpoints)")
    smoothing: int = Field(default=3, ge=1, description="moving-average window of validation Dice, in validations")
    min_delta: float = Field(default=0.002, ge=0.0, description="smallest smoothed validation gain that counts")
    patience: int | None = Field(default=None, ge=1, description="validations without gain before stopping early")
    augment: Literal["none", "light", "heavy"] = "light"
    patch_size: int | None = Field(default=None, ge=8)
    num_workers: int = Field(default=0, ge=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 autocast on CUDA and on a CPU with native bf16 (AVX512-BF16/AMX), full precision elsewhere"
    )
    log_with: LogWith = Field(default="none", description="training curves to RUN/tracking/ (accelerate trackers)")
    seed: int = Field(default=0, ge=0)


class SplitConfig(StrictModel):
    """How a run splits the real labelled data when no ids are given (always by case).

    Test cases are held out first; ``low_label`` then simulates a study with few labelled patients
    by keeping a seeded subset of the remaining cases, and validation is drawn from those.
    """

    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0, description="cases held out as test")
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="training cases used for validation")
    low_label: float | int | None = Field(
        default=None, description="keep only this fraction (float) or number (int) of the non-test cases labelled"
    )
    seed: int = Field(default=0, ge=0)


class MixConfig(StrictModel):
    """How synthetic sets enter training (see :mod:`segsynth.seg.mixing`).

    Attributes:
        strategy: ``none`` (real only), ``ratio`` (fixed real:synthetic proportion of the
            examples), ``merge`` (DiffBoost random merging with same-mask variants), ``concat``
            (plain union, sampled uniformly).
        synthetic_fraction: ``ratio``: share of synthetic examples (STEDM: 0.8).
        alpha: ``merge``: probability that a grid cell takes the real image (DiffBoost: 0.6).
        cell: ``merge``: cell side in pixels at ``cell_reference_size``; the cell used is
            ``max(1, round(cell * image_side / cell_reference_size))`` so it covers the same
            fraction of the image at any size (DiffBoost: 64 px at 384 px, i.e. 1/6 of the side).
        cell_reference_size: image side at which ``cell`` is defined.
        layouts_independent: the user declares that the synthetic sets' layouts do not come from
            this real data (e.g. another study's masks), so sets without a manifest may train;
            otherwise such a set is refused, since its samples could have been drawn from
            validation or test masks.
    """

    strategy: Literal["none", "ratio", "merge", "concat"] = "none"
    synthetic_fraction: float = Field(default=0.8, ge=0.0, lt=1.0)
    alpha: float = Field(default=0.6, ge=0.0, le=1.0)
    cell: int = Field(default=64, ge=1)
    cell_reference_size: int = Field(default=384, ge=1)
    layouts_independent: bool = False


class SegTrainConfig(StrictModel):
    """Everything a segmentation run needs; written resolved to ``RUN/config.yaml``."""

    network: NetworkConfig = Field(default_factory=NetworkConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: SegTrainSection = Field(default_factory=SegTrainSection)
    split: SplitConfig = Field(default_factory=SplitConfig)
    mix: MixConfig = Field(default_factory=MixConfig)


def parse_mix(spec: str) -> dict[str, object]:
    """Turn a CLI ``--mix`` value into ``mix.*`` overrides.

    Accepted: ``none``, ``concat``, ``ratio`` / ``ratio:F`` (F = synthetic fraction),
    ``merge`` / ``merge:A`` (A = probability of the real image per cell).

    Raises:
        ConfigError: an unknown strategy or a value that is not a number.
    """
    name, _, value = spec.strip().partition(":")
    keys = {"ratio": "mix.synthetic_fraction", "merge": "mix.alpha"}
    if name not in {"none", "concat", *keys}:
        raise ConfigError(f"--mix {spec!r}: use none, concat, ratio[:fraction] or merge[:alpha]")
    overrides: dict[str, object] = {"mix.strategy": name}
    if value:
        if name not in keys:
            raise ConfigError(f"--mix {spec!r}: {name} takes no value")
        try:
            overrides[keys[name]] = float(value)
        except ValueError:
            raise ConfigError(f"--mix {spec!r}: {value!r} is not a number") from None
    return overrides


__getattr__ = renamed_attributes(__name__, {"TrainConfig": "SegTrainSection"})
