"""nnU-Net v2 raw datasets: import them as dataset folders, and export ours so nnU-Net trains unchanged.

nnU-Net raw layout: ``dataset.json`` (``channel_names``, ``labels``, ``numTraining``,
``file_ending``), ``imagesTr/<case>_<CCCC><ending>`` (one file per channel, ``_0000`` first) and
``labelsTr/<case><ending>``. nnU-Net splits by case identifier; a 2D export of slices or tiles
would leak a patient into both train and validation, so exports also write ``splits_final.json``
with folds built from *our* case ids, and a synthetic case trains only in the folds where the real
case its layout came from trains. nnU-Net reads that file from its preprocessed folder: copy it to
``nnUNet_preprocessed/DatasetXXX_Name/splits_final.json`` after ``nnUNetv2_plan_and_preprocess``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segsynth.artifacts.names import IMAGES_DIR, MANIFEST_JSONL, MASKS_DIR, NNUNET_IMAGES_DIR, NNUNET_LABELS_DIR
from segsynth.data.check import require_valid
from segsynth.data.export import Unit, iter_units, write_unit_image
from segsynth.data.format import DatasetFormatError, DatasetSpec, load_spec, save_spec
from segsynth.data.io import (
    NIFTI_EXTENSIONS,
    DataReadError,
    image_shape,
    is_nifti,
    name_key,
    read_image,
    require_regular_file,
    split_ext,
    write_image,
)
from segsynth.data.loader import index_dataset
from segsynth.io.atomic import atomic_directory, atomic_write_bytes, atomic_write_json
from segsynth.io.guard import NNUNET_RAW, check_out_apart, check_replaceable
from segsynth.io.json_file import read_json_object

NNUNET_JSON = "dataset.json"
NNUNET_IMAGES = NNUNET_IMAGES_DIR
NNUNET_LABELS = NNUNET_LABELS_DIR
NNUNET_SPLITS_JSON = "splits_final.json"
SYNTHETIC_PREFIX = "syn_"
#: Key under which an export records our case id of every nnU-Net case (nnU-Net ignores it).
CASES_KEY = "segsynth_cases"
SUPPORTED_ENDINGS = (".png", ".tif", ".tiff", ".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# --- import ----------------------------------------------------------------------------------
def read_nnunet_json(src: Path) -> dict[str, Any]:
    """Read and validate ``src/dataset.json`` of an nnU-Net v2 raw dataset."""
    path = src / NNUNET_JSON
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing (not an nnU-Net raw dataset folder)")
    meta = read_json_object(path, DatasetFormatError)
    if "modality" in meta or "training" in meta:
        raise DatasetFormatError(
            f"{path}: nnU-Net v1 dataset.json; convert it first with nnUNetv2_convert_old_nnUNet_dataset"
        )
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            raise DatasetFormatError(f"{path}: key {key!r} is missing")
    labels = meta["labels"]
    if not isinstance(labels, dict) or not labels:
        raise DatasetFormatError(f"{path}: key 'labels' must be a non-empty object")
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise DatasetFormatError(
                f"{path}: label {name!r} is a region ({value}); region-based training (overlapping labels) "
                "is not supported, convert it to one label per pixel first"
            )
        if not isinstance(value, int) or isinstance(value, bool):
            raise DatasetFormatError(f"{path}: label {name!r} must be an integer, got {value!r}")
    if "ignore" in labels:
        raise DatasetFormatError(f"{path}: the 'ignore' label (partial annotations) is not supported")
    if not isinstance(meta["channel_names"], dict) or not meta["channel_names"]:
        raise DatasetFormatError(f"{path}: key 'channel_names' must be a non-empty object")
    if meta["file_ending"] not in SUPPORTED_ENDINGS:
        raise DatasetFormatError(
            f"{path}: file_ending {meta['file_ending']!r} is not supported; convert to one of {', '.join(SUPPORTED_ENDINGS)}"
        )
    return meta


def _require_file(path: Path) -> None:
    """Refuse a folder, FIFO or device named like an image before the copy opens it."""
    if path.is_dir():
        raise DataReadError(path, "is a folder, not an image file; move it out of the folder", kind="unexpected_entry")
    require_regular_file(path)  # a FIFO would block the copy forever


def _channel_files(src: Path, ending: str) -> dict[str, dict[int, Path]]:
    """Identifier -> {channel index: file} for every image in ``imagesTr``."""
    folder = src / NNUNET_IMAGES
    if not folder.is_dir():
        raise DatasetFormatError(f"{folder}: missing")
    found: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending):
            continue
        _require_file(path)
        match = _CHANNEL_FILE.match(name_key(path.name[: -len(ending)]))
        if match is None:
            raise DatasetFormatError(f"{path}: image names must end in _<4-digit channel>{ending}, e.g. case_0000{ending}")
        found[match["case"]][int(match["channel"])] = path
    return dict(found)


def _case_ids(identifiers: list[str], pattern: str | None, recorded: dict[str, str], src: Path) -> dict[str, str]:
    if pattern is None:
        return {ident: recorded.get(ident, ident) for ident in identifiers}
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"case pattern {pattern!r} is not a valid regex ({exc})") from None
    if regex.groups < 1:
        raise ValueError(f"case pattern {pattern!r} must capture the case id in a group, e.g. '(.+?)_slice'")
    cases = {}
    for ident in identifiers:
        match = regex.match(ident)
        case = (match.groupdict().get("case") or match.group(1)) if match else None
        if not case:
            raise DatasetFormatError(f"{src / NNUNET_IMAGES}: case identifier {ident!r} does not match {pattern!r}")
        cases[ident] = case
    return cases


def _stack_channels(ident: str, files: dict[int, Path], num_channels: int) -> tuple[np.ndarray | None, Path]:
    """The image of one case as stored in our format: ``(None, file)`` when the single file can be
    copied verbatim, else the channels stacked on the last axis ``(H, W, C)``."""
    if sorted(files) != list(range(len(files))):
        raise DatasetFormatError(f"{files[min(files)]}: channels of {ident!r} are {sorted(files)}, expected 0..N-1")
    counts = []
    for path in files.values():
        shape = image_shape(path)
        counts.append(1 if is_nifti(path) or len(shape) == 2 else shape[-1])
    if sum(counts) != num_channels:
        raise DatasetFormatError(
            f"{files[0]}: case {ident!r} has {sum(counts)} channel(s), dataset.json channel_names lists {num_channels}"
        )
    if len(files) == 1:
        return None, files[0]
    if is_nifti(files[0]):
        raise DatasetFormatError(f"{files[0]}: multi-channel NIfTI volumes are not supported (NIfTI here is single-channel)")
    arrays = [read_image(files[c]) for c in range(len(files))]
    return np.stack(arrays, axis=-1), files[0]


def import_nnunet(
    src: str | Path,
    out: str | Path,
    case_pattern: str | None = None,
    prompt: str | None = None,
    label_provenance: Literal["human", "derived"] = "human",
    derivation: str | None = None,
    overwrite: bool = False,
) -> DatasetSpec:
    """Turn an nnU-Net v2 raw dataset (``imagesTr``/``labelsTr``) into a dataset folder.

    Single-file cases are copied byte for byte; multi-channel cases (``_0000``..``_000N``) are
    stacked into one ``(H, W, C)`` file (PNG for 8-bit data, TIFF otherwise).

    Args:
        src: the nnU-Net raw dataset folder (``DatasetXXX_Name``).
        out: dataset folder to create (atomically: complete or absent).
        case_pattern: regex matched at the start of each case identifier whose first group (or
            group ``case``) is the patient id, e.g. ``r"(patient\\d+)_"``; default: the identifier
            (or the case id recorded by :func:`export_nnunet`).
        prompt: text prompt; default ``"<name>, <channel names>"``.
        label_provenance: ``"human"`` annotations (nnU-Net's usual case) or ``"derived"``.
        derivation: recipe, required when ``label_provenance`` is ``"derived"``.
        overwrite: replace an existing ``out`` that holds a dataset folder (nothing else).

    Returns:
        The written ``dataset.json`` contents.

    Raises:
        DatasetFormatError: missing files, region labels, unsupported file ending, bad names.
    """
    src = Path(src)
    check_out_apart(out, [src])
    check_replaceable(out, "dataset", overwrite)
    meta = read_nnunet_json(src)
    ending = meta["file_ending"]
    num_channels = len(meta["channel_names"])
    images = _channel_files(src, ending)
    labels_dir = src / NNUNET_LABELS
    labels = {name_key(p.name[: -len(ending)]): p for p in sorted(labels_dir.glob(f"*{ending}"))} if labels_dir.is_dir() else {}
    for label_path in labels.values():
        _require_file(label_path)
    if not images:
        raise DatasetFormatError(f"{src / NNUNET_IMAGES}: no *_0000{ending} images")
    if missing := sorted(set(images) - set(labels)):
        raise DatasetFormatError(f"{labels_dir}: no label for case(s) {missing[:10]}")
    if extra := sorted(set(labels) - set(images)):
        raise DatasetFormatError(f"{src / NNUNET_IMAGES}: no image for label(s) {extra[:10]}")
    if "numTraining" in meta and meta["numTraining"] != len(images):
        raise DatasetFormatError(f"{src / NNUNET_JSON}: numTraining is {meta['numTraining']} but {len(images)} cases exist")
    recorded = meta.get(CASES_KEY) if isinstance(meta.get(CASES_KEY), dict) else {}
    recorded = {name_key(str(ident)): case for ident, case in recorded.items()}
    cases = _case_ids(sorted(images), case_pattern, recorded, src)
    name = str(meta.get("name") or src.name)
    modality = ", ".join(dict.fromkeys(str(v) for v in meta["channel_names"].values()))
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for ident in sorted(images):
            stacked, first = _stack_channels(ident, images[ident], num_channels)
            if stacked is None:
                atomic_write_bytes(tmp / IMAGES_DIR / f"{ident}{ending}", first.read_bytes())
            else:
                stacked_ext = ".png" if stacked.dtype == np.uint8 and num_channels <= 4 else ".tif"
                write_image(tmp / IMAGES_DIR / f"{ident}{stacked_ext}", stacked)
            atomic_write_bytes(tmp / MASKS_DIR / f"{ident}{ending}", labels[ident].read_bytes())
        spec = DatasetSpec(
            name=name,
            description=str(meta.get("description", "")),
            modality=modality,
            prompt=prompt or str(meta.get("segsynth_prompt") or f"{name}, {modality}"),
            channels=num_channels,
            labels=meta["labels"],
            label_provenance=label_provenance,
            derivation=derivation,
            licence=str(meta.get("licence") or meta.get("license") or "not stated in the nnU-Net dataset.json"),
            source=f"nnU-Net raw dataset {src.name}" + (f"; {meta['reference']}" if meta.get("reference") else ""),
            cases=cases,
        )
        save_spec(tmp, spec)
    return spec


# --- export ----------------------------------------------------------------------------------
def case_folds(cases: list[str], num_folds: int, seed: int) -> list[set[str]]:
    """Split case ids into ``num_folds`` groups, shuffled by ``seed``: the validation cases of each fold."""
    ordered = sorted(cases)
    order = np.random.default_rng(seed).permutation(len(ordered))
    folds: list[set[str]] = [set() for _ in range(num_folds)]
    for rank, index in enumerate(order):
        folds[rank % num_folds].add(ordered[index])
    return folds


def layout_cases(synthetic: Path, real: Path, real_spec: DatasetSpec) -> dict[str, str | None]:
    """The real case behind every synthetic sample's layout, from the set's ``manifest.jsonl``.

    Returns:
        Synthetic image stem -> the case id in ``real`` of the sample its layout was drawn from
        (``layout_id``), or None for a composed layout, which is drawn from the dataset's class
        fractions and no real mask, so it belongs to no case.

    Raises:
        ValueError: the set has no manifest, or a layout came from a sample ``real`` does not hold
            (the set was made from other data): either way no fold could be kept free of leakage.
    """
    # Imported here: the segsynth.synth package loads the generator (diffusers), which import-nnunet
    # and plain exports never need.
    from segsynth.artifacts.manifest import read_manifest

    path = synthetic / MANIFEST_JSONL
    if not path.is_file():
        raise ValueError(
            f"{path}: missing; without it the real case behind each synthetic layout is unknown and "
            "splits_final.json would leak validation cases into training (export a set made by `segsynth generate`)"
        )
    case_of_sample = {ref.id: ref.case_id for ref in index_dataset(real, "labeled", real_spec)}
    cases: dict[str, str | None] = {}
    for record in read_manifest(path):
        if record.layout_id is not None and record.layout_id not in case_of_sample:
            raise ValueError(
                f"{path}: sample {record.id!r} has its layout from {record.layout_id!r}, which is not a labelled "
                f"sample of {real}; merge the synthetic set with the real dataset it was generated from"
            )
        cases[split_ext(Path(record.image))[0]] = case_of_sample.get(record.layout_id) if record.layout_id else None
    return cases


def fold_splits(
    real_cases: dict[str, list[str]], synthetic_cases: dict[str, str | None], num_folds: int, seed: int
) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json``: folds over the real cases, synthetic identifiers in training only.

    Args:
        real_cases: real case id -> its nnU-Net identifiers.
        synthetic_cases: synthetic identifier -> the real case its layout came from (None: composed,
            independent of every case, so it trains in every fold).
        num_folds: number of folds (at most one per real case).
        seed: shuffles the real cases into folds.

    Returns:
        One ``{"train": [...], "val": [...]}`` per fold. A synthetic identifier is in a fold's
        ``train`` only when its layout's case is too, so no validation case is seen through
        the synthetic images made from its masks.
    """
    splits = []
    for val_cases in case_folds(list(real_cases), num_folds, seed):
        train = [ident for case, idents in real_cases.items() if case not in val_cases for ident in idents]
        train += [ident for ident, case in synthetic_cases.items() if case not in val_cases]
        val = [ident for case in val_cases for ident in real_cases[case]]
        splits.append({"train": sorted(train), "val": sorted(val)})
    return splits


def _write_case(tmp: Path, ident: str, unit: Unit, ending: str) -> None:
    image = unit.image
    whole_volume = is_nifti(unit.source) and ending in NIFTI_EXTENSIONS
    channels = [image] if whole_volume or image.ndim == 2 else [image[..., c] for c in range(image.shape[-1])]
    for c, channel in enumerate(channels):
        write_unit_image(tmp / NNUNET_IMAGES / f"{ident}_{c:04d}{ending}", np.ascontiguousarray(channel), unit.source)
    write_unit_image(tmp / NNUNET_LABELS / f"{ident}{ending}", unit.mask, unit.source)


def export_nnunet(
    src: str | Path,
    out: str | Path,
    merge_real: str | Path | None = None,
    file_ending: str = ".png",
    num_folds: int = 5,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the labelled part of dataset ``src`` as an nnU-Net v2 raw dataset at ``out``.

    One function on purpose: every case, ``dataset.json`` and the folds are written inside one
    atomic directory from the case maps its loop fills, so the export appears whole or not at all.

    With ``merge_real``, the real dataset's cases are written as they are and the cases of ``src``
    (synthetic) get the ``syn_`` prefix; ``splits_final.json`` then holds folds over the *real*
    cases only. A synthetic case is never in a ``val`` list, and is in a fold's ``train`` list only
    when the real case its layout came from (``src/manifest.jsonl`` ``layout_id``) trains in that
    fold; composed layouts (no ``layout_id``) come from no real mask and train in every fold. The
    generator and the style references may still have seen every real case: for a strictly clean
    cross-validation, generate one synthetic set per fold from that fold's training cases.

    nnU-Net reads the splits from its preprocessed folder, not from the raw one: after
    ``nnUNetv2_plan_and_preprocess -d XXX``, copy ``out/splits_final.json`` to
    ``nnUNet_preprocessed/DatasetXXX_Name/splits_final.json`` (without it nnU-Net makes its own
    random folds over all cases, synthetic ones included).

    Args:
        src: dataset folder (usually a synthetic set).
        out: nnU-Net raw dataset folder to create, e.g. ``nnUNet_raw/Dataset501_Name``.
        merge_real: optional real dataset folder to merge with ``src``; ``src`` then needs the
            ``manifest.jsonl`` written by ``segsynth generate``.
        file_ending: ``.png`` (8/16-bit data), ``.tif`` or ``.nii.gz``; NIfTI keeps volumes whole.
        num_folds: folds by case (fewer when there are fewer cases; none for a single case).
        seed: shuffles cases into folds.
        overwrite: replace an existing ``out`` that holds an nnU-Net raw dataset (nothing else).

    Returns:
        Summary: ``{"out", "num_training", "num_real", "num_synthetic", "num_folds"}`` where
        ``num_synthetic`` counts the ``syn_`` cases (zero without ``merge_real``).

    Raises:
        ValueError: bad ``file_ending``/``num_folds``; ``src`` and ``merge_real`` differ in labels or
            channels; ``src`` has no manifest or was made from another dataset (:func:`layout_cases`).
    """
    if file_ending not in (".png", ".tif", ".nii.gz"):
        raise ValueError(f"file_ending must be '.png', '.tif' or '.nii.gz', got {file_ending!r}")
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    src = Path(src)
    check_out_apart(out, [src, merge_real])
    check_replaceable(out, NNUNET_RAW, overwrite)
    require_valid(src)  # what `segsynth data check` refuses is refused here too, with its message
    spec = load_spec(src)
    parts: list[tuple[str, Path, DatasetSpec]] = []
    if merge_real is not None:
        require_valid(merge_real)
        real_spec = load_spec(merge_real)
        if real_spec.labels != spec.labels or real_spec.channels != spec.channels:
            raise ValueError(
                f"{merge_real} and {src} differ in labels ({real_spec.labels} vs {spec.labels}) "
                f"or channels ({real_spec.channels} vs {spec.channels}); they cannot be merged"
            )
        parts.append(("", Path(merge_real), real_spec))
        layout_case = layout_cases(src, Path(merge_real), real_spec)
    parts.append((SYNTHETIC_PREFIX if merge_real is not None else "", src, spec))
    real_cases: dict[str, list[str]] = defaultdict(list)
    case_of: dict[str, str] = {}
    synthetic: dict[str, str | None] = {}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for prefix, root, part_spec in parts:
            for unit in iter_units(root, part_spec, "labeled", keep_volumes=file_ending in NIFTI_EXTENSIONS):
                if not prefix and merge_real is not None and unit.stem.startswith(SYNTHETIC_PREFIX):
                    raise ValueError(f"{unit.source}: real case names must not start with {SYNTHETIC_PREFIX!r}")
                ident = f"{prefix}{unit.stem}"
                _write_case(tmp, ident, unit, file_ending)
                case_of[ident] = f"{prefix}{unit.case_id}"
                if prefix:
                    if unit.stem not in layout_case:
                        raise ValueError(f"{unit.source}: no line in {src}/manifest.jsonl, so its layout's case is unknown")
                    synthetic[ident] = layout_case[unit.stem]
                else:
                    real_cases[case_of[ident]].append(ident)
        channel_names = {str(c): spec.modality if c == 0 else f"{spec.modality} (channel {c})" for c in range(spec.channels)}
        meta = {
            "name": spec.name,
            "description": spec.description,
            "channel_names": channel_names,
            "labels": dict(sorted(spec.labels.items(), key=lambda item: item[1])),
            "numTraining": len(case_of),
            "file_ending": file_ending,
            "licence": spec.licence,
            "reference": spec.source,
            "segsynth_prompt": spec.prompt,
            CASES_KEY: case_of,
        }
        atomic_write_json(tmp / NNUNET_JSON, meta)
        folds = min(num_folds, len(real_cases))
        if folds >= 2:
            atomic_write_json(tmp / NNUNET_SPLITS_JSON, fold_splits(real_cases, synthetic, folds, seed))
    return {
        "out": str(out),
        "num_training": len(case_of),
        "num_real": len(case_of) - len(synthetic),
        "num_synthetic": len(synthetic),
        "num_folds": folds if folds >= 2 else 0,
    }
