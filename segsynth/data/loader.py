"""Typed access to a dataset folder: one :class:`SampleRef` per 2D image, dict samples for torch.

Samples are ``{"image": float32 (C, H, W) in [0, 1], "mask": int64 (H, W), "case_id": str,
"id": str}`` (unlabelled samples have no ``mask``). NIfTI volumes are expanded to their axial
(last-axis) slices, each keeping the volume's case id, so splits by case never leak slices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segsynth.data.format import IMAGES_DIR, MASKS_DIR, UNLABELED_DIR, DatasetSpec, load_spec
from segsynth.data.io import MASK_EXTENSIONS, DataReadError, image_shape, is_nifti, read_image, resolve_link, split_ext

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

    Raises:
        DataReadError: two files share a stem (``a.png`` and ``a.tif``): which one is meant is
            ambiguous, so neither is picked silently; or a symlink leads out of ``root`` (the
            dataset folder), which ``segsynth data check`` reports as ``symlink_outside``.
    """
    if not folder.is_dir():
        return {}
    stems: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if root is not None and path.is_symlink() and not is_inside(path, root):
            raise DataReadError(path, f"symlink to {resolve_link(path)} leaves the dataset folder {root}; copy the file in")
        if not path.is_file():
            continue
        stem = split_ext(path)[0]
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


def _channels_first(arr: np.ndarray, channels: int, path: Path) -> np.ndarray:
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


class SegDataset(Dataset):
    """Labelled or unlabelled 2D samples of a dataset folder, optionally augmented.

    Args:
        root: dataset folder.
        split: ``"labeled"`` or ``"unlabeled"``.
        refs: restrict to these samples (e.g. one fold); default all of ``split``.
        augment: a paired dict transform (see :mod:`segsynth.data.augment`) exposing
            ``set_random_state(seed=...)``; it is re-seeded per ``(seed, epoch, index)`` so the
            augmentation of a sample does not depend on worker count or on where a run resumed.
        seed: base seed of the augmentation.
        spec: the dataset description, for folders without a ``dataset.json`` (e.g. a plain
            folder of style images; then ``refs`` must be given).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "labeled",
        refs: Sequence[SampleRef] | None = None,
        augment: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        seed: int = 0,
        spec: DatasetSpec | None = None,
    ) -> None:
        self.root = Path(root)
        self.spec = spec if spec is not None else load_spec(self.root)
        self.split = split
        self.refs = list(refs) if refs is not None else index_dataset(self.root, split, self.spec)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._cache: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call once per epoch, like ``DistributedSampler``)."""
        self.epoch = epoch

    def _load(self, path: Path, is_mask: bool) -> np.ndarray:
        if path not in self._cache:
            arr = read_image(path)
            if is_mask:
                if not np.issubdtype(arr.dtype, np.integer):
                    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                        raise DataReadError(path, "mask holds non-integer values")
                    arr = arr.astype(np.int64)
            else:
                try:
                    arr = to_unit_range(arr)
                except ValueError as exc:
                    raise DataReadError(path, str(exc)) from None
            self._cache[path] = arr
        return self._cache[path]

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Un-augmented ``(image (C, H, W) float32, mask (H, W) int64 or None)`` of sample ``index``."""
        ref = self.refs[index]
        image = self._load(ref.image_path, is_mask=False)
        mask = self._load(ref.mask_path, is_mask=True) if ref.mask_path is not None else None
        if ref.slice_index is not None:
            image = image[..., ref.slice_index]
            mask = mask[..., ref.slice_index] if mask is not None else None
        image = _channels_first(image, self.spec.channels, ref.image_path)
        if mask is not None:
            if mask.ndim != 2:
                raise DataReadError(ref.mask_path, f"mask must be 2D, got shape {mask.shape}")
            if mask.shape != image.shape[1:]:
                raise DataReadError(ref.mask_path, f"mask shape {mask.shape} != image shape {image.shape[1:]}")
            mask = mask.astype(np.int64)
            bad = np.setdiff1d(np.unique(mask), np.arange(self.spec.num_classes))
            if bad.size:
                raise DataReadError(ref.mask_path, f"undeclared label values {bad.tolist()[:10]}; {LABEL_HINT}")
        return image, mask

    def verify(self) -> None:
        """Read every sample once, so a bad file stops a command before any work, naming the file.

        The arrays stay cached, so the reading is not wasted for a run that goes on to train.

        Then the whole folder goes through ``segsynth data check``'s validation, so a command never
        accepts a folder the check rejects (an orphan mask, an unlabelled file without a case id).

        Raises:
            DataReadError: the first unreadable, non-finite, misshapen or mislabelled sample, or
                the first error the check finds, naming its file.
        """
        from segsynth.data.check import require_valid  # the checker itself reads through this module

        for index in range(len(self)):
            self.load_arrays(index)
        require_valid(self.root)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref = self.refs[index]
        image, mask = self.load_arrays(index)
        sample: dict[str, Any] = {"image": torch.from_numpy(image.copy())}
        if mask is not None:
            sample["mask"] = torch.from_numpy(mask[None].copy())
        if self.augment is not None:
            self.augment.set_random_state(seed=sample_seed(self.seed, self.epoch, index))
            sample = self.augment(sample)
        sample["image"] = torch.as_tensor(sample["image"], dtype=torch.float32).clamp(0.0, 1.0)
        if "mask" in sample:
            sample["mask"] = torch.as_tensor(sample["mask"]).round().long()[0]
        sample["case_id"] = ref.case_id
        sample["id"] = ref.id
        return sample


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (after following links) lies inside ``root``."""
    target = resolve_link(path)  # a symlink loop is an error of its own, not "outside"
    try:
        target.relative_to(root.resolve())
    except ValueError:
        return False
    return True


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed for one ``(seed, epoch, index)`` draw."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
