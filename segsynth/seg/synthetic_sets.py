"""Synthetic sets as segmentation training reads them: a dataset folder plus, per sample, the real
layout it was drawn from (from ``manifest.jsonl``), checked against the real data before use.

:func:`load_synthetic_set` refuses a set whose samples could have been drawn from validation or test
masks unless the caller declares its layouts independent; :meth:`SyntheticTrainingSet.without_layouts`
drops the samples of held-out layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segsynth.artifacts.manifest import read_manifest
from segsynth.artifacts.names import DATASET_JSON, MANIFEST_JSONL
from segsynth.artifacts.schemas import ManifestRecord
from segsynth.data.format import DatasetFormatError
from segsynth.data.io import name_key, split_ext
from segsynth.data.loader import SegDataset

@dataclass
class SyntheticTrainingSet:
    """A synthetic dataset folder plus, per sample, the real sample id its layout came from.

    Attributes:
        root: the folder (dataset.json, images/, masks/, manifest.jsonl).
        dataset: its labelled samples, un-augmented.
        layout_ids: ``layout_ids[i]`` for ``dataset.refs[i]``; ``None`` for composed layouts or
            images the manifest does not describe.
        has_manifest: whether ``manifest.jsonl`` exists (without it no sample can be paired or
            checked for leakage).
        layout_sources: per sample, how its layout was made (``augmented``, ``variants``,
            ``composed``; ``None`` when the manifest does not say).
    """

    root: Path
    dataset: SegDataset
    layout_ids: list[str | None]
    has_manifest: bool
    layout_sources: list[str | None]
    excluded: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dataset)

    def without_layouts(self, forbidden: set[str]) -> SyntheticTrainingSet:
        """A copy without the samples whose layout was drawn from a ``forbidden`` real id.

        Used to keep synthetic images made from validation or test masks out of training.
        """
        keep = [i for i, lid in enumerate(self.layout_ids) if lid not in forbidden]
        dropped = [self.dataset.refs[i].id for i in range(len(self)) if self.layout_ids[i] in forbidden]
        dataset = SegDataset(self.root, refs=[self.dataset.refs[i] for i in keep])
        return SyntheticTrainingSet(
            self.root, dataset, [self.layout_ids[i] for i in keep], self.has_manifest,
            [self.layout_sources[i] for i in keep], dropped,
        )


def records_by_image(root: Path) -> dict[str, ManifestRecord] | None:
    """Records of ``root/manifest.jsonl`` keyed by the stem of their ``image`` path (None if absent).

    Parsed by the one manifest parser (:func:`segsynth.artifacts.manifest.read_manifest`), so a manifest
    train-seg accepts is exactly one ``generate`` could have written; this adds what pairing images
    with their records needs: each id and each image appears once.

    Raises:
        DatasetFormatError: a line that is not a valid record, or two records with one ``id`` or
            one image (naming the file and the line).
    """
    path = root / MANIFEST_JSONL
    if not path.is_file():
        return None
    try:
        records = read_manifest(path)
    except ValueError as exc:
        raise DatasetFormatError(str(exc)) from None
    by_stem: dict[str, ManifestRecord] = {}
    ids: set[str] = set()
    for number, record in enumerate(records, start=1):
        stem = name_key(split_ext(Path(record.image).name)[0])  # the form of the set's sample ids
        if record.id in ids or stem in by_stem:
            what = f"id {record.id!r}" if record.id in ids else f"image {record.image!r}"
            raise DatasetFormatError(f"{path}: line {number}: duplicate {what}; each sample must appear once")
        ids.add(record.id)
        by_stem[stem] = record
    return by_stem


def load_synthetic_set(root: str | Path, real: SegDataset, *, layouts_independent: bool = False) -> SyntheticTrainingSet:
    """Open a synthetic set and check it is compatible with the real dataset ``real``.

    Leakage can only be ruled out for samples whose manifest row names the real layout they were
    drawn from (or says it was composed, from no real mask). A set without ``manifest.jsonl``, or
    with samples it does not account for so, is refused: its images may have been drawn from
    validation or test masks, and nothing could tell.

    Args:
        root: the synthetic set's folder.
        real: the real training data.
        layouts_independent: the caller declares that the set's layouts do not come from this real
            data (made elsewhere or by hand); then unaccounted samples are used as they are.

    Raises:
        DatasetFormatError: different labels or channel count than the real data, no samples, or
            (without ``layouts_independent``) a missing manifest or samples without a layout.
    """
    root = Path(root)
    dataset = SegDataset(root)
    spec_path = root / DATASET_JSON
    if dataset.spec.labels != real.spec.labels:
        raise DatasetFormatError(f"{spec_path}: labels {dataset.spec.labels} differ from the real data's {real.spec.labels}")
    if dataset.spec.channels != real.spec.channels:
        raise DatasetFormatError(
            f"{spec_path}: {dataset.spec.channels} channels, the real data has {real.spec.channels}"
        )
    if len(dataset) == 0:
        raise DatasetFormatError(f"{root}: the synthetic set holds no image/mask pairs")
    manifest = records_by_image(root)
    records = [None if manifest is None else manifest.get(r.id) for r in dataset.refs]
    if not layouts_independent:
        unaccounted = [ref.id for ref, record in zip(dataset.refs, records)
                       if record is None or (record.layout_id is None and record.layout_source != "composed")]
        if manifest is None:
            problem = "missing, so no sample's layout can be checked against the validation and test cases"
        elif unaccounted:
            problem = (f"{len(unaccounted)} sample(s) without a row naming their layout (layout_id), "
                       f"e.g. {unaccounted[:3]}; they may have been drawn from validation or test masks")
        else:
            problem = None
        if problem is not None:
            raise DatasetFormatError(
                f"{root / MANIFEST_JSONL}: {problem}. If the set's layouts are independent of this real data, "
                "declare it explicitly to use it anyway (train-seg --layouts-independent, mix.layouts_independent: true)"
            )
    # in the form of the real sample ids they are compared with (a set written before ids were NFC)
    layout_ids = [None if record is None or record.layout_id is None else name_key(record.layout_id) for record in records]
    sources = [None if record is None else record.layout_source for record in records]
    return SyntheticTrainingSet(root, dataset, layout_ids, manifest is not None, sources)
