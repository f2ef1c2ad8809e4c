"""Typed description of the conditional denoiser, its style encoder and its aggregator.

One :class:`ModelConfig` fully determines :class:`~segsynth.models.model.SegSynthModel`; the
training config embeds it as its ``model`` section, and the released pipeline stores the same
numbers in each part's ``config.json`` so loading never needs the training flags.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from segsynth.config import StrictModel

Aggregator = Literal["mean", "max", "linear", "attention"]
Injection = Literal["time", "cross_attention", "both"]


class StyleConfig(StrictModel):
    """Style branch: N reference images -> encoder -> one ``dim``-d vector per sample.

    Attributes:
        encoder_channels: widths of the CNN stages; each stage after the first halves the resolution.
        dim: size of the style vector (and of the learned null style used for guidance).
        aggregator: how the N per-reference vectors become one. ``linear`` is an MLP over the
            concatenation, so it only accepts exactly ``num_refs`` references; ``attention`` (a
            learned query over the set) is order-invariant and accepts any N.
        num_refs: N, the number of references per sample in training.
        injection: ``time`` adds the style to the time embedding of every ResBlock; ``cross_attention``
            feeds it as ``num_tokens`` tokens to cross-attention layers; ``both`` does both.
        num_tokens: number of cross-attention tokens the style vector is projected to.
    """

    encoder_channels: tuple[int, ...] = (16, 32, 64)
    dim: int = Field(64, ge=1)
    aggregator: Aggregator = "attention"
    num_refs: int = Field(3, ge=1)
    injection: Injection = "time"
    num_tokens: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _check(self) -> StyleConfig:
        if not self.encoder_channels or any(c < 1 for c in self.encoder_channels):
            raise ValueError(f"style.encoder_channels must be positive widths, got {self.encoder_channels}")
        return self


class ModelConfig(StrictModel):
    """Pixel-space layout- and style-conditioned denoiser.

    Attributes:
        image_size: side of the square training images (pixels).
        image_channels: C of the images (1 grey, 3 RGB).
        num_classes: K, labels including background; the layout enters as a K-channel one-hot map.
        block_out_channels: UNet widths, one per resolution level.
        layers_per_block: ResBlocks per level.
        attention_levels: per level, whether its blocks carry (self- or cross-) attention.
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups; must divide every UNet and style-encoder width.
        style: the style branch.
        spade: also modulate the decoder's group-norms by the layout (SDM), on top of concatenation.
        edge: also condition on an edge map (mask boundary ∪ image edges, DiffBoost), concatenated
            as one more input channel, with its own learned null for guidance.
        edge_sigma: Canny smoothing (pixels) of the image edges in the edge map; kept with the
            model so generation draws edges the way training did.
        text: also condition on a prompt embedding (from ``dataset.json``'s ``prompt``, encoded
            offline by a frozen sentence encoder), projected to cross-attention tokens.
        text_dim: size of the prompt embedding (384 for all-MiniLM-L6-v2).
        text_tokens: cross-attention tokens made from the prompt embedding.
        latent_channels / latent_factor: latent mode (0 / 1: pixel space). Filled in from the
            autoencoder given to ``train-diffusion --autoencoder``; a value set by hand that
            contradicts it is refused.
    """

    image_size: int = Field(32, ge=4)
    image_channels: int = Field(1, ge=1)
    num_classes: int = Field(2, ge=2)
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = Field(1, ge=1)
    attention_levels: tuple[bool, ...] = (False, True, True)
    attention_head_dim: int = Field(8, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    style: StyleConfig = Field(default_factory=StyleConfig)
    spade: bool = False
    edge: bool = False
    edge_sigma: float = Field(1.0, ge=0.0)
    text: bool = False
    text_dim: int = Field(384, ge=1)
    text_tokens: int = Field(4, ge=1)
    latent_channels: int = Field(0, ge=0)
    latent_factor: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        levels = len(self.block_out_channels)
        if levels < 1:
            raise ValueError("block_out_channels needs at least one level")
        if len(self.attention_levels) != levels:
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries but block_out_channels has {levels} levels"
            )
        if (self.latent_channels == 0) != (self.latent_factor == 1):
            raise ValueError(f"latent_channels {self.latent_channels} and latent_factor {self.latent_factor} "
                             "must both be set (latent mode) or both left at 0 / 1 (pixel space)")
        factor = 2 ** (levels - 1) * self.latent_factor
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**(levels-1) * latent_factor = {factor}")
        widths = {"block_out_channels": self.block_out_channels, "style.encoder_channels": self.style.encoder_channels}
        for name, values in widths.items():
            bad = [c for c in values if c % self.norm_num_groups]
            if bad:
                raise ValueError(f"{name} {bad} not divisible by norm_num_groups {self.norm_num_groups}")
        heads_bad = [c for c, a in zip(self.block_out_channels, self.attention_levels) if a and c % self.attention_head_dim]
        if heads_bad or self.block_out_channels[-1] % self.attention_head_dim:
            raise ValueError(
                f"attention_head_dim {self.attention_head_dim} must divide the widths of attention levels and the last level"
            )
        if self.style.injection != "time" and not any(self.attention_levels):
            raise ValueError(f"style.injection {self.style.injection!r} needs at least one attention level")
        if self.text and not any(self.attention_levels):
            raise ValueError("model.text needs at least one attention level (prompts enter by cross-attention)")
        return self
