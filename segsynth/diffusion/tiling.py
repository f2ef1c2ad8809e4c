"""Overlapping-tile denoising: images larger than the model's training size, with bounded memory.

At every solver step the denoiser sees only ``tile x tile`` windows of the (large) noisy image; the
windows overlap, and their predictions are blended with a smooth window that falls towards each
tile's border, then normalised by the summed weights. The solver then steps the whole image at
once. This is the per-step fusion of MultiDiffusion (Bar-Tal et al., 2023), which DiffInfinite
(Aversa et al., 2023) uses for gigapixel histology: since neighbouring tiles are reconciled at
every step, no seam survives to the end, and a tile's zero-padded border (where a conv net is
least reliable) gets almost no weight wherever another tile covers the same pixels.

Peak memory is set by the tile and the number of tiles run together, not by the image: only the
noisy image, the prediction accumulator and the weights are image-sized (a few floats per pixel).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: ``(rows, cols)`` slices of one tile in the full image.
Window = tuple[slice, slice]

#: Tile predictions fed to one denoiser call (each is ``B`` samples times the guidance passes).
DEFAULT_TILES_PER_CALL = 4


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, length)`` with at least ``overlap`` shared.

    The tiles are spread evenly (the last ends exactly at ``length``), with every start a multiple
    of ``multiple`` (the UNet's downsampling factor, so a tile's feature grid lines up with the
    image's); for ``length <= tile`` there is one tile.

    Raises:
        ValueError: ``overlap`` not in ``[0, tile)`` or sizes not multiples of ``multiple``.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must lie in [0, tile) = [0, {tile}), got {overlap}")
    if length % multiple or tile % multiple:
        raise ValueError(f"image side {length} and tile {tile} must be multiples of {multiple}")
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))  # ceil: enough tiles for the wanted overlap
    span = length - tile
    starts = [round(i * span / (count - 1) / multiple) * multiple for i in range(count)]
    return sorted(set(starts))


def blend_window(tile: int, overlap: int, device: torch.device | None = None) -> torch.Tensor:
    """``(tile, tile)`` weights: 1 in the interior, a raised-cosine ramp over the ``overlap`` border.

    The ramp never reaches 0 (its first value is ``1 / (overlap + 1)``), so a pixel covered by one
    tile only, at the image border, still gets a defined average.
    """
    ramp = torch.ones(tile, device=device)
    if overlap > 0:
        steps = torch.arange(1, overlap + 1, device=device, dtype=torch.float32) / (overlap + 1)
        rise = 0.5 - 0.5 * torch.cos(torch.pi * steps)
        ramp[:overlap] = rise
        ramp[tile - overlap :] = rise.flip(0)
    return ramp[:, None] * ramp[None, :]


def tiled_prediction(
    predict: Callable[[torch.Tensor, list[Window]], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    multiple: int = 1,
    tiles_per_call: int = DEFAULT_TILES_PER_CALL,
) -> torch.Tensor:
    """Blend the predictions of ``predict`` over overlapping tiles of ``x`` ``(B, C, H, W)``.

    Args:
        predict: ``(x_tiles, windows) -> prediction``: ``x_tiles`` is ``(T*B, C, tile, tile)``, the
            B samples of T tiles stacked tile-major, and ``windows`` their T ``(rows, cols)`` slices
            of the full image (to crop the layout and other spatial conditions alike); it returns
            the prediction of ``x_tiles``' shape.
        x: the full noisy image batch.
        tile: tile side in ``x``'s pixels (the model's training size).
        overlap: pixels shared by neighbouring tiles.
        multiple: tile starts are multiples of this (the UNet's downsampling factor).
        tiles_per_call: tiles stacked into one ``predict`` call (memory vs. speed).

    Returns:
        ``(B, C, H, W)``: the weighted average of the tile predictions at every pixel.
    """
    b, c, h, w = x.shape
    if h <= tile and w <= tile:
        return predict(x, [(slice(0, h), slice(0, w))])
    windows = tile_windows(h, w, tile, overlap, multiple)
    weight = blend_window(tile, overlap if len(windows) > 1 else 0, x.device).to(torch.float32)
    total = torch.zeros((b, c, h, w), device=x.device, dtype=torch.float32)
    norm = torch.zeros((1, 1, h, w), device=x.device, dtype=torch.float32)
    for first in range(0, len(windows), tiles_per_call):
        group = windows[first : first + tiles_per_call]
        stacked = torch.cat([x[:, :, rows, cols] for rows, cols in group])
        preds = predict(stacked, group).float().chunk(len(group))
        for (rows, cols), pred in zip(group, preds):
            total[:, :, rows, cols] += pred * weight
            norm[:, :, rows, cols] += weight
    return (total / norm).to(x.dtype)


def tile_windows(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> list[Window]:
    """The ``(rows, cols)`` slices of every tile of an ``height x width`` image, row-major."""
    rows = tile_starts(height, min(tile, height), overlap if height > tile else 0, multiple)
    cols = tile_starts(width, min(tile, width), overlap if width > tile else 0, multiple)
    return [(slice(r, r + min(tile, height)), slice(c, c + min(tile, width))) for r in rows for c in cols]


def seam_ratio(images: torch.Tensor, windows: list[Window]) -> float:
    """How visible tile borders are in ``images`` ``(B, C, H, W)`` sampled over ``windows``.

    The mean squared horizontal gradient across the columns where tiles start or end, divided by
    that over all other columns: about 1 when the borders cannot be told from the rest, large when
    neighbouring tiles meet at a step.
    """
    dx = (images[..., 1:] - images[..., :-1]).float().pow(2).mean(dim=(0, 1, 2))
    cuts = {c.start for _, c in windows} | {c.stop for _, c in windows}
    border = torch.zeros_like(dx, dtype=torch.bool)
    border[[c - 1 for c in cuts if 0 < c < images.shape[-1]]] = True
    if border.all() or not border.any():
        raise ValueError("seam_ratio needs columns both at and away from tile borders")
    return float(dx[border].mean() / dx[~border].mean())
