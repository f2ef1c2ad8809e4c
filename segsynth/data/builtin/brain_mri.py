"""``brain-mri``: axial T1 slices of the MNI152 2009 template with derived CSF / GM / WM labels.

Source: nilearn ``datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz`` (ICBM152
2009a symmetric, 1 mm, 197x233x189, skull-stripped T1 and tissue probability maps rescaled to 0-255).
No CSF map ships, so CSF is what is left of the brain once GM and WM are accounted for.

Cases are slabs of consecutive axial slices (the template is one averaged brain, so cases are
anatomical levels, not patients); the last slices of every slab go to ``unlabeled/``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

from segsynth.data.builtin.sources import package_file
from segsynth.data.builtin.tiles import Tile
from segsynth.data.builtin.writer import BuiltinDataset, assemble
from segsynth.data.io import DataReadError, read_image

NAME = "brain-mri"
N_SLABS = 6
#: Every STEP-th slice of a slab is labelled; its last GAP slices are held out as style sources.
STEP = 2
GAP = 4
#: Slices whose brain area is below this share of the largest slice's are skipped (skull base, vertex).
MIN_AREA_SHARE = 0.05
BRAIN_T1_FLOOR = 1
CROP_MARGIN = 2
RECIPE = (
    "brain = axial slices of (T1 >= 1) with holes filled (the template is skull-stripped), cropped in-plane to the brain's "
    "bounding box + 2 voxels; "
    "p_gm, p_wm = probability maps / 255; p_csf = clip(1 - p_gm - p_wm, 0, 1); inside the brain the "
    "label is the largest of (p_csf -> 1 CSF, p_gm -> 2 GM, p_wm -> 3 WM), outside it 0. The T1 slice "
    "and the maps are resized (bilinear, anti-aliased) to the tile size before the labels are taken, "
    "so tiles and masks stay aligned and class areas are preserved."
)


def _volume(name: str) -> tuple[np.ndarray, str]:
    path = package_file("nilearn", f"datasets/data/mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
    volume = read_image(path)
    if volume.ndim != 3:
        raise DataReadError(path, f"expected a 3D volume, got shape {volume.shape}")
    return volume.astype(np.float32), str(path)


def _square(plane: np.ndarray) -> np.ndarray:
    """An ``(X, Y)`` axial plane as an image (anterior up), zero-padded to a centred square."""
    image = plane.T[::-1]
    side = max(image.shape)
    pad_y, pad_x = side - image.shape[0], side - image.shape[1]
    return np.pad(image, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)))


def _slice_tile(stem: str, case_id: str, planes: dict[str, np.ndarray], size: int, labelled: bool) -> Tile:
    """One resized axial slice; ``planes`` holds the ``t1``, ``gm``, ``wm`` and ``brain`` planes."""
    small = {
        key: resize(_square(plane), (size, size), order=1, anti_aliasing=True, preserve_range=True)
        for key, plane in planes.items()
    }
    image = np.round(np.clip(small["t1"], 0, 255)).astype(np.uint8)
    if not labelled:
        return Tile(stem, case_id, image, None)
    p_gm, p_wm = small["gm"] / 255.0, small["wm"] / 255.0
    p_csf = np.clip(1.0 - p_gm - p_wm, 0.0, 1.0)
    mask = (np.argmax(np.stack([p_csf, p_gm, p_wm]), axis=0) + 1).astype(np.uint8)
    mask[small["brain"] < 0.5] = 0
    return Tile(stem, case_id, image, mask)


def build(tile_size: int, seed: int) -> BuiltinDataset:
    """Derive the labels and cut one tile per axial slice. ``seed`` is unused: slabs are fixed by anatomy."""
    del seed
    t1, t1_path = _volume("t1")
    gm, gm_path = _volume("gm")
    wm, _ = _volume("wm")
    if not t1.shape == gm.shape == wm.shape:
        raise DataReadError(gm_path, f"GM/WM maps {gm.shape}/{wm.shape} do not match the T1 {t1.shape}")
    brain = np.stack([ndi.binary_fill_holes(t1[..., z] >= BRAIN_T1_FLOOR) for z in range(t1.shape[2])], axis=-1)
    area = brain.sum(axis=(0, 1))
    if area.max() == 0:
        raise DataReadError(t1_path, "T1 template is empty")
    slices = np.flatnonzero(area >= MIN_AREA_SHARE * area.max())
    # One in-plane crop for all slices (the brain's bounding box plus a margin): slices keep their
    # relative size, and tiles are not mostly empty padding.
    xs, ys = np.flatnonzero(brain.any(axis=(1, 2))), np.flatnonzero(brain.any(axis=(0, 2)))
    crop = (
        slice(max(0, xs[0] - CROP_MARGIN), xs[-1] + 1 + CROP_MARGIN),
        slice(max(0, ys[0] - CROP_MARGIN), ys[-1] + 1 + CROP_MARGIN),
    )

    labelled: list[Tile] = []
    unlabelled: list[Tile] = []
    for slab in np.array_split(slices, N_SLABS):
        case_id = f"mni152_z{slab[0]:03d}-{slab[-1]:03d}"
        for z in slab[:-GAP:STEP].tolist() + slab[-GAP:].tolist():
            planes = {
                "t1": t1[crop][..., z],
                "gm": gm[crop][..., z],
                "wm": wm[crop][..., z],
                "brain": brain[crop][..., z].astype(np.float32),
            }
            is_labelled = z in slab[:-GAP]
            tile = _slice_tile(f"{case_id}_z{z:03d}", case_id, planes, tile_size, is_labelled)
            (labelled if is_labelled else unlabelled).append(tile)

    return assemble(
        labelled,
        unlabelled,
        name=NAME,
        description=(
            "Axial slices of the MNI ICBM152 2009a symmetric T1 template (1 mm), each resized to one tile, "
            "with CSF / grey matter / white matter derived from the template's probability maps. Cases are "
            f"{N_SLABS} slabs of consecutive slices (anatomical levels of one averaged brain, not patients); "
            f"one slice in {STEP} of a slab is labelled and the last {GAP} slices of each slab are in "
            "unlabeled/ only."
        ),
        modality="MRI, T1-weighted",
        prompt="Brain, T1 MRI",
        channels=1,
        labels={"background": 0, "csf": 1, "grey_matter": 2, "white_matter": 3},
        label_provenance="derived",
        derivation=RECIPE,
        licence=(
            "MNI ICBM152 nonlinear symmetric 2009a template (Fonov et al. 2009/2011, McConnell Brain Imaging "
            "Centre); nilearn's dataset description lists its licence as 'unknown' (the upstream "
            "distribution carries a permissive copyright notice); shipped in nilearn 0.14.1 (BSD-3-Clause)"
        ),
        source=(
            "nilearn: datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz "
            "(www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009)"
        ),
    )
