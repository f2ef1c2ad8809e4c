"""Preview grids: one row per sample, layout | references | sample, small tiles enlarged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segsynth.data.io import read_image
from segsynth.diffusion.sample_grid import MIN_TILE, sample_grid, save_sample_grid


def test_grid_places_layout_refs_and_sample_in_columns() -> None:
    layouts = torch.zeros(2, 8, 8, dtype=torch.long)
    layouts[1, :4] = 1
    styles = torch.full((2, 3, 1, 8, 8), 0.5)
    samples = torch.ones(2, 1, 8, 8)
    grid = sample_grid(layouts, styles, samples)
    assert grid.shape == (2 * 10, 5 * 10, 3)
    assert (grid[10:14, 0:8] == [230, 25, 75]).all() and (grid[14:18, 0:8] == 0).all()  # class 1 coloured, 0 black
    assert (grid[:8, 10:18] == 128).all() and (grid[:8, 40:48] == 255).all()
    assert (grid[8:10] == 255).all()  # white gap between rows


def test_saved_grid_enlarges_small_tiles(tmp_path: Path) -> None:
    layouts = torch.randint(0, 3, (2, 16, 16))
    samples = torch.rand(2, 3, 16, 16)
    image = read_image(save_sample_grid(tmp_path / "g.png", layouts, None, samples))
    factor = MIN_TILE // 16
    assert image.shape[:2] == (2 * (16 * factor + 2), 2 * (16 * factor + 2))
    tile = image[: 16 * factor, : 16 * factor]
    assert np.array_equal(tile[::factor, ::factor], sample_grid(layouts, None, samples)[:16, :16])
