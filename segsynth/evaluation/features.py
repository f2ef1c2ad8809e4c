"""Image descriptors that exist offline: no Inception, LPIPS or any downloaded weight, because
segsynth downloads nothing at run time and ships no pretrained network.

Three descriptors, all mapping images ``(B, C, H, W)`` float in [0, 1] to vectors ``(B, D)``:

- :class:`StainStatistics`: per-channel intensity mean, std and 5/50/95th percentiles, gradient
  magnitude mean and std, and for 3-channel (RGB, H&E) images the mean and std of the haematoxylin,
  eosin and DAB optical densities from colour deconvolution (scikit-image ``rgb2hed``).
- :class:`RandomConvNet`: a small conv net whose weights are drawn once from a seeded generator and
  never trained. Its feature maps give texture statistics two ways: per-channel means and stds
  (:class:`StainTextureFeatures`) and Gram matrices (:func:`gram_features`, the texture
  descriptor of neural style transfer, which works with random filters too).
- :class:`SegEncoderFeatures`: the global-average-pooled bottleneck of a segmentation network
  trained on the real data (our stand-in for Inception features).

Each module carries ``num_features`` (what torchmetrics asks a custom feature extractor for) and
``name`` (written into every result, so a number is never read without its extractor).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import rgb2hed
from torch import nn

#: Optical densities below this intensity are clipped (log of 0 is undefined).
_MIN_INTENSITY = 1.0 / 255.0


class StainStatistics(nn.Module):
    """Colour / stain statistics of each image (see the module docstring).

    Args:
        channels: image channels C.
    """

    PERCENTILES = (0.05, 0.5, 0.95)

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels
        self.num_features = channels * (2 + len(self.PERCENTILES) + 2) + (6 if channels == 3 else 0)
        self.name = "stain statistics (channel mean/std/p5/p50/p95, gradient mean/std" + (
            ", H/E/DAB optical density mean/std)" if channels == 3 else ")"
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _check_images(images, self.channels).float()
        flat = x.flatten(2)
        parts = [flat.mean(-1), flat.std(-1, unbiased=False)]
        parts += [torch.quantile(flat, q, dim=-1) for q in self.PERCENTILES]
        dy = x[..., 1:, :] - x[..., :-1, :]
        dx = x[..., :, 1:] - x[..., :, :-1]
        grad = torch.sqrt(dy[..., :, :-1] ** 2 + dx[..., :-1, :] ** 2 + 1e-12).flatten(2)
        parts += [grad.mean(-1), grad.std(-1, unbiased=False)]
        if self.channels == 3:
            parts.append(_hed_statistics(x))
        return torch.cat(parts, 1)


def _hed_statistics(x: torch.Tensor) -> torch.Tensor:
    """Mean and std of the three ``rgb2hed`` stain densities per image: ``(B, 6)``."""
    rows = []
    for image in x.clamp(_MIN_INTENSITY, 1.0).cpu().numpy():
        hed = rgb2hed(np.moveaxis(image, 0, -1)).reshape(-1, 3)
        rows.append(np.concatenate([hed.mean(0), hed.std(0)]))
    return torch.from_numpy(np.asarray(rows, dtype=np.float32)).to(x.device)


class RandomConvNet(nn.Module):
    """A fixed conv net with seeded random weights: ``conv3x3 + ReLU`` per level, 2x average pooling
    between levels. The weights are a pure function of ``(channels, widths, seed)``.

    Args:
        channels: image channels C.
        widths: feature channels per level.
        seed: seed of the weight draw.
    """

    def __init__(self, channels: int, widths: tuple[int, ...] = (16, 32, 32), seed: int = 0) -> None:
        super().__init__()
        if channels < 1 or not widths or min(widths) < 1:
            raise ValueError(f"need channels >= 1 and positive widths, got {channels}, {widths}")
        generator = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        previous = channels
        for width in widths:
            conv = nn.Conv2d(previous, width, 3, padding=1, padding_mode="reflect")
            fan_in = previous * 9
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
                conv.bias.zero_()
            self.convs.append(conv)
            previous = width
        self.widths = tuple(widths)
        self.seed = seed
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every level, ``[(B, widths[i], H / 2**i, W / 2**i)]``."""
        x = images.float() - 0.5
        maps = []
        for level, conv in enumerate(self.convs):
            if level:
                x = F.avg_pool2d(x, 2) if min(x.shape[-2:]) >= 4 else x
            x = F.relu(conv(x))
            maps.append(x)
        return maps


def gram_features(maps: list[torch.Tensor]) -> torch.Tensor:
    """Upper triangles of the Gram matrices ``F F^T / (H W)`` of every level, concatenated: ``(B, D)``."""
    parts = []
    for fmap in maps:
        flat = fmap.flatten(2)
        gram = flat @ flat.transpose(1, 2) / flat.shape[-1]
        rows, cols = torch.triu_indices(gram.shape[1], gram.shape[2])
        parts.append(gram[:, rows, cols])
    return torch.cat(parts, 1)


class StainTextureFeatures(nn.Module):
    """:class:`StainStatistics` followed by the per-channel means and stds of every
    :class:`RandomConvNet` level: a compact colour + texture descriptor for FID/KID and diversity.

    Args:
        channels: image channels C.
        seed: seed of the random net.
    """

    def __init__(self, channels: int, seed: int = 0) -> None:
        super().__init__()
        self.stain = StainStatistics(channels)
        self.net = RandomConvNet(channels, seed=seed)
        self.num_features = self.stain.num_features + 2 * sum(self.net.widths)
        self.name = f"stain/texture statistics ({self.stain.num_features} stain + {2 * sum(self.net.widths)} random-conv-net (seed {seed}) channel mean/std)"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.net(images)
        texture = [torch.cat([m.flatten(2).mean(-1), m.flatten(2).std(-1, unbiased=False)], 1) for m in maps]
        return torch.cat([self.stain(images), *texture], 1)


class SegEncoderFeatures(nn.Module):
    """Global-average-pooled activation of a segmentation network's bottleneck.

    The bottleneck is found with one probe forward pass: among the activations of lowest spatial
    resolution, the widest one (ties: the outermost module). For MONAI's UNet that is the
    concatenation of the last encoder level and the bottom block; for FlexibleUNet the last ResNet
    stage. ``layer`` names another module instead.

    Args:
        model: the network (put in eval mode, weights frozen).
        divisor: input sides are zero-padded to a multiple of this.
        in_channels: image channels C.
        network: the network's name, for :attr:`name`.
        layer: module name (``dict(model.named_modules())`` key) to read instead of the bottleneck.
    """

    def __init__(self, model: nn.Module, divisor: int, in_channels: int, network: str = "seg", layer: str | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.divisor = max(1, int(divisor))
        self.in_channels = in_channels
        modules = dict(self.model.named_modules())
        if layer is None:
            layer = self._find_bottleneck()
        if layer not in modules:
            raise ValueError(f"no module named {layer!r} in the segmentation network")
        self.layer = layer
        self._target = modules[layer]
        probe = self(torch.zeros(1, in_channels, self._probe_side(), self._probe_side()))
        self.num_features = int(probe.shape[1])
        self.name = f"seg encoder ({network} '{layer}', {self.num_features}-d global average pool)"

    def _probe_side(self) -> int:
        return self.divisor * max(1, math.ceil(32 / self.divisor))

    @torch.no_grad()
    def _find_bottleneck(self) -> str:
        found: list[tuple[str, tuple[int, ...]]] = []
        hooks = [
            module.register_forward_hook(
                lambda _m, _i, out, name=name: found.append((name, tuple(out.shape)))
                if torch.is_tensor(out) and out.ndim == 4 else None
            )
            for name, module in self.model.named_modules()
            if name
        ]
        try:
            side = self._probe_side()
            self.model(torch.zeros(1, self.in_channels, side, side))
        finally:
            for hook in hooks:
                hook.remove()
        if not found:
            raise ValueError("the segmentation network exposes no 4D activation to read features from")
        smallest = min(shape[2] * shape[3] for _, shape in found)
        deepest = [(name, shape) for name, shape in found if shape[2] * shape[3] == smallest]
        widest = max(shape[1] for _, shape in deepest)
        return [name for name, shape in deepest if shape[1] == widest][-1]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _check_images(images, self.in_channels).float()
        height, width = x.shape[-2:]
        x = F.pad(x, (0, (-width) % self.divisor, 0, (-height) % self.divisor))
        captured: list[torch.Tensor] = []
        hook = self._target.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model(x)
        finally:
            hook.remove()
        return captured[-1].float().mean(dim=(2, 3))


def _check_images(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"expected images (B, {channels}, H, W), got {tuple(images.shape)}")
    return images


@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """``extractor`` over ``images`` ``(N, C, H, W)`` in batches: ``(N, D)`` float32."""
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    return torch.cat([extractor(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])
