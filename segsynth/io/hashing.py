"""Content hashes of saved models: what a synthetic set or a latent run records to name its weights."""

from __future__ import annotations

import hashlib
from pathlib import Path


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
