"""Validate a dataset folder and report *every* problem, each with its file and a stable kind code.

The checker is read-only (it never writes, renames or touches a file) and reads each image in two
steps: the header first (shape, without decoding pixels) and only then the pixels, so an oversized
file is refused by its header and a symlink leaving the folder is never followed.

Problem kinds (``Problem.kind``):

=========================  =======  ==============================================================
kind                       level    meaning
=========================  =======  ==============================================================
``not_a_folder``           error    the dataset root does not exist or is not a directory
``missing_dataset_json``   error    no ``dataset.json``
``invalid_dataset_json``   error    ``dataset.json`` is not JSON or a key is missing/invalid (named)
``label_zero_not_bg``      error    label value 0 is absent or not named background
``labels_not_consecutive`` error    label values are not unique and consecutive 0..K-1
``empty_dataset``          error    ``images/`` holds no image
``unsupported_file``       error    a file type that cannot be read (or a lossy JPEG mask)
``duplicate_stem``         error    two files share a stem (``a.png`` and ``a.tif``, or two Unicode spellings)
``special_file``           error    a FIFO, socket or device file (refused by name, never opened)
``symlink_outside``        error    a symlink pointing outside the dataset folder (not followed)
``missing_mask``           error    an image without a mask of the same stem
``extra_mask``             error    a mask without an image of the same stem
``missing_case_id``        error    an image whose stem has no case id in ``dataset.json``
``unreadable``             error    a file that cannot be decoded (corrupt or truncated)
``too_large``              error    more than :data:`~segsynth.data.io.MAX_PIXELS` pixels (by header)
``too_small``              error    a side under :data:`~segsynth.data.io.MIN_SIDE` pixels (1x1, 10000x1)
``bad_dims``               error    image not ``(H, W)``/``(H, W, C)``/NIfTI ``(X, Y[, Z])``; mask not 2D;
                                    a multi-page TIFF
``channel_mismatch``       error    an image's channel count differs from ``dataset.json``
``non_finite``             error    NaN or inf pixels in an image
``non_integer_mask``       error    a mask holding fractional (or non-finite) values
``undeclared_label``       error    a mask value that is not a declared label
``shape_mismatch``         error    image and mask spatial shapes differ (after EXIF orientation)
``stale_case_id``          warning  a case id entry for a stem with no file
``unused_label``           warning  a declared label that appears in no mask
``unexpected_entry``       warning  a sub-folder inside ``images/``, ``masks/`` or ``unlabeled/``
``constant_image``         warning  every pixel of an image has the same value
``exif_orientation``       warning  a file is read rotated or mirrored by its EXIF orientation, as
                                    viewers show it; its pair must be drawn on the shown image
=========================  =======  ==============================================================

File names and ``dataset.json`` keys are compared in Unicode NFC (:func:`~segsynth.data.io.name_key`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from segsynth.artifacts.names import DATASET_JSON, IMAGES_DIR, MASKS_DIR, UNLABELED_DIR
from segsynth.data.format import DatasetFormatError, DatasetSpec
from segsynth.data.loader import LABEL_HINT, is_inside
from segsynth.data.io import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    DataReadError,
    ORIENTATIONS,
    check_shape,
    file_orientation,
    image_shape,
    is_nifti,
    name_key,
    read_image,
    require_regular_file,
    split_ext,
)
from segsynth.io.json_file import read_json_object

Severity = Literal["error", "warning"]

#: Raster images hold at most this many channels in their last axis; more means a slice stack.
MAX_RASTER_CHANNELS = 4


@dataclass(frozen=True)
class Problem:
    """One finding: ``file`` is relative to the dataset root (``"."`` for the folder itself)."""

    severity: Severity
    file: str
    kind: str
    message: str


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found, plus what it counted.

    Attributes:
        root: the checked folder.
        problems: every problem, errors and warnings, in discovery order.
        counts: ``{"images", "masks", "unlabeled", "samples", "unlabeled_samples"}`` (files, and 2D
            samples after expanding NIfTI volumes into slices).
    """

    root: Path
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``segsynth data check --json`` prints)."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "num_errors": len(self.errors),
            "num_warnings": len(self.warnings),
            "counts": dict(self.counts),
            "problems": [asdict(p) for p in self.problems],
        }


@dataclass
class _SpecView:
    """What could be salvaged from ``dataset.json`` (``None`` where the key was unusable), so file
    checks still run when the spec itself is broken."""

    labels: dict[str, int] | None = None
    channels: int | None = None
    cases: dict[str, str] | None = None
    unlabeled_cases: dict[str, str] | None = None


class _Checker:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.report = CheckReport(root=root)
        self.seen_labels: set[int] = set()
        self.orientations: dict[Path, int] = {}  # files read under an EXIF orientation other than 1

    def add(self, severity: Severity, path: Path | str, kind: str, message: str) -> None:
        self.report.problems.append(Problem(severity, self._rel(path), kind, message))

    def _rel(self, path: Path | str) -> str:
        path = Path(path)
        try:
            return path.relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(path)

    # --- dataset.json -----------------------------------------------------------------------
    def check_spec(self) -> _SpecView:
        path = self.root / DATASET_JSON
        view = _SpecView()
        if not path.is_file():
            self.add("error", path, "missing_dataset_json", "missing: every dataset folder needs a dataset.json")
            return view
        try:
            data = read_json_object(path, DatasetFormatError)  # the reader of every command
        except DatasetFormatError as exc:
            self.add("error", path, "invalid_dataset_json", str(exc).removeprefix(f"{path}: "))
            return view
        labels = data.get("labels")
        labels_reported = False
        if isinstance(labels, dict) and labels and all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
            view.labels = dict(labels)  # the declared values, even if badly numbered
            labels_reported = self._check_labels(path, view.labels)
        channels = data.get("channels")
        if isinstance(channels, int) and not isinstance(channels, bool) and 1 <= channels <= MAX_RASTER_CHANNELS:
            view.channels = channels
        for key in ("cases", "unlabeled_cases"):
            value = data.get(key, {} if key == "unlabeled_cases" else None)
            if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
                setattr(view, key, {name_key(k): name_key(v) for k, v in value.items() if v})
        try:
            DatasetSpec.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = [str(part) for part in err["loc"]]
                if loc == ["labels"] and labels_reported:
                    continue  # already reported with a specific kind
                key = ".".join(loc) or "<root>"
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                self.add("error", path, "invalid_dataset_json", f"key {key!r}: {msg}")
        return view

    def _check_labels(self, path: Path, labels: dict[str, int]) -> bool:
        """Report label-map problems with their own kinds; True when any was reported."""
        values = sorted(labels.values())
        by_value = {v: k for k, v in labels.items()}
        reported = False
        if 0 not in by_value or by_value[0].lower() not in {"background", "bg"}:
            found = f"{by_value[0]!r}" if 0 in by_value else "absent"
            self.add("error", path, "label_zero_not_bg", f"label 0 must exist and be named 'background' (found {found})")
            reported = True
        if values != list(range(len(values))):
            self.add(
                "error", path, "labels_not_consecutive", f"label values must be unique and consecutive 0..K-1, got {values}"
            )
            reported = True
        return reported

    # --- folder listing -----------------------------------------------------------------------
    def list_folder(self, name: str, allowed: tuple[str, ...], role: str) -> dict[str, Path]:
        """Stem -> file for one sub-folder, reporting symlinks out, unsupported types and duplicates."""
        folder = self.root / name
        if not folder.is_dir():
            return {}
        by_stem: dict[str, list[Path]] = {}
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                try:
                    inside = is_inside(entry, self.root)
                except DataReadError as exc:
                    self.add("error", entry, exc.kind, exc.problem)
                    continue
                if not inside:
                    self.add("error", entry, "symlink_outside", f"symlink to {entry.resolve()} leaves the dataset folder")
                    continue
            if entry.is_dir():
                self.add("warning", entry, "unexpected_entry", f"sub-folder inside {name}/ is ignored")
                continue
            try:
                require_regular_file(entry)  # by stat alone: opening a FIFO would wait forever
            except DataReadError as exc:
                self.add("error", entry, exc.kind, exc.problem)
                continue
            stem, ext = split_ext(entry)
            stem = name_key(stem)
            if ext not in allowed:
                hint = " (lossy JPEG cannot hold exact labels)" if role == "mask" and ext in IMAGE_EXTENSIONS else ""
                self.add("error", entry, "unsupported_file", f"unsupported {role} type {ext!r}{hint}; use one of {', '.join(allowed)}")
                continue
            by_stem.setdefault(stem, []).append(entry)
        stems: dict[str, Path] = {}
        for stem, paths in by_stem.items():
            if len(paths) > 1:
                names = ", ".join(p.name for p in paths)
                for p in paths:
                    self.add("error", p, "duplicate_stem", f"stem {stem!r} is used by several files ({names})")
                continue
            stems[stem] = paths[0]
        return stems

    # --- one file ---------------------------------------------------------------------------
    def header(self, path: Path, mask: bool = False) -> tuple[int, ...] | None:
        """Shape from the header (as read: after the EXIF orientation, which is reported), or None
        after reporting why the pixels must not be read."""
        try:
            shape = image_shape(path, mask=mask)
            check_shape(path, shape)  # the same limits read_image applies for every command
            orientation = file_orientation(path)
        except DataReadError as exc:
            self.add("error", path, exc.kind, exc.problem)
            return None
        if orientation != 1:
            self.orientations[path] = orientation
            self.add("warning", path, "exif_orientation", f"read {ORIENTATIONS[orientation]} as viewers show it "
                     f"(EXIF orientation {orientation}); masks must line up with the image as shown")
        return shape

    def decode(self, path: Path, mask: bool = False) -> np.ndarray | None:
        try:
            return read_image(path, mask=mask)
        except DataReadError as exc:
            self.add("error", path, exc.kind, exc.problem)
            return None

    def check_image(self, path: Path, channels: int | None) -> tuple[int, ...] | None:
        """Check one image; return its spatial shape when it is usable."""
        shape = self.header(path)
        if shape is None:
            return None
        if is_nifti(path):
            if len(shape) not in (2, 3):
                self.add("error", path, "bad_dims", f"NIfTI images must be (X, Y) or (X, Y, Z) single-channel, got {shape}")
                return None
            spatial, found = shape, 1
        else:
            if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] > MAX_RASTER_CHANNELS):
                self.add(
                    "error", path, "bad_dims",
                    f"expected (H, W) or (H, W, C<={MAX_RASTER_CHANNELS}), got {shape}; a slice stack belongs in NIfTI",
                )
                return None
            spatial, found = shape[:2], (1 if len(shape) == 2 else shape[2])
        if channels is not None and found != channels:
            self.add("error", path, "channel_mismatch", f"has {found} channel(s), dataset.json declares {channels}")
        arr = self.decode(path)
        if arr is None:
            return None
        if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            if bad:
                self.add("error", path, "non_finite", f"{bad} NaN/inf pixel(s)")
                return spatial
        if arr.size and arr.min() == arr.max():
            self.add("warning", path, "constant_image", f"every pixel is {arr.flat[0]!r}: the image carries no content "
                     "(16-bit and float images are rescaled to their own range, so this one trains as all black)")
        return spatial

    def check_mask(self, path: Path, labels: dict[str, int] | None) -> tuple[int, ...] | None:
        """Check one mask; return its spatial shape when it is usable."""
        shape = self.header(path, mask=True)
        if shape is None:
            return None
        allowed_dims = (2, 3) if is_nifti(path) else (2,)
        if len(shape) not in allowed_dims:
            kind = "(X, Y) or (X, Y, Z)" if is_nifti(path) else "2D (H, W) with one label value per pixel"
            self.add("error", path, "bad_dims", f"mask must be {kind}, got {shape}")
            return None
        arr = self.decode(path, mask=True)
        if arr is None:
            return None
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
            finite = np.isfinite(arr)
            fractional = int(np.count_nonzero(~finite) + np.count_nonzero(arr[finite] != np.round(arr[finite])))
            if fractional:
                self.add("error", path, "non_integer_mask", f"{fractional} pixel(s) hold non-integer values ({arr.dtype})")
                return shape
        values = np.unique(arr).astype(np.int64)
        self.seen_labels.update(int(v) for v in values)
        if labels is not None:
            declared = np.array(sorted(labels.values()))
            bad = np.setdiff1d(values, declared)
            if bad.size:
                self.add(
                    "error", path, "undeclared_label",
                    f"values {bad.tolist()[:10]} are not declared labels {sorted(labels.values())}; {LABEL_HINT}",
                )
        return shape

    @staticmethod
    def num_samples(path: Path, spatial: tuple[int, ...]) -> int:
        return spatial[2] if is_nifti(path) and len(spatial) == 3 else 1

    # --- the whole folder -------------------------------------------------------------------
    def run(self) -> CheckReport:
        if not self.root.is_dir():
            self.add("error", self.root, "not_a_folder", "dataset folder does not exist or is not a directory")
            return self.report
        view = self.check_spec()
        images = self.list_folder(IMAGES_DIR, IMAGE_EXTENSIONS, "image")
        masks = self.list_folder(MASKS_DIR, MASK_EXTENSIONS, "mask")
        unlabeled = self.list_folder(UNLABELED_DIR, IMAGE_EXTENSIONS, "image")
        counts = {"images": len(images), "masks": len(masks), "unlabeled": len(unlabeled), "samples": 0, "unlabeled_samples": 0}
        self.report.counts = counts
        if not images:
            self.add("error", self.root / IMAGES_DIR, "empty_dataset", "no labelled images (the folder is empty or missing)")
        for stem in sorted(set(masks) - set(images)):
            self.add("error", masks[stem], "extra_mask", f"no image with stem {stem!r} in {IMAGES_DIR}/")
        self._check_cases(images, view.cases, "cases")
        self._check_cases(unlabeled, view.unlabeled_cases, "unlabeled_cases")
        for stem, image_path in images.items():
            image_spatial = self.check_image(image_path, view.channels)
            mask_path = masks.get(stem)
            if mask_path is None:
                self.add("error", image_path, "missing_mask", f"no mask with stem {stem!r} in {MASKS_DIR}/")
                continue
            mask_spatial = self.check_mask(mask_path, view.labels)
            if image_spatial is not None and mask_spatial is not None:
                if image_spatial != mask_spatial:
                    self.add("error", mask_path, "shape_mismatch", f"mask shape {mask_spatial} != image shape "
                             f"{image_spatial}{self._orientation_hint(image_path, mask_path)}")
                else:
                    counts["samples"] += self.num_samples(image_path, image_spatial)
        for path in unlabeled.values():
            spatial = self.check_image(path, view.channels)
            if spatial is not None:
                counts["unlabeled_samples"] += self.num_samples(path, spatial)
        if view.labels is not None and masks:
            for name, value in sorted(view.labels.items(), key=lambda item: item[1]):
                if value not in self.seen_labels:
                    self.add("warning", self.root / DATASET_JSON, "unused_label", f"label {name!r} ({value}) appears in no mask")
        return self.report

    def _orientation_hint(self, image: Path, mask: Path) -> str:
        """Why the shapes may differ when one file of the pair carries an EXIF orientation."""
        turned = [(p, self.orientations[p]) for p in (image, mask) if p in self.orientations]
        if not turned:
            return ""
        said = "; ".join(f"{self._rel(p)} is read {ORIENTATIONS[o]} by its EXIF orientation {o}" for p, o in turned)
        return f" ({said}, as viewers show it: the other file was saved in the stored orientation)"

    def _check_cases(self, files: dict[str, Path], cases: dict[str, str] | None, key: str) -> None:
        if cases is None:
            return
        for stem, path in files.items():
            if stem not in cases:
                self.add("error", path, "missing_case_id", f"stem {stem!r} has no case id in dataset.json {key!r}")
        for stem in sorted(set(cases) - set(files)):
            self.add("warning", self.root / DATASET_JSON, "stale_case_id", f"{key}[{stem!r}] names no file")


def check_dataset(root: str | Path) -> CheckReport:
    """Check the dataset folder ``root`` without modifying it.

    Args:
        root: a folder with ``dataset.json``, ``images/``, ``masks/`` and optionally ``unlabeled/``.

    Returns:
        A :class:`CheckReport` listing every problem found (see the module docstring for the kinds).
    """
    return _Checker(Path(root)).run()


def require_valid(root: str | Path) -> None:
    """What every command runs on a dataset folder: :func:`check_dataset`, refusing on an error.

    Raises:
        DataReadError: the first error of the check, naming its file (and how many more there are).
    """
    root = Path(root)
    errors = check_dataset(root).errors
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more; `segsynth data check {root}` lists them)" if len(errors) > 1 else ""
        raise DataReadError(root / first.file, first.message + more, kind=first.kind)
