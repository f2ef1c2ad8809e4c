"""The torch dataset of a dataset folder: dict samples, optionally augmented, reproducibly seeded.

Kept apart from :mod:`segsynth.data.loader` (indexing, no torch) so tools that only read folders
start without torch; ``from segsynth.data.loader import SegDataset`` still works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segsynth.data.format import DatasetSpec, load_spec
from segsynth.data.io import DataReadError, read_image
from segsynth.data.loader import LABEL_HINT, SampleRef, channels_first, index_dataset, sample_seed, to_unit_range


def unit_range_image(path: Path, arr: np.ndarray | None = None) -> np.ndarray:
    """The image file ``path`` (or its already decoded ``arr``) as every network sees it: float32 in
    [0, 1] by :func:`~segsynth.data.loader.to_unit_range` over the whole file. Training, evaluation
    and ``segsynth predict`` all read images through here, so a network never meets other scaling.

    Raises:
        DataReadError: unreadable, or NaN/inf values, naming the file.
    """
    arr = read_image(path) if arr is None else arr
    try:
        return to_unit_range(arr)
    except ValueError as exc:
        raise DataReadError(path, str(exc)) from None


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
            arr = read_image(path, mask=is_mask)
            if is_mask:
                if not np.issubdtype(arr.dtype, np.integer):
                    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                        raise DataReadError(path, "mask holds non-integer values")
                    arr = arr.astype(np.int64)
            else:
                arr = unit_range_image(path, arr)
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
        image = channels_first(image, self.spec.channels, ref.image_path)
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

    def read_all(self) -> None:
        """Read every sample once, so a bad file stops a command before any work, naming the file.

        The arrays stay cached, so the reading is not wasted for a run that goes on to train.

        Raises:
            DataReadError: the first unreadable, non-finite, misshapen or mislabelled sample.
        """
        for index in range(len(self)):
            self.load_arrays(index)

    def verify(self) -> None:
        """:meth:`read_all`, then the whole folder through ``segsynth data check``'s validation, so a
        command never accepts a folder the check rejects (an orphan mask, an unlabelled file without
        a case id).

        Raises:
            DataReadError: the first unreadable, non-finite, misshapen or mislabelled sample, or
                the first error the check finds, naming its file.
        """
        from segsynth.data.check import require_valid  # the checker itself reads through this module

        self.read_all()
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
