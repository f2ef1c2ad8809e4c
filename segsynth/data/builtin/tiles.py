"""Tiling, tile selection and intensity scaling shared by the built-in datasets.

Every choice is drawn from a generator seeded by ``(seed, case id)``, so a build is reproducible
byte for byte and adding or removing one case never changes the tiles of another.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Share of each case's selected tiles held out to ``unlabeled/`` as style sources.
HOLDOUT_FRACTION = 0.25
MIN_TILE_SIZE = 16
MAX_TILE_SIZE = 256


@dataclass(frozen=True)
class Tile:
    """One 2D sample. ``image`` is ``(H, W)`` or ``(H, W, 3)`` uint8; ``mask`` ``(H, W)`` uint8 or None."""

    stem: str
    case_id: str
    image: np.ndarray
    mask: np.ndarray | None


def check_tile_size(tile_size: int) -> int:
    """Validate ``tile_size`` (pixels per side); raises ``ValueError`` outside [16, 256]."""
    if not isinstance(tile_size, int) or not MIN_TILE_SIZE <= tile_size <= MAX_TILE_SIZE:
        raise ValueError(f"tile_size must be an integer in [{MIN_TILE_SIZE}, {MAX_TILE_SIZE}], got {tile_size!r}")
    return tile_size


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """Generator for the draws of one case, independent of every other case."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode("utf-8"))])


def grid_origins(height: int, width: int, tile_size: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping ``tile_size`` grid that fits in ``(height, width)``.

    Raises:
        ValueError: the region is smaller than one tile.
    """
    if height < tile_size or width < tile_size:
        raise ValueError(f"tile_size {tile_size} exceeds the source region of {height}x{width} pixels")
    return [(y, x) for y in range(0, height - tile_size + 1, tile_size) for x in range(0, width - tile_size + 1, tile_size)]


def choose(n_candidates: int, max_count: int, rng: np.random.Generator) -> list[int]:
    """Sorted indices of at most ``max_count`` of ``n_candidates`` items, drawn without replacement."""
    if n_candidates <= max_count:
        return list(range(n_candidates))
    return sorted(int(i) for i in rng.choice(n_candidates, size=max_count, replace=False))


def split_case(tiles: Sequence[Tile], rng: np.random.Generator) -> tuple[list[Tile], list[Tile]]:
    """Split one case's tiles into ``(labelled, held_out)``; the held-out tiles lose their masks.

    A quarter (at least one, when the case has two or more tiles) goes to the unlabelled pool, so
    every case contributes style references the diffusion model never trains on.
    """
    n_out = max(1, int(round(len(tiles) * HOLDOUT_FRACTION))) if len(tiles) > 1 else 0
    out_idx = {int(i) for i in rng.choice(len(tiles), size=n_out, replace=False)}
    labelled = [t for i, t in enumerate(tiles) if i not in out_idx]
    held_out = [Tile(t.stem, t.case_id, t.image, None) for i, t in enumerate(tiles) if i in out_idx]
    return labelled, held_out


def robust_uint8(arr: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale ``arr`` to uint8 between its ``low`` and ``high`` percentiles (clipped).

    One scale per source (whole image or stack) keeps the relative brightness of its tiles, while
    the percentiles make 8-bit DSB crops and 16-bit confocal stacks comparable.
    """
    data = np.asarray(arr, dtype=np.float64)
    lo, hi = np.percentile(data, [low, high])
    if hi <= lo:
        raise ValueError(f"source has no intensity range (percentiles {low}/{high} both {lo})")
    return np.round(np.clip((data - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
