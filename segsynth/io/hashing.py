"""Content hashes: of saved models (what a synthetic set or a latent run records to name its
weights) and of training data (what a run records so that a resume trains on the same bytes)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from segsynth.artifacts.names import DATASET_JSON


def model_hash(pipeline_dir: str | Path) -> str:
    """sha256 over the pipeline's safetensors files (relative path and bytes, in sorted order)."""
    root = Path(pipeline_dir)
    files = sorted(root.rglob("*.safetensors"), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise ValueError(f"{root}: no .safetensors weights found")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def data_hash(datasets: Iterable[Any]) -> str:
    """sha256 over the files a trainer learns from, so a resumed run can refuse other data.

    For each dataset in order (anything with ``root`` and ``refs``, as a
    :class:`~segsynth.data.loader.SegDataset`): its ``dataset.json`` and every sample's image and
    mask file, each once, as its path relative to the dataset folder, its size and its bytes.
    Sample ids alone would let another dataset with the same file names through; relative paths
    let the same data moved to another folder hash the same.
    """
    digest = hashlib.sha256()
    for position, dataset in enumerate(datasets):
        root = Path(dataset.root)
        files = {root / DATASET_JSON}
        for ref in dataset.refs:
            files.update(p for p in (ref.image_path, ref.mask_path) if p is not None)
        digest.update(f"dataset {position}\0".encode())
        for name, path in sorted((_relative(Path(p), root), Path(p)) for p in files):
            digest.update(f"{name}\0{path.stat().st_size}\0".encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX), or as given when it lies elsewhere."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
