"""Dataset fingerprint: what the data looks like, as nnU-Net fingerprints a dataset before planning.

Computing it only reads the dataset: the user's data folder is an input and is never written to.
``segsynth data info`` prints it (and saves it where ``--out`` says, outside the data); the stages
that need it compute it themselves (``segsynth run`` keeps it in its ``plan.json``, composed
layouts measure the composition prior on the masks they use).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segsynth.data.check import require_valid
from segsynth.data.format import DatasetSpec, load_spec
from segsynth.data.io import DataReadError, image_shape, is_nifti, read_image
from segsynth.data.loader import LABEL_HINT, SampleRef, index_dataset
from segsynth.io.atomic import atomic_write_json
from segsynth.io.guard import check_out_apart

FINGERPRINT_VERSION = 1


def _mask_slices(path: Path, num_classes: int) -> Iterator[np.ndarray]:
    """Yield the 2D label maps of one mask file (one per slice of a NIfTI volume) as int64."""
    arr = read_image(path, mask=True)
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataReadError(path, "mask holds non-integer values (run `segsynth data check`)")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = np.setdiff1d(np.unique(arr), np.arange(num_classes)).tolist()
        raise DataReadError(path, f"undeclared label values {bad[:10]}; {LABEL_HINT} (run `segsynth data check`)")
    if arr.ndim == 2:
        yield arr
    elif arr.ndim == 3 and is_nifti(path):
        for z in range(arr.shape[2]):
            yield arr[..., z]
    else:
        raise DataReadError(path, f"mask must be 2D (H, W) or a NIfTI volume, got shape {arr.shape}")


def _stats(values: list[int]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"min": int(arr.min()), "max": int(arr.max()), "median": float(np.median(arr))}


def _per_case(refs: list[SampleRef]) -> dict[str, int]:
    return dict(sorted(Counter(ref.case_id for ref in refs).items()))


def compute_fingerprint(root: Path, spec: DatasetSpec) -> dict[str, Any]:
    """The fingerprint dict of :func:`dataset_info`, without writing anything."""
    labelled = index_dataset(root, "labeled", spec)
    unlabeled = index_dataset(root, "unlabeled", spec)
    if not labelled:
        raise DataReadError(root, "no labelled images: nothing to fingerprint")
    k = spec.num_classes
    per_image: list[np.ndarray] = []
    pooled = np.zeros(k, dtype=np.int64)
    heights: list[int] = []
    widths: list[int] = []
    for mask_path in sorted({ref.mask_path for ref in labelled if ref.mask_path is not None}):
        for label_map in _mask_slices(mask_path, k):
            counts = np.bincount(label_map.ravel(), minlength=k)
            pooled += counts
            per_image.append(counts / label_map.size)
            heights.append(label_map.shape[0])
            widths.append(label_map.shape[1])
    fractions = np.stack(per_image)
    names = spec.class_names
    unlabeled_shapes = [image_shape(path)[:2] for path in sorted({ref.image_path for ref in unlabeled})]
    return {
        "format_version": FINGERPRINT_VERSION,
        "name": spec.name,
        "modality": spec.modality,
        "channels": spec.channels,
        "labels": dict(spec.labels),
        "label_provenance": spec.label_provenance,
        "num_images": len(per_image),
        "num_cases": len({ref.case_id for ref in labelled}),
        "images_per_case": _per_case(labelled),
        "num_unlabeled": len(unlabeled),
        "unlabeled_per_case": _per_case(unlabeled),
        "total_pixels": int(pooled.sum()),
        "class_fractions": {n: float(pooled[i] / pooled.sum()) for i, n in enumerate(names)},
        "per_image_fractions": {
            n: {"mean": float(fractions[:, i].mean()), "std": float(fractions[:, i].std())} for i, n in enumerate(names)
        },
        "class_presence": {n: float((fractions[:, i] > 0).mean()) for i, n in enumerate(names)},
        "image_size": {"height": _stats(heights), "width": _stats(widths)},
        "unlabeled_size": (
            {"height": _stats([s[0] for s in unlabeled_shapes]), "width": _stats([s[1] for s in unlabeled_shapes])}
            if unlabeled_shapes
            else None
        ),
    }


def dataset_info(root: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Compute the dataset fingerprint; save it as the JSON file ``out`` if given (outside ``root``).

    The fingerprint is over 2D samples (NIfTI volumes count one sample per slice). Keys:

    - ``format_version``, ``name``, ``modality``, ``channels``, ``labels`` ({name: value}),
      ``label_provenance``: copied from ``dataset.json``.
    - ``num_images``, ``num_cases``, ``images_per_case`` ({case: n}), ``num_unlabeled``,
      ``unlabeled_per_case``: counts of labelled and unlabelled 2D samples.
    - ``total_pixels``: labelled pixels counted.
    - ``class_fractions`` ({name: float}): pixel fraction of each class pooled over all labelled
      pixels: the tissue-composition prior that layout generation samples from.
    - ``per_image_fractions`` ({name: {"mean", "std"}}): mean and population std over images of
      each image's class fraction (how much composition varies between images).
    - ``class_presence`` ({name: float}): fraction of images containing the class at all.
    - ``image_size``: ``{"height": {"min", "max", "median"}, "width": {...}}`` of labelled samples;
      ``unlabeled_size`` the same for ``unlabeled/`` (``None`` when there is none).

    Args:
        root: dataset folder (run ``segsynth data check`` first; bad masks raise ``DataReadError``).
        out: a JSON file to write the fingerprint to (atomically); it must lie outside ``root``.
            Nothing else is written.

    Returns:
        The fingerprint dict.

    Raises:
        OutputPathError: ``out`` is or lies inside ``root``.
    """
    root = Path(root)
    if out is not None:
        check_out_apart(out, [root])
    fingerprint = compute_fingerprint(root, load_spec(root))
    require_valid(root)  # what the fingerprint does not read (unlabelled case ids, orphan masks) too
    if out is not None:
        atomic_write_json(out, fingerprint)
    return fingerprint
