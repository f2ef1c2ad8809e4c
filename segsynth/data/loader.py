"""Typed access to a dataset folder: one :class:`SampleRef` per 2D image, dict samples for torch.

Samples are ``{"image": float32 (C, H, W) in [0, 1], "mask": int64 (H, W), "case_id": str,
"id": str}`` (unlabelled samples have no ``mask``). NIfTI volumes are expanded to their axial
(last-axis) slices, each keeping the volume's case id, so splits by case never leak slices.

Indexing needs no torch (``segsynth data check`` and ``info`` start at once); the torch dataset
:class:`SegDataset` lives in :mod:`segsynth.data.dataset` and is imported from here on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segsynth.artifacts.names import IMAGES_DIR, MASKS_DIR, UNLABELED_DIR
from segsynth.data.format import DatasetSpec, load_spec
from segsynth.data.io import (
    MASK_EXTENSIONS,
    DataReadError,
    image_shape,
    is_nifti,
    name_key,
    require_regular_file,
    resolve_link,
    split_ext,
)
from segsynth.lazy import lazy_exports

#: Raster images hold at most this many channels in their last axis; more means a slice stack.
MAX_RASTER_CHANNELS = 4

#: Appended to an undeclared-label error: the two usual causes.
LABEL_HINT = "masks must hold the label values of dataset.json (a 0/255 mask or anti-aliased edges?)"


@dataclass(frozen=True)
class SampleRef:
    """Where one 2D sample lives. ``slice_index`` is set for slices of a NIfTI volume."""

    id: str
    case_id: str
    image_path: Path
    mask_path: Path | None
    slice_index: int | None = None


def list_stems(folder: Path, root: Path | None = None) -> dict[str, Path]:
    """Map stem -> file for every non-hidden file in ``folder`` (empty if the folder is absent).

    Stems are in the Unicode form of :func:`~segsynth.data.io.name_key`, the form ``dataset.json``
    keys are compared in.

    Raises:
        DataReadError: two files share a stem (``a.png`` and ``a.tif``, or two Unicode spellings of
            one name): which one is meant is ambiguous, so neither is picked silently; a symlink
            leads out of ``root`` (the dataset folder), which ``segsynth data check`` reports as
            ``symlink_outside``; or an entry is a FIFO, socket or device (``special_file``),
            refused before anything opens it.
    """
    if not folder.is_dir():
        return {}
    stems: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if root is not None and path.is_symlink() and not is_inside(path, root):
            raise DataReadError(path, f"symlink to {resolve_link(path)} leaves the dataset folder {root}; copy the file in")
        require_regular_file(path)  # a FIFO or device is refused by name, never opened
        if not path.is_file():
            continue
        stem = name_key(split_ext(path)[0])
        if stem in stems:
            raise DataReadError(path, f"shares the stem {stem!r} with {stems[stem].name}; keep one of them")
        stems[stem] = path
    return stems


def index_dataset(root: str | Path, split: str = "labeled", spec: DatasetSpec | None = None) -> list[SampleRef]:
    """List the 2D samples of ``root`` (``split`` is ``"labeled"`` or ``"unlabeled"``), sorted by id.

    Raises:
        DataReadError: an image without a mask, or a file without a case id in ``dataset.json``.
    """
    root = Path(root)
    spec = spec or load_spec(root)
    if split == "labeled":
        images, cases, masks = list_stems(root / IMAGES_DIR, root), spec.cases, list_stems(root / MASKS_DIR, root)
    elif split == "unlabeled":
        images, cases, masks = list_stems(root / UNLABELED_DIR, root), spec.unlabeled_cases, {}
    else:
        raise ValueError(f"split must be 'labeled' or 'unlabeled', got {split!r}")
    refs: list[SampleRef] = []
    for stem, image_path in images.items():
        if stem not in cases:
            raise DataReadError(image_path, "no case id in dataset.json")
        mask_path = masks.get(stem)
        if split == "labeled" and mask_path is None:
            raise DataReadError(image_path, f"no mask with stem {stem!r} in {root / MASKS_DIR}")
        if mask_path is not None and split_ext(mask_path)[1] not in MASK_EXTENSIONS:
            raise DataReadError(mask_path, "lossy JPEG cannot hold exact labels; store masks as PNG, TIFF or NIfTI")
        shape = image_shape(image_path) if is_nifti(image_path) else ()
        if len(shape) > 3:
            raise DataReadError(image_path, f"NIfTI images must be (X, Y) or (X, Y, Z) single-channel, got {shape}")
        if len(shape) >= 3:
            for z in range(shape[2]):
                refs.append(SampleRef(f"{stem}_z{z:03d}", cases[stem], image_path, mask_path, z))
        else:  # a raster file or a 2D NIfTI is one sample named by its stem
            refs.append(SampleRef(stem, cases[stem], image_path, mask_path))
    return sorted(refs, key=lambda r: r.id)


def to_unit_range(arr: np.ndarray) -> np.ndarray:
    """Intensities to float32 in [0, 1].

    8-bit data is divided by 255 (its scale is meaningful); anything else (16-bit microscopy,
    float MRI/CT) is clipped to its own 0.5-99.5 percentiles, computed over the whole file so all
    slices of a volume share one scale.
    """
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    data = arr.astype(np.float32)
    if not np.isfinite(data).all():
        raise ValueError("image contains NaN or inf")
    lo, hi = np.percentile(data, [0.5, 99.5])
    if hi <= lo:
        return np.zeros_like(data)
    # np.percentile returns float64 scalars; keep the documented float32.
    return np.clip((data - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32, copy=False)


def channels_first(arr: np.ndarray, channels: int, path: Path) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] > MAX_RASTER_CHANNELS:
        raise DataReadError(
            path, f"expected (H, W) or (H, W, C<={MAX_RASTER_CHANNELS}), got {arr.shape}; a slice stack belongs in NIfTI"
        )
    elif arr.ndim == 3:
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise DataReadError(path, f"expected a 2D image, got shape {arr.shape}")
    if arr.shape[0] != channels:
        raise DataReadError(path, f"has {arr.shape[0]} channels, dataset.json declares {channels}")
    return np.ascontiguousarray(arr)


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (after following links) lies inside ``root``."""
    target = resolve_link(path)  # a symlink loop is an error of its own, not "outside"
    try:
        target.relative_to(root.resolve())
    except ValueError:
        return False
    return True


def sample_seed(seed: int, *indices: int) -> int:
    """A well-mixed 32-bit seed of one draw, named by the base ``seed`` and the indices that place it.

    Training draws pass ``(epoch, index)``, a generated sample its ``index``: one function, so every
    stage mixes seeds alike, and nearby inputs never give correlated random streams.
    """
    return int(np.random.SeedSequence([seed, *indices]).generate_state(1)[0])


__getattr__, __dir__ = lazy_exports(__name__, {"SegDataset": "segsynth.data.dataset"})
