"""Turn the tiles of a built-in dataset into a dataset folder (the format of :mod:`segsynth.data.format`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segsynth.artifacts.names import IMAGES_DIR, MASKS_DIR, UNLABELED_DIR
from segsynth.data.builtin.tiles import Tile
from segsynth.data.format import DatasetSpec, save_spec
from segsynth.data.io import encode_image


@dataclass(frozen=True)
class BuiltinDataset:
    """Everything a built-in dataset folder holds, before it is written."""

    spec: DatasetSpec
    labelled: list[Tile]
    unlabelled: list[Tile]


def assemble(labelled: Sequence[Tile], unlabelled: Sequence[Tile], **fields: Any) -> BuiltinDataset:
    """Build the :class:`DatasetSpec` (``fields`` plus the case maps) and check the tiles against it.

    Raises:
        ValueError: duplicate stems, a labelled tile without mask, mask values outside the labels.
    """
    stems = [t.stem for t in (*labelled, *unlabelled)]
    if len(set(stems)) != len(stems):
        raise ValueError(f"duplicate tile stems in built-in dataset {fields.get('name')!r}")
    spec = DatasetSpec(
        cases={t.stem: t.case_id for t in labelled},
        unlabeled_cases={t.stem: t.case_id for t in unlabelled},
        **fields,
    )
    for tile in labelled:
        if tile.mask is None or tile.mask.shape != tile.image.shape[:2]:
            raise ValueError(f"tile {tile.stem!r}: mask missing or not the image's shape")
        if int(tile.mask.max()) >= spec.num_classes:
            raise ValueError(f"tile {tile.stem!r}: mask value {int(tile.mask.max())} is not a declared label")
    return BuiltinDataset(spec, list(labelled), list(unlabelled))


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.write_bytes(encode_image(np.ascontiguousarray(arr), ".png"))


def write_dataset(root: Path, dataset: BuiltinDataset) -> None:
    """Write ``dataset`` into the empty staging folder ``root`` as 8-bit PNGs plus ``dataset.json``.

    ``root`` must be the temporary folder of :func:`segsynth.io.atomic.atomic_directory`: the
    folder as a whole is published atomically (after every file is synced), so the files skip the
    per-file temp-and-rename of ``write_image``, which would double the disk syncs of a few hundred
    tiny files. The PNG bytes are the same (:func:`segsynth.data.io.encode_image`).
    """
    for sub in (IMAGES_DIR, MASKS_DIR, UNLABELED_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for tile in dataset.labelled:
        _write_png(root / IMAGES_DIR / f"{tile.stem}.png", tile.image)
        _write_png(root / MASKS_DIR / f"{tile.stem}.png", tile.mask)
    for tile in dataset.unlabelled:
        _write_png(root / UNLABELED_DIR / f"{tile.stem}.png", tile.image)
    save_spec(root, dataset.spec)
