"""Image and mask files: PNG, TIFF, NIfTI (and JPEG for images only).

Readers return numpy arrays of what a viewer shows: 2D images ``(H, W)`` or ``(H, W, C)``; NIfTI
volumes ``(X, Y)`` or ``(X, Y, Z)`` whose last axis indexes 2D slices. Two things a viewer does
are done here too, so a model never trains on pixels nobody looked at:

- the EXIF orientation tag of a JPEG, PNG or TIFF (a phone photo stored sideways with "rotate 90°"
  in its header) is applied to images *and* masks alike, so a mask drawn on the displayed image
  lines up with it;
- a palette (indexed-colour) or CMYK *image* is converted to the colours it shows (grey palettes
  to one channel, colour to RGB, with alpha where the palette has transparency), whereas a palette
  *mask* keeps its indices, which are its label values.

Only regular files are opened: a FIFO, socket or device file is refused by name first (opening a
FIFO waits for a writer forever). Writers go through :func:`segsynth.io.atomic_write_bytes`, so a
killed run never leaves a truncated file.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segsynth.artifacts.names import name_key as name_key  # re-exported: its home is the contracts layer
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


def special_file(path: Path) -> str | None:
    """What ``path`` is when it is a FIFO, socket or device file (following symlinks), else None.

    Decided by ``stat`` alone: opening a FIFO blocks until a writer appears, so a listing must
    refuse it by name before anything opens it. A missing file or a folder is not "special" here;
    callers report those in their own words.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return None


def require_regular_file(path: Path) -> None:
    """Refuse a FIFO, socket or device file by name, before it is opened.

    Raises:
        DataReadError: kind ``special_file``.
    """
    what = special_file(path)
    if what is not None:
        raise DataReadError(path, f"is a {what}, not an image file (reading it could wait forever); remove it",
                            kind="special_file")


#: EXIF orientation (tag 274) -> what a viewer does to the stored pixels, as numpy on ``(H, W, ...)``
#: (the same transposes as ``PIL.ImageOps.exif_transpose``; ``tests/test_read_what_you_see.py`` holds it).
ORIENTATIONS: dict[int, str] = {
    2: "mirrored left-right",
    3: "rotated 180°",
    4: "mirrored top-bottom",
    5: "transposed (mirrored and rotated 90° counter-clockwise)",
    6: "rotated 90° clockwise",
    7: "transversed (mirrored and rotated 90° clockwise)",
    8: "rotated 90° counter-clockwise",
}
_EXIF_ORIENTATION = 0x0112


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` (rows, columns first) as a viewer shows it under EXIF ``orientation`` (1: as stored)."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.swapaxes(0, 1)
    elif orientation == 6:
        arr = np.rot90(arr, -1)
    elif orientation == 7:
        arr = arr[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        arr = np.rot90(arr, 1)
    return np.ascontiguousarray(arr)


def _valid_orientation(value: Any) -> int:
    """An orientation tag's value, with anything outside 1..8 (garbage, a list) read as 1, as viewers do."""
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if value in ORIENTATIONS else 1


def _pil_orientation(img: Any) -> int:
    """The EXIF orientation of an opened (not yet decoded) PIL image.

    A PNG's ``eXIf`` chunk sits before its pixels; asking PIL for the EXIF of a PNG without one would
    decode the whole image to look behind them, which the header-only read must not do.
    """
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        return _valid_orientation(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block: viewers show the pixels as stored
        return 1


def _tiff_orientation(tif: Any) -> int:
    tag = tif.pages[0].tags.get(274)
    return _valid_orientation(tag.value) if tag is not None else 1


def file_orientation(path: str | Path) -> int:
    """The EXIF/TIFF orientation that reading ``path`` applies (1: none); NIfTI has none.

    ``segsynth data check`` reports every file read with an orientation other than 1.
    """
    path = Path(path)
    ext = split_ext(path)[1]
    if ext in NIFTI_EXTENSIONS:
        return 1
    require_regular_file(path)
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                return _tiff_orientation(tif)
        with _open_pil_header(path) as img:
            return _pil_orientation(img)
    except Exception as exc:
        raise DataReadError(path, f"unreadable header ({type(exc).__name__}: {exc})") from None


def _swap_sides(shape: tuple[int, ...], orientation: int) -> tuple[int, ...]:
    """A header shape after ``orientation``: 5..8 exchange height and width."""
    return (shape[1], shape[0], *shape[2:]) if orientation >= 5 and len(shape) >= 2 else shape


def _is_grey_palette(img: Any) -> bool:
    palette = img.getpalette("RGB") or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def _display_mode(img: Any) -> str | None:
    """The PIL mode an *image* in ``img.mode`` is read in, or None to read it as stored.

    Palette and CMYK pixels are not what a viewer shows (indices into a colour table, ink amounts):
    grey palettes read as ``L``, colour ones as ``RGB``, with alpha (``LA``/``RGBA``) where the
    palette has transparency; CMYK as ``RGB``.
    """
    if img.mode in ("P", "PA"):
        grey = _is_grey_palette(img)
        alpha = img.mode == "PA" or "transparency" in img.info
        return ("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB")
    if img.mode == "CMYK":
        return "RGB"
    return None


def _pil_pixels(img: Any, mask: bool) -> np.ndarray:
    """Decoded pixels of an opened PIL image, converted to what it shows unless it is a mask."""
    mode = None if mask else _display_mode(img)
    img.load()
    if mode is None:
        return np.array(img)
    if mode in ("L", "LA"):  # a grey palette: its R, G and B are equal, keep one (and the alpha)
        rgba = np.array(img.convert("RGBA" if mode == "LA" else "RGB"))
        return np.ascontiguousarray(rgba[..., [0, 3]] if mode == "LA" else rgba[..., 0])
    return np.array(img.convert(mode))


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


def image_shape(path: str | Path, mask: bool = False) -> tuple[int, ...]:
    """Shape without decoding pixel data, so oversized files are refused before they are loaded.

    It is the shape :func:`read_image` returns: after the EXIF orientation, and with the channels of
    the colours a palette image shows (a palette ``mask`` keeps one channel of indices).
    """
    path = Path(path)
    ext = split_ext(path)[1]
    require_regular_file(path)
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
                return _swap_sides(tuple(int(s) for s in tif.series[0].shape), _tiff_orientation(tif))
        with _open_pil_header(path) as img:
            mode = None if mask else _display_mode(img)
            bands = len(img.getbands()) if mode is None else len(mode)
            shape = (img.height, img.width) if bands == 1 else (img.height, img.width, bands)
            return _swap_sides(shape, _pil_orientation(img))
    except DataReadError:
        raise
    except Exception as exc:
        raise DataReadError(path, f"unreadable header ({type(exc).__name__}: {exc})") from None


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS, mask: bool = False) -> np.ndarray:
    """Decode ``path`` into a numpy array of what a viewer shows (see the module docstring).

    Args:
        path: the file.
        max_pixels: refuse larger files by their header.
        mask: read a label map: palette indices are its labels and are kept as stored.

    Raises:
        DataReadError: unknown extension, unreadable/truncated file, zero-size, degenerate or
            oversized image (:func:`check_shape`).
    """
    path = Path(path)
    ext = split_ext(path)[1]
    if ext not in IMAGE_EXTENSIONS:
        raise DataReadError(path, f"unsupported file type {ext!r}; use one of {', '.join(IMAGE_EXTENSIONS)}")
    check_shape(path, image_shape(path, mask=mask), max_pixels)
    try:
        if ext in NIFTI_EXTENSIONS:
            import nibabel as nib

            arr = np.asanyarray(nib.load(str(path)).dataobj)
        elif ext in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                arr = orient(tif.asarray(), _tiff_orientation(tif))
        else:
            from PIL import Image

            with Image.open(path) as img:
                orientation = _pil_orientation(img)  # before decoding, as image_shape saw it
                arr = orient(_pil_pixels(img, mask), orientation)
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
