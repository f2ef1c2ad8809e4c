"""The conditional denoiser: a diffusers UNet with the layout concatenated and the style injected.

Layout (STEDM, SegGuidedDiff): the K-class one-hot mask is concatenated to the noisy image, every
class kept as its own channel. Optionally (SDM, Wang et al., 2022, "Semantic Image Synthesis via
Diffusion Models") the decoder's group-norms are also modulated per pixel by the layout (SPADE,
Park et al., 2019).

Style: a ``dim``-d vector per sample, added to the time embedding of every ResBlock
(``injection="time"``, diffusers' ``class_embed_type="identity"``), and/or projected to a few
tokens read by cross-attention (``"cross_attention"``, a ``UNet2DConditionModel``).

Edge (DiffBoost, Zhang et al., 2025; optional): a one-channel edge map (mask boundary ∪ image
edges) concatenated after the layout. Text (optional): a prompt embedding from a frozen sentence
encoder, projected to ``text_tokens`` cross-attention tokens (appended to the style tokens when
the style is injected by cross-attention too).

Every condition has a *learned* null value, used when a sample's condition is dropped in
training or removed for classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn

INJECTIONS = ("time", "cross_attention", "both")


class SpadeGroupNorm(nn.Module):
    """A GroupNorm whose output is scaled and shifted per pixel by the layout.

    ``out = norm(x) * (1 + gamma(layout)) + beta(layout)``. ``gamma`` and ``beta`` start at zero,
    so a fresh model behaves exactly like the plain network. The layout is resized with ``area``
    interpolation, which keeps thin structures visible (as class fractions) at coarse levels.

    Args:
        norm: the wrapped group-norm (its affine weights are kept).
        layout_channels: K, channels of the one-hot layout.
        hidden: width of the shared layout embedding.
    """

    def __init__(self, norm: nn.GroupNorm, layout_channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.norm = norm
        self.shared = nn.Sequential(nn.Conv2d(layout_channels, hidden, 3, padding=1), nn.SiLU())
        self.gamma = nn.Conv2d(hidden, norm.num_channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, norm.num_channels, 3, padding=1)
        for conv in (self.gamma, self.beta):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.layout: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` ``(B, C, h, w)`` and modulate it by the layout set by the owning UNet."""
        if self.layout is None:
            raise RuntimeError("SpadeGroupNorm called outside LayoutStyleUNet.forward (no layout set)")
        seg = F.interpolate(self.layout, size=x.shape[-2:], mode="area")
        h = self.shared(seg)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class LayoutStyleUNet(ModelMixin, ConfigMixin):
    """Pixel-space denoiser conditioned on a layout map and a style vector.

    Args:
        image_size: side of the training images.
        image_channels: C of the images (input and prediction).
        num_classes: K, labels of the layout including background.
        block_out_channels: widths per resolution level.
        layers_per_block: ResBlocks per level.
        attention_levels: per level, whether its blocks carry attention (self-attention for
            ``injection="time"``, self- and cross-attention otherwise).
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups.
        style_dim: size of the style vector.
        injection: ``time``, ``cross_attention`` or ``both``.
        num_tokens: cross-attention tokens made from the style vector.
        spade: modulate the decoder's group-norms by the layout.
        edge: take a one-channel edge map ``(B, 1, H, W)`` as one more input channel.
        edge_sigma: Canny smoothing of the image edges the model was trained with (recorded so
            generation draws edge maps the same way; the network itself does not use it).
        text_dim: size of the prompt embedding; 0 means no text condition.
        text_tokens: cross-attention tokens made from the prompt embedding.
        latent_channels: 0 for a pixel-space model; otherwise the model denoises the latents of
            an autoencoder (this many channels, ``latent_factor`` times smaller per side), while
            ``image_size`` / ``image_channels`` still describe the images and the layout (and edge
            map) still come at image resolution: the UNet pools them to the latent grid itself
            (class fractions per latent cell, as STEDM's spatial rescaler feeds LDM).
        latent_factor: the autoencoder's downsampling factor (1 in pixel space).
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 32,
        image_channels: int = 1,
        num_classes: int = 2,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_levels: tuple[bool, ...] = (False, True, True),
        attention_head_dim: int = 8,
        norm_num_groups: int = 8,
        style_dim: int = 64,
        injection: str = "time",
        num_tokens: int = 4,
        spade: bool = False,
        edge: bool = False,
        edge_sigma: float = 1.0,
        text_dim: int = 0,
        text_tokens: int = 4,
        latent_channels: int = 0,
        latent_factor: int = 1,
    ) -> None:
        """Check the arguments (see the class) and build the layers they describe.

        One function on purpose: diffusers records exactly this signature as the model config, and
        the attributes made here are the names saved weights load into, so they stay in one place.
        """
        super().__init__()
        if latent_channels < 0 or latent_factor < 1 or (latent_channels == 0) != (latent_factor == 1):
            raise ValueError(f"need latent_channels > 0 with latent_factor > 1 (or 0 and 1 in pixel space), "
                             f"got {latent_channels}, {latent_factor}")
        if image_size % latent_factor:
            raise ValueError(f"image_size {image_size} is not a multiple of latent_factor {latent_factor}")
        if injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, got {injection!r}")
        if len(attention_levels) != len(block_out_channels):
            raise ValueError(f"attention_levels {attention_levels} needs one entry per level of {block_out_channels}")
        if num_classes < 2 or image_channels < 1 or style_dim < 1 or num_tokens < 1:
            raise ValueError("need num_classes >= 2, image_channels >= 1, style_dim >= 1, num_tokens >= 1")
        if text_dim < 0 or text_tokens < 1:
            raise ValueError(f"need text_dim >= 0 (0: no text) and text_tokens >= 1, got {text_dim}, {text_tokens}")
        self.uses_time = injection in ("time", "both")
        self.style_cross = injection in ("cross_attention", "both")
        self.uses_text = text_dim > 0
        self.uses_edge = bool(edge)
        self.uses_cross = self.style_cross or self.uses_text
        if self.style_cross and not any(attention_levels):
            raise ValueError(f"injection {injection!r} needs at least one attention level")
        if self.uses_text and not any(attention_levels):
            raise ValueError("a text condition needs at least one attention level (it enters by cross-attention)")
        time_embed_dim = block_out_channels[0] * 4
        sample_channels = latent_channels or image_channels
        common = dict(
            sample_size=image_size // latent_factor,
            in_channels=sample_channels + num_classes + int(self.uses_edge),
            out_channels=sample_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
        )
        if self.uses_cross:
            self.inner = UNet2DConditionModel(
                down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels),
                mid_block_type="UNetMidBlock2DCrossAttn",
                up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)),
                cross_attention_dim=style_dim,
                # UNet2DConditionModel reads ``attention_head_dim`` as the number of heads.
                attention_head_dim=tuple(c // attention_head_dim for c in block_out_channels),
                class_embed_type="identity" if self.uses_time else None,
                **common,
            )
            if self.style_cross:
                self.style_to_tokens = nn.Linear(style_dim, num_tokens * style_dim)
            if self.uses_text:
                self.text_to_tokens = nn.Linear(text_dim, text_tokens * style_dim)
                self.null_text = nn.Parameter(torch.zeros(text_dim))
        else:
            self.inner = UNet2DModel(
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)),
                attention_head_dim=attention_head_dim,
                class_embed_type="identity",
                **common,
            )
        if self.uses_time:
            self.style_to_time = nn.Sequential(
                nn.Linear(style_dim, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
            )
        self.null_style = nn.Parameter(torch.zeros(style_dim))
        self.null_layout = nn.Parameter(torch.zeros(num_classes))
        if self.uses_edge:
            self.null_edge = nn.Parameter(torch.zeros(1))
        if spade:
            self._wrap_decoder_norms(num_classes)

    @property
    def sample_channels(self) -> int:
        """Channels of what the model denoises: the latents' in latent mode, else the images'."""
        return self.config.latent_channels or self.config.image_channels

    @property
    def latent_factor(self) -> int:
        """Image pixels per denoised pixel along each side (1 in pixel space)."""
        return self.config.latent_factor

    def _wrap_decoder_norms(self, num_classes: int) -> None:
        for block in self.inner.up_blocks:
            for resnet in block.resnets:
                resnet.norm1 = SpadeGroupNorm(resnet.norm1, num_classes)
                resnet.norm2 = SpadeGroupNorm(resnet.norm2, num_classes)

    @contextmanager
    def _spade_layout(self, layout: torch.Tensor) -> Iterator[None]:
        # Handed over as an attribute because diffusers' ResnetBlock2D calls its norms with one argument.
        norms = [m for m in self.inner.modules() if isinstance(m, SpadeGroupNorm)]
        for norm in norms:
            norm.layout = layout
        try:
            yield
        finally:
            for norm in norms:
                norm.layout = None

    def layout_input(self, layout: torch.Tensor, drop_layout: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """One-hot ``layout`` ``(B, H, W)`` into ``(B, K, H, W)``; dropped samples get the learned null layout."""
        k = self.config.num_classes
        if layout.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
            raise ValueError(f"layout must hold integer labels, got dtype {layout.dtype}")
        if layout.numel() and (int(layout.min()) < 0 or int(layout.max()) >= k):
            raise ValueError(f"layout labels must lie in [0, {k - 1}], got [{int(layout.min())}, {int(layout.max())}]")
        onehot = F.one_hot(layout.long(), k).permute(0, 3, 1, 2).to(dtype)
        if self.latent_factor > 1:
            onehot = F.avg_pool2d(onehot, self.latent_factor)
        if drop_layout is None:
            return onehot
        null = self.null_layout.to(dtype).view(1, k, 1, 1).expand_as(onehot)
        return torch.where(drop_layout.view(-1, 1, 1, 1), null, onehot)

    def style_input(self, style: torch.Tensor | None, drop_style: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Style vectors ``(B, dim)``; ``None`` or dropped samples get the learned null style."""
        null = self.null_style.unsqueeze(0).expand(batch, -1)
        if style is None:
            return null
        if style.shape != null.shape:
            raise ValueError(f"style must be (B, {self.config.style_dim}) = {tuple(null.shape)}, got {tuple(style.shape)}")
        if drop_style is None:
            return style
        return torch.where(drop_style.view(-1, 1), null.to(style.dtype), style)

    def edge_input(self, edge: torch.Tensor | None, drop_edge: torch.Tensor | None, shape: torch.Size,
                   dtype: torch.dtype) -> torch.Tensor:
        """Edge maps ``(B, 1, H, W)`` at image resolution (or ``(B, H, W)``); None or dropped samples get
        the learned null edge. In latent mode a latent cell is on an edge if any of its pixels is
        (max-pooling keeps one-pixel boundaries that averaging would dilute)."""
        b, _, h, w = shape
        f = self.latent_factor
        null = self.null_edge.to(dtype).view(1, 1, 1, 1).expand(b, 1, h, w)
        if edge is None:
            return null
        if edge.ndim == 3:
            edge = edge.unsqueeze(1)
        if edge.shape != (b, 1, h * f, w * f):
            raise ValueError(f"edge must be (B, 1, H, W) = {(b, 1, h * f, w * f)}, got {tuple(edge.shape)}")
        edge = edge.to(dtype)
        if f > 1:
            edge = F.max_pool2d(edge, f)
        if drop_edge is None:
            return edge
        return torch.where(drop_edge.view(-1, 1, 1, 1), null, edge)

    def text_input(self, text: torch.Tensor | None, drop_text: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Prompt embeddings ``(B, text_dim)``; None or dropped samples get the learned null text."""
        null = self.null_text.unsqueeze(0).expand(batch, -1)
        if text is None:
            return null
        if text.shape != null.shape:
            raise ValueError(f"text must be (B, {self.config.text_dim}) = {tuple(null.shape)}, got {tuple(text.shape)}")
        if drop_text is None:
            return text
        return torch.where(drop_text.view(-1, 1), null.to(text.dtype), text)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        layout: torch.Tensor,
        style: torch.Tensor | None = None,
        drop_style: torch.Tensor | None = None,
        drop_layout: torch.Tensor | None = None,
        edge: torch.Tensor | None = None,
        drop_edge: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict noise (or v) for ``sample``.

        Args:
            sample: noisy images (or latents) ``(B, C, H, W)``.
            timestep: ``(B,)`` or a scalar.
            layout: integer labels ``(B, H·f, W·f)`` in ``[0, K)`` (f = ``latent_factor``, 1 in pixel space).
            style: style vectors ``(B, dim)``, or None for the null style.
            drop_style: ``(B,)`` bool, True where the null style replaces ``style``.
            drop_layout: ``(B,)`` bool, True where the null layout replaces ``layout``.
            edge: edge maps ``(B, 1, H, W)`` in [0, 1] (models built with ``edge``), None for the null edge.
            drop_edge: ``(B,)`` bool, True where the null edge replaces ``edge``.
            text: prompt embeddings ``(B, text_dim)`` (models with text), None for the null prompt.
            drop_text: ``(B,)`` bool, True where the null prompt replaces ``text``.

        Returns:
            The prediction ``(B, C, H, W)``.
        """
        b, c, h, w = sample.shape
        f = self.latent_factor
        if c != self.sample_channels:
            raise ValueError(f"sample has {c} channels, the model expects {self.sample_channels}")
        if layout.shape != (b, h * f, w * f):
            raise ValueError(f"layout must be (B, H, W) = {(b, h * f, w * f)}, got {tuple(layout.shape)}")
        seg = self.layout_input(layout, drop_layout, sample.dtype)
        style_vec = self.style_input(style, drop_style, b).to(sample.dtype)
        if not self.uses_edge and (edge is not None or drop_edge is not None):
            raise ValueError("this model has no edge condition (built with edge=False)")
        if not self.uses_text and (text is not None or drop_text is not None):
            raise ValueError("this model has no text condition (built with text_dim=0)")
        parts = [sample, seg]
        if self.uses_edge:
            parts.append(self.edge_input(edge, drop_edge, sample.shape, sample.dtype))
        x = torch.cat(parts, dim=1)
        class_labels = self.style_to_time(style_vec) if self.uses_time else None
        with self._spade_layout(seg):
            if self.uses_cross:
                tokens = []
                if self.style_cross:
                    tokens.append(self.style_to_tokens(style_vec).view(b, self.config.num_tokens, self.config.style_dim))
                if self.uses_text:
                    text_vec = self.text_input(text, drop_text, b).to(sample.dtype)
                    tokens.append(self.text_to_tokens(text_vec).view(b, self.config.text_tokens, self.config.style_dim))
                states = tokens[0] if len(tokens) == 1 else torch.cat(tokens, dim=1)
                return self.inner(x, timestep, encoder_hidden_states=states, class_labels=class_labels).sample
            return self.inner(x, timestep, class_labels=class_labels).sample
