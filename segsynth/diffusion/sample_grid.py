"""Preview grids: one row per sample, ``layout | style reference 1..N | generated image``.

A grid lets a user judge at a glance whether samples follow the layout (compare column 1 with the
last) and take the style of the references (compare the middle columns with the last).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segsynth.data.io import write_image

# Background black, then well-separated colours; classes beyond the table reuse it cyclically.
_PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60]],
    dtype=np.uint8,
)
_GAP = 2


def layout_to_rgb(layout: np.ndarray) -> np.ndarray:
    """Colour a label map ``(H, W)`` int as ``(H, W, 3)`` uint8 (background black)."""
    return _PALETTE[np.asarray(layout) % len(_PALETTE)]


def image_to_rgb(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] (C = 1 or 3) as ``(H, W, 3)`` uint8."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    elif image.shape[0] != 3:
        image = np.repeat(image[:1], 3, axis=0)  # only the first channel of 2- or 4-channel data
    return np.round(np.moveaxis(image, 0, -1) * 255.0).astype(np.uint8)


def sample_grid(layouts: torch.Tensor, styles: torch.Tensor | None, samples: torch.Tensor) -> np.ndarray:
    """Compose the preview grid.

    Args:
        layouts: ``(B, H, W)`` int64 label maps.
        styles: ``(B, N, C, H, W)`` references in [0, 1], or None (unconditional style).
        samples: ``(B, C, H, W)`` generated images in [0, 1].

    Returns:
        ``(B * (H + gap), (N + 2) * (W + gap), 3)`` uint8 with white gaps between tiles.
    """
    if layouts.ndim != 3 or samples.ndim != 4 or layouts.shape[0] != samples.shape[0]:
        raise ValueError(f"layouts (B, H, W) and samples (B, C, H, W) disagree: {tuple(layouts.shape)}, {tuple(samples.shape)}")
    rows = []
    for b in range(layouts.shape[0]):
        tiles = [layout_to_rgb(layouts[b].cpu().numpy())]
        if styles is not None:
            tiles += [image_to_rgb(ref.float().cpu().numpy()) for ref in styles[b]]
        tiles.append(image_to_rgb(samples[b].float().cpu().numpy()))
        rows.append(np.concatenate([np.pad(t, ((0, _GAP), (0, _GAP), (0, 0)), constant_values=255) for t in tiles], 1))
    return np.concatenate(rows, 0)


#: Tiles smaller than this are enlarged (nearest neighbour, integer factor) so 32-64 px samples can be judged.
MIN_TILE = 128


def save_sample_grid(path: str | Path, layouts: torch.Tensor, styles: torch.Tensor | None, samples: torch.Tensor) -> Path:
    """Write :func:`sample_grid` as a PNG (atomically), each tile enlarged to at least ``MIN_TILE`` px."""
    factor = max(1, -(-MIN_TILE // int(layouts.shape[-1])))
    if factor > 1:
        layouts = layouts.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
        samples = samples.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
        if styles is not None:
            styles = styles.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
    return write_image(path, sample_grid(layouts, styles, samples))
