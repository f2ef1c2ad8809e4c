"""The one rule for model folders a user hands us: JSON, text and safetensors only.

Pickled weights (``.bin``, ``.pt``, ``.ckpt``, ...) run code when loaded and Python files when
imported, so a folder holding any of them is refused before anything in it is read, whatever the
loader would do with it.
"""

from __future__ import annotations

from pathlib import Path

#: Files that could run code when loaded (pickled weights, numpy pickles) or imported (modules).
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npy", ".npz", ".py", ".pyc")


def refuse_unsafe_files(folder: Path, error: type[Exception] = ValueError, hint: str = "") -> None:
    """Raise ``error`` naming the first file under ``folder`` (recursively) with an unsafe suffix.

    Args:
        folder: the model folder.
        error: the exception type the caller's callers expect.
        hint: appended to the message (e.g. which files to keep).
    """
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in UNSAFE_SUFFIXES:
            raise error(f"{path}: refused; segsynth loads models from safetensors + JSON only, never pickle or code{hint}")
