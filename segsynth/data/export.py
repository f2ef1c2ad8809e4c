"""Re-write a dataset folder in another file type (PNG, TIFF or NIfTI), keeping stored values exactly.

Exports work on *units*: a whole NIfTI volume when the target keeps volumes, otherwise one 2D
sample (a raster file, or one slice of a volume, named ``<stem>_z<idx>`` like the loader's ids).
The arrays are the stored values (no [0, 1] scaling), so labels and intensities survive unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segsynth.artifacts.names import IMAGES_DIR, MASKS_DIR, UNLABELED_DIR
from segsynth.data.check import require_valid
from segsynth.data.format import DatasetSpec, load_spec, save_spec
from segsynth.data.io import DataReadError, is_nifti, read_image, split_ext, write_image
from segsynth.data.loader import index_dataset
from segsynth.io.atomic import atomic_directory
from segsynth.io.guard import check_out_apart, check_replaceable

#: ``--format`` name -> file extension written.
EXPORT_FORMATS = {"png": ".png", "tif": ".tif", "nifti": ".nii.gz"}


@dataclass(frozen=True)
class Unit:
    """One exported item: ``image`` ``(H, W)``/``(H, W, C)`` or a volume ``(X, Y, Z)``; ``mask`` the
    matching integer label map (``None`` for unlabelled images)."""

    stem: str
    case_id: str
    image: np.ndarray
    mask: np.ndarray | None
    source: Path


def as_label_map(arr: np.ndarray, path: Path) -> np.ndarray:
    """Integer view of a stored mask; fractional values are an error naming ``path``."""
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if arr.dtype == np.bool_ or (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        return arr.astype(np.int64)
    raise DataReadError(path, "mask holds non-integer values (run `segsynth data check`)")


def iter_units(root: Path, spec: DatasetSpec, split: str, keep_volumes: bool) -> Iterator[Unit]:
    """Yield the units of ``split`` (``"labeled"`` or ``"unlabeled"``) of the dataset at ``root``.

    Args:
        keep_volumes: yield NIfTI volumes whole (for a NIfTI target) instead of slice by slice.
    """
    refs = index_dataset(root, split, spec)
    volume: dict[Path, np.ndarray] = {}

    def load(path: Path, is_mask: bool) -> np.ndarray:
        # refs are sorted by id, so the slices of one volume come together: keep one image + mask
        if path not in volume:
            if not is_mask:
                volume.clear()
            arr = read_image(path, mask=is_mask)
            volume[path] = as_label_map(arr, path) if is_mask else arr
        return volume[path]

    exported: set[Path] = set()
    for ref in refs:
        if keep_volumes and is_nifti(ref.image_path):
            if ref.image_path in exported:
                continue
            exported.add(ref.image_path)
            image = load(ref.image_path, is_mask=False)
            mask = load(ref.mask_path, is_mask=True) if ref.mask_path is not None else None
            yield Unit(split_ext(ref.image_path)[0], ref.case_id, image, mask, ref.image_path)
            continue
        image = load(ref.image_path, is_mask=False)
        mask = load(ref.mask_path, is_mask=True) if ref.mask_path is not None else None
        if ref.slice_index is not None:
            image = np.ascontiguousarray(image[..., ref.slice_index])
            mask = np.ascontiguousarray(mask[..., ref.slice_index]) if mask is not None else None
        yield Unit(ref.id, ref.case_id, image, mask, ref.image_path)


def write_unit_image(path: Path, image: np.ndarray, source: Path) -> None:
    """Write an image, turning a format limitation into an error that names the source file."""
    try:
        write_image(path, image)
    except ValueError as exc:
        raise DataReadError(source, f"cannot be written as {path.name}: {exc}; choose another file type") from None


def export_dataset(src: str | Path, out: str | Path, fmt: str = "png", overwrite: bool = False) -> DatasetSpec:
    """Re-write the dataset ``src`` as ``out`` with every image and mask in file type ``fmt``.

    NIfTI volumes become one 2D file per slice (``<stem>_z000``...) for raster targets, keeping
    their case id; a NIfTI target keeps volumes whole and stores 2D images as 2D NIfTI.

    Args:
        src: dataset folder.
        out: new dataset folder (written atomically: complete or absent).
        fmt: ``"png"`` (uint8/uint16 data only), ``"tif"`` (any dtype) or ``"nifti"`` (single-channel).
        overwrite: replace an existing ``out`` that holds a dataset folder (nothing else).

    Returns:
        The new ``dataset.json`` contents.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(EXPORT_FORMATS)}, got {fmt!r}")
    src, ext = Path(src), EXPORT_FORMATS[fmt]
    check_out_apart(out, [src])
    check_replaceable(out, "dataset", overwrite)
    require_valid(src)  # what `segsynth data check` refuses is refused here too, with its message
    spec = load_spec(src)
    if fmt == "nifti" and spec.channels != 1:
        raise ValueError(f"{src}: NIfTI files here hold single-channel data; the dataset has {spec.channels} channels")
    cases: dict[str, dict[str, str]] = {"labeled": {}, "unlabeled": {}}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for split, image_dir in (("labeled", IMAGES_DIR), ("unlabeled", UNLABELED_DIR)):
            for unit in iter_units(src, spec, split, keep_volumes=fmt == "nifti"):
                write_unit_image(tmp / image_dir / f"{unit.stem}{ext}", unit.image, unit.source)
                if unit.mask is not None:
                    write_unit_image(tmp / MASKS_DIR / f"{unit.stem}{ext}", unit.mask, unit.source)
                cases[split][unit.stem] = unit.case_id
        new_spec = spec.model_copy(update={"cases": cases["labeled"], "unlabeled_cases": cases["unlabeled"]})
        save_spec(tmp, new_spec)
    return new_spec
