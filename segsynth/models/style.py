"""Style branch: a small CNN encodes each reference image, an aggregator pools the N vectors.

STEDM (Öttl et al., 2024) encodes reference patches with a Swin-V2-T and pools them by mean, max,
a linear layer or a set transformer. We keep the idea with a small CNN trained jointly with the
denoiser (it is in the optimizer: the tests check that its weights move) and four aggregators.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

AGGREGATORS = ("mean", "max", "linear", "attention")


class StyleEncoder(ModelMixin, ConfigMixin):
    """Map one image to a style vector from channel-wise feature statistics.

    Style (stain, contrast, texture) lives in feature statistics rather than positions, so the
    head pools each channel's spatial mean *and* standard deviation (as in AdaIN style transfer)
    before a linear projection.

    Args:
        image_channels: C of the input images.
        channels: widths of the conv stages; every stage after the first halves the resolution.
        dim: size of the output vector.
        norm_num_groups: GroupNorm groups, must divide every width.
    """

    @register_to_config
    def __init__(
        self,
        image_channels: int = 1,
        channels: tuple[int, ...] = (16, 32, 64),
        dim: int = 64,
        norm_num_groups: int = 8,
    ) -> None:
        super().__init__()
        if image_channels < 1 or dim < 1 or not channels:
            raise ValueError(f"need image_channels >= 1, dim >= 1 and widths, got {image_channels}, {dim}, {channels}")
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups {norm_num_groups} must divide every width in {tuple(channels)}")
        layers: list[nn.Module] = [nn.Conv2d(image_channels, channels[0], 3, padding=1)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.GroupNorm(norm_num_groups, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)]
        layers += [nn.GroupNorm(norm_num_groups, channels[-1]), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * channels[-1], dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode ``images`` ``(B, C, H, W)`` in [0, 1] into ``(B, dim)``."""
        feats = self.features(images * 2.0 - 1.0).flatten(2)
        stats = torch.cat([feats.mean(-1), feats.std(-1, unbiased=False)], dim=1)
        return self.proj(stats)


class StyleAggregator(ModelMixin, ConfigMixin):
    """Pool N style vectors ``(B, N, dim)`` into one ``(B, dim)``.

    Modes: ``mean`` and ``max`` (order-invariant, any N, no weights); ``linear`` (an MLP over the
    concatenation: it sees the order and needs exactly ``num_refs`` vectors); ``attention`` (a
    learned query attends over the set: order-invariant, any N; a one-query set transformer as in
    Lee et al., 2019, "Set Transformer", pooling by multihead attention).

    Args:
        dim: size of the style vectors.
        mode: one of ``mean``, ``max``, ``linear``, ``attention``.
        num_refs: N expected by ``linear``; informative for the other modes.
        num_heads: heads of the ``attention`` pooling; must divide ``dim``.
    """

    @register_to_config
    def __init__(self, dim: int = 64, mode: str = "attention", num_refs: int = 3, num_heads: int = 4) -> None:
        super().__init__()
        if mode not in AGGREGATORS:
            raise ValueError(f"aggregator mode must be one of {AGGREGATORS}, got {mode!r}")
        if dim < 1 or num_refs < 1:
            raise ValueError(f"dim and num_refs must be >= 1, got {dim}, {num_refs}")
        if mode == "attention" and dim % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide dim {dim} for attention pooling")
        if mode in ("mean", "max"):
            # diffusers derives a model's device, dtype, `.to()`, save and load from its tensors; with
            # none, every one of them fails (StopIteration, no weights file to load). A pooling without
            # weights therefore carries one empty buffer: it follows the model everywhere, holds nothing.
            self.register_buffer("placeholder", torch.empty(0))
        elif mode == "linear":
            self.mlp = nn.Sequential(nn.Linear(num_refs * dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        elif mode == "attention":
            self.query = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
            self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
            self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def check_num_refs(self, n: int) -> None:
        """Raise ``ValueError`` unless this aggregator pools ``n`` references (only ``linear`` fixes N)."""
        if self.config.mode == "linear" and n != self.config.num_refs:
            raise ValueError(
                f"the linear aggregator was built for {self.config.num_refs} references, got {n}; "
                "use the mean, max or attention aggregator for a variable number"
            )

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """Pool ``vectors`` ``(B, N, dim)`` into ``(B, dim)``."""
        if vectors.ndim != 3 or vectors.shape[-1] != self.config.dim:
            raise ValueError(f"expected style vectors (B, N, {self.config.dim}), got {tuple(vectors.shape)}")
        self.check_num_refs(vectors.shape[1])
        mode = self.config.mode
        if mode == "mean":
            return vectors.mean(1)
        if mode == "max":
            return vectors.amax(1)
        if mode == "linear":
            return self.mlp(vectors.flatten(1))
        pooled, _ = self.attn(self.query.expand(vectors.shape[0], -1, -1), vectors, vectors, need_weights=False)
        pooled = pooled.squeeze(1)
        return pooled + self.mlp(pooled)


def encode_style(encoder: StyleEncoder, aggregator: StyleAggregator, style_images: torch.Tensor) -> torch.Tensor:
    """Encode ``style_images`` ``(B, N, C, H, W)`` in [0, 1] into one style vector ``(B, dim)`` per sample."""
    if style_images.ndim != 5:
        raise ValueError(f"style_images must be (B, N, C, H, W), got shape {tuple(style_images.shape)}")
    b, n = style_images.shape[:2]
    vectors = encoder(style_images.flatten(0, 1)).unflatten(0, (b, n))
    return aggregator(vectors)

