"""The trainable whole: denoiser + style encoder + aggregator, built from one :class:`ModelConfig`."""

from __future__ import annotations

import math

import torch
from torch import nn

from segsynth.models.config import ModelConfig
from segsynth.models.style import StyleAggregator, StyleEncoder, encode_style
from segsynth.models.unet import LayoutStyleUNet


class SegSynthModel(nn.Module):
    """Layout- and style-conditioned denoiser as one module for training (one optimizer, one EMA).

    The three parts stay separate diffusers models so the released pipeline saves each as its own
    ``config.json`` + safetensors folder.

    Args:
        unet: the denoiser.
        style_encoder: per-reference image encoder.
        style_aggregator: pools the N reference vectors.
    """

    def __init__(self, unet: LayoutStyleUNet, style_encoder: StyleEncoder, style_aggregator: StyleAggregator) -> None:
        super().__init__()
        dims = {unet.config.style_dim, style_encoder.config.dim, style_aggregator.config.dim}
        if len(dims) != 1:
            raise ValueError(f"unet, style encoder and aggregator disagree on the style dim: {sorted(dims)}")
        if style_encoder.config.image_channels != unet.config.image_channels:
            raise ValueError("style encoder and unet disagree on image_channels")
        self.unet = unet
        self.style_encoder = style_encoder
        self.style_aggregator = style_aggregator

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> SegSynthModel:
        """Build a freshly initialised model from ``cfg``."""
        style = cfg.style
        unet = LayoutStyleUNet(
            image_size=cfg.image_size,
            image_channels=cfg.image_channels,
            num_classes=cfg.num_classes,
            block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            attention_levels=tuple(cfg.attention_levels),
            attention_head_dim=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
            style_dim=style.dim,
            injection=style.injection,
            num_tokens=style.num_tokens,
            spade=cfg.spade,
            **({"edge": True, "edge_sigma": cfg.edge_sigma} if cfg.edge else {}),
            **({"text_dim": cfg.text_dim, "text_tokens": cfg.text_tokens} if cfg.text else {}),
            **({"latent_channels": cfg.latent_channels, "latent_factor": cfg.latent_factor}
               if cfg.latent_channels else {}),
        )
        encoder = StyleEncoder(cfg.image_channels, tuple(style.encoder_channels), style.dim, cfg.norm_num_groups)
        aggregator = StyleAggregator(style.dim, style.aggregator, style.num_refs, num_heads=math.gcd(style.dim, 4))
        return cls(unet, encoder, aggregator)

    @property
    def num_classes(self) -> int:
        return self.unet.config.num_classes

    @property
    def image_channels(self) -> int:
        return self.unet.config.image_channels

    @property
    def image_size(self) -> int:
        return self.unet.config.image_size

    @property
    def conditions(self) -> tuple[str, ...]:
        """The droppable conditions of this model: ``layout``, ``style`` and, if built with them, ``edge``, ``text``."""
        return ("style", "layout") + ("edge",) * self.unet.uses_edge + ("text",) * self.unet.uses_text

    def encode_style(self, style_images: torch.Tensor | None) -> torch.Tensor | None:
        """``(B, N, C, H, W)`` references in [0, 1] -> ``(B, dim)``; None stays None (null style)."""
        if style_images is None:
            return None
        return encode_style(self.style_encoder, self.style_aggregator, style_images)

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        layout: torch.Tensor,
        style_images: torch.Tensor | None = None,
        drop: dict[str, torch.Tensor] | None = None,
        edge: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the diffusion target for ``noisy``.

        Args:
            noisy: ``(B, C, H, W)`` noisy images in the model's [-1, 1] space.
            timesteps: ``(B,)`` integer timesteps.
            layout: ``(B, H, W)`` int64 labels.
            style_images: ``(B, N, C, H, W)`` references in [0, 1], or None for the null style.
            drop: optional ``{"style": (B,) bool, "layout": (B,) bool, "edge": ..., "text": ...}``
                (``edge`` / ``text`` only for models built with them); True selects the learned null
                embedding for that sample.
            edge: ``(B, 1, H, W)`` edge maps in [0, 1] (edge models), None for the null edge.
            text: ``(B, text_dim)`` prompt embeddings (text models), None for the null prompt.

        Returns:
            ``(B, C, H, W)`` prediction (epsilon or v, per the training objective).
        """
        drop = drop or {}
        unknown = set(drop) - set(self.conditions)
        if unknown:
            raise ValueError(
                f"unknown condition(s) to drop: {sorted(unknown)}; this model has {', '.join(map(repr, self.conditions))}"
            )
        extra: dict[str, torch.Tensor | None] = {}
        if self.unet.uses_edge:
            extra.update(edge=edge, drop_edge=drop.get("edge"))
        elif edge is not None:
            raise ValueError("edge maps were given but the model has no edge condition (model.edge is off)")
        if self.unet.uses_text:
            extra.update(text=text, drop_text=drop.get("text"))
        elif text is not None:
            raise ValueError("prompt embeddings were given but the model has no text condition (model.text is off)")
        return self.unet(
            noisy,
            timesteps,
            layout,
            style=self.encode_style(style_images),
            drop_style=drop.get("style"),
            drop_layout=drop.get("layout"),
            **extra,
        )
