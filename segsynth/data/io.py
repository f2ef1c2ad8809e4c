"""Image and mask files: PNG, TIFF, NIfTI (and JPEG for images only).

Readers return numpy arrays as stored: 2D images ``(H, W)`` or ``(H, W, C)``; NIfTI volumes
``(X, Y)`` or ``(X, Y, Z)`` whose last axis indexes 2D slices. Writers go through
:func:`segsynth.io.atomic_write_bytes`, so a killed run never leaves a truncated file.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segsynth.io.atomic import atomic_write_bytes

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
RASTER_EXTENSIONS = (".png", ".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
IMAGE_EXTENSIONS = RASTER_EXTENSIONS + NIFTI_EXTENSIONS + LOSSY_EXTENSIONS
MASK_EXTENSIONS = RASTER_EXTENSIONS + NIFTI_EXTENSIONS

#: Largest image (pixels per 2D slice x channels) read without an explicit override: 64 Mpx, i.e.
#: 256 MiB as float32. Larger files (whole-slide images) must be tiled before use.
MAX_PIXELS = 64 * 1024 * 1024
#: Smallest side of a 2D image: a 1x1 or 10000x1 "image" is a line or a point (a broken export,
#: a transposed volume), which crops and augmentations would silently pad into blank samples.
MIN_SIDE = 2


class DataReadError(ValueError):
    """A file could not be read as an image; the message names the file and the problem.

    ``kind`` is the problem's code in ``segsynth data check`` (its module docstring lists them),
    so the check and every command report a file the same way.
    """

    def __init__(self, path: str | Path, problem: str, kind: str = "unreadable") -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem
        self.kind = kind


def resolve_link(path: Path) -> Path:
    """``path.resolve()``, with a symlink loop (a link to itself) reported as a :class:`DataReadError`."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # Python raises RuntimeError("Symlink loop ...")
        raise DataReadError(path, f"cannot follow the symlink ({exc}); replace it by the file it should name") from None


def check_shape(path: Path, shape: tuple[int, ...], max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a header shape before any pixel is decoded: zero-size, degenerate or oversized.

    Raises:
        DataReadError: with kind ``unreadable`` (zero-size), ``too_small`` or ``too_large``.
    """
    if any(s == 0 for s in shape):
        raise DataReadError(path, f"zero-size image {shape}")
    if len(shape) >= 2 and min(shape[:2]) < MIN_SIDE:
        raise DataReadError(path, f"image of shape {shape} is degenerate: each side needs at least {MIN_SIDE} "
                                  "pixels", kind="too_small")
    pixels = int(np.prod(shape[:2])) * (int(np.prod(shape[2:])) if len(shape) > 2 else 1)
    if pixels > max_pixels:
        raise DataReadError(
            path, f"image of shape {shape} exceeds the safe load limit of {max_pixels} pixels; tile it first",
            kind="too_large",
        )


def split_ext(path: str | Path) -> tuple[str, str]:
    """``("case_001", ".nii.gz")`` for ``.../case_001.nii.gz``; the extension is lower-cased."""
    name = Path(path).name
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)], ext
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix.lower()


def is_nifti(path: str | Path) -> bool:
    return split_ext(path)[1] in NIFTI_EXTENSIONS


@contextlib.contextmanager
def _open_pil_header(path: Path) -> Iterator[Any]:
    """Open a PIL image for its header only, with PIL's decompression-bomb guard lifted.

    PIL refuses to even *open* files over ~179 Mpx, which would hide the real size of an
    oversized file behind an "unreadable" error; the size is enforced by :data:`MAX_PIXELS`
    in :func:`read_image` instead, before any pixel is decoded.
    """
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            yield img
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def image_shape(path: str | Path) -> tuple[int, ...]:
    """Shape without decoding pixel data, so oversized files are refused before they are loaded."""
    path = Path(path)
    ext = split_ext(path)[1]
    try:
        if ext in NIFTI_EXTENSIONS:
            import nibabel as nib

            return tuple(int(s) for s in nib.load(str(path)).shape)
        if ext in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                if len(tif.series) > 1:  # read_image would silently take the first page only
                    raise DataReadError(path, f"multi-page TIFF holding {len(tif.series)} images; one 2D sample per "
                                              "file (a slice stack belongs in NIfTI)", kind="bad_dims")
                return tuple(int(s) for s in tif.series[0].shape)
        with _open_pil_header(path) as img:
            bands = len(img.getbands())
            return (img.height, img.width) if bands == 1 else (img.height, img.width, bands)
    except DataReadError:
        raise
    except Exception as exc:
        raise DataReadError(path, f"unreadable header ({type(exc).__name__}: {exc})") from None


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` into a numpy array (see module docstring for the axis convention).

    Raises:
        DataReadError: unknown extension, unreadable/truncated file, zero-size, degenerate or
            oversized image (:func:`check_shape`).
    """
    path = Path(path)
    ext = split_ext(path)[1]
    if ext not in IMAGE_EXTENSIONS:
        raise DataReadError(path, f"unsupported file type {ext!r}; use one of {', '.join(IMAGE_EXTENSIONS)}")
    check_shape(path, image_shape(path), max_pixels)
    try:
        if ext in NIFTI_EXTENSIONS:
            import nibabel as nib

            arr = np.asanyarray(nib.load(str(path)).dataobj)
        elif ext in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(str(path))
        else:
            from PIL import Image

            with Image.open(path) as img:
                img.load()
                arr = np.array(img)
    except Exception as exc:
        raise DataReadError(path, f"unreadable or truncated ({type(exc).__name__}: {exc})") from None
    return np.asarray(arr)


def _narrow_integers(arr: np.ndarray, dtypes: tuple[type, ...], ext: str) -> np.ndarray:
    """Cast integer ``arr`` losslessly to the first of ``dtypes`` holding all its values."""
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    for dtype in dtypes:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dtype)
    names = ", ".join(np.dtype(d).name for d in dtypes)
    raise ValueError(f"{ext} cannot store integer values in [{lo}, {hi}] losslessly (as {names})")


def encode_image(arr: np.ndarray, ext: str) -> bytes:
    """Encode ``arr`` in the format of ``ext`` (deterministic: same array, same bytes)."""
    arr = np.asarray(arr)
    buf = io.BytesIO()
    if ext in NIFTI_EXTENSIONS:
        import gzip

        import nibabel as nib

        if arr.dtype in (np.int64, np.uint64):
            # nibabel refuses 64-bit integers (few tools read them); label maps fit in int32.
            arr = _narrow_integers(arr, (np.int32,), ext)
        img = nib.Nifti1Image(arr, affine=np.eye(4))
        raw = img.to_bytes()
        if ext == ".nii.gz":
            return gzip.compress(raw, compresslevel=6, mtime=0)
        return raw
    if ext in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(buf, arr, photometric="rgb" if arr.ndim == 3 and arr.shape[-1] in (3, 4) else None)
        return buf.getvalue()
    if ext == ".png":
        from PIL import Image

        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        if np.issubdtype(arr.dtype, np.integer) and arr.dtype not in (np.uint8, np.uint16):
            arr = _narrow_integers(arr, (np.uint8,) if arr.ndim == 3 else (np.uint8, np.uint16), ext)
        if arr.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"PNG stores uint8/uint16 only, got {arr.dtype}")
        if arr.dtype == np.uint16 and arr.ndim != 2:
            raise ValueError("16-bit PNG supports single-channel images only")
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()
    raise ValueError(f"cannot write {ext!r}; use one of {', '.join(RASTER_EXTENSIONS + NIFTI_EXTENSIONS)}")


def encode_nifti_like(arr: np.ndarray, ext: str, reference: str | Path) -> bytes:
    """Encode ``arr`` as NIfTI with the affine and header of the NIfTI file ``reference``.

    A mask predicted for a volume must overlay it in every viewer: same voxel-to-world affine, same
    qform/sform codes, units and orientation. Only the data type and shape are the mask's own, and
    the intensity scaling of the reference (``scl_slope``/``scl_inter``) is dropped, since labels and
    probabilities are stored as they are.
    """
    import gzip

    import nibabel as nib

    arr = np.asarray(arr)
    if arr.dtype in (np.int64, np.uint64):
        arr = _narrow_integers(arr, (np.int32,), ext)
    ref = nib.load(str(reference))
    header = ref.header.copy()
    header.set_data_dtype(arr.dtype)
    img = type(ref)(arr, ref.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if ext == ".nii.gz" else raw


def write_image(path: str | Path, arr: np.ndarray, like: str | Path | None = None) -> Path:
    """Write ``arr`` to ``path`` atomically in the format named by its extension.

    With ``like`` (a NIfTI file) a NIfTI output takes its geometry (:func:`encode_nifti_like`).
    """
    ext = split_ext(path)[1]
    if like is not None and ext in NIFTI_EXTENSIONS and is_nifti(like):
        return atomic_write_bytes(path, encode_nifti_like(arr, ext, like))
    return atomic_write_bytes(path, encode_image(arr, ext))
