"""Self-training: a trained network labels unlabelled images, keeping only its confident pixels.

The free alternative to synthetic data that uses the same resource (the unlabelled pool): the
teacher's prediction becomes the label where its softmax maximum reaches ``threshold``; every
other pixel is :data:`segsynth.seg.loss.IGNORE_LABEL` and adds nothing to the loss. A pseudo-
labelled set is a folder next to the data, never inside it::

    SET/pseudo_labels.json   teacher run, data folder, threshold, the labelled image ids and their cases
    SET/labels/<id>.png      the teacher's labels, 255 where it was not confident

The images stay where they are (``DATA/unlabeled/``); :class:`PseudoLabelledSet` reads them with
their labels, so a training run mixes them in like any other source of examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import json

import numpy as np
import torch

from segsynth.artifacts.names import BEST_DIR, PSEUDO_JSON
from segsynth.artifacts.names import PSEUDO_LABELS_DIR as LABELS_DIR
from segsynth.data.format import DatasetFormatError
from segsynth.data.io import read_image, write_image
from segsynth.data.loader import SampleRef, SegDataset, index_dataset
from segsynth.device import inference_device
from segsynth.io.atomic import atomic_directory
from segsynth.seg.loss import IGNORE_LABEL
from segsynth.seg.networks import load_network, predict_logits

#: How an unconfident pixel is stored in ``labels/*.png`` (read back as :data:`IGNORE_LABEL`).
IGNORE_STORED = 255


@torch.no_grad()
def pseudo_label(teacher: str | Path, data: str | Path, ids: Sequence[str], out: str | Path, threshold: float,
                 extra: dict[str, Any] | None = None) -> Path:
    """Label the unlabelled images ``ids`` of ``data`` with the best network of run ``teacher``.

    Args:
        teacher: a finished ``train_seg`` run folder.
        data: the dataset folder whose ``unlabeled/`` holds the images.
        ids: sample ids of ``unlabeled/`` to label (the caller decides which images may be used).
        out: the set's folder, written atomically (it must not exist).
        threshold: smallest softmax maximum that keeps a pixel's label.
        extra: more facts for ``pseudo_labels.json`` (e.g. the images left out and why).

    Raises:
        ValueError: no id, an unknown id, or a threshold outside (0, 1].
    """
    if not ids:
        raise ValueError(f"{out}: no unlabelled image to pseudo-label")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"pseudo-label threshold must be in (0, 1], got {threshold}")
    data, out = Path(data), Path(out)
    by_id = {r.id: r for r in index_dataset(data, "unlabeled")}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise ValueError(f"{data}: unknown unlabelled ids {unknown[:5]}")
    refs = [by_id[i] for i in sorted(ids)]
    dataset = SegDataset(data, "unlabeled", refs=refs)
    model, _, meta = load_network(Path(teacher) / BEST_DIR)
    model.to(inference_device())
    confident = total = 0
    with atomic_directory(out) as tmp:
        for index, ref in enumerate(refs):
            image, _ = dataset.load_arrays(index)
            logits = predict_logits(model, torch.from_numpy(image.copy())[None], meta["divisor"], meta["patch_size"])
            probs = torch.softmax(logits[0], dim=0)
            best, labels = probs.max(dim=0)
            keep = best >= threshold
            stored = torch.where(keep, labels, torch.full_like(labels, IGNORE_STORED)).numpy().astype(np.uint8)
            write_image(tmp / LABELS_DIR / f"{ref.id}.png", stored)
            confident += int(keep.sum())
            total += keep.numel()
        record = {
            "teacher": str(Path(teacher).resolve()), "data_root": str(data.resolve()), "threshold": threshold,
            "ids": [r.id for r in refs], "cases": {r.id: r.case_id for r in refs},
            "confident_fraction": confident / max(1, total), **(extra or {}),
        }
        (tmp / PSEUDO_JSON).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    return out


class PseudoLabelledDataset(SegDataset):
    """The unlabelled images of a pseudo-labelled set with their labels (:data:`IGNORE_LABEL` where
    the teacher was not confident)."""

    def __init__(self, data: Path, refs: list[SampleRef], labels: Path) -> None:
        super().__init__(data, "unlabeled", refs=refs)
        self.labels = labels

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, _ = super().load_arrays(index)
        ref = self.refs[index]
        path = self.labels / f"{ref.id}.png"
        stored = read_image(path).astype(np.int64)
        if stored.shape != image.shape[1:]:
            raise DatasetFormatError(f"{path}: shape {stored.shape} differs from its image {image.shape[1:]}")
        bad = np.setdiff1d(np.unique(stored), [*range(self.spec.num_classes), IGNORE_STORED])
        if bad.size:
            raise DatasetFormatError(f"{path}: label values {bad.tolist()[:10]} are neither a class nor {IGNORE_STORED}")
        return image, np.where(stored == IGNORE_STORED, IGNORE_LABEL, stored)


@dataclass
class PseudoLabelledSet:
    """A pseudo-labelled set opened for training: its folder, record and dataset."""

    root: Path
    record: dict[str, Any]
    dataset: PseudoLabelledDataset

    def __len__(self) -> int:
        return len(self.dataset)


def load_pseudo_set(root: str | Path, data: str | Path) -> PseudoLabelledSet:
    """Open the pseudo-labelled set in ``root`` made from ``data``'s unlabelled images.

    Raises:
        DatasetFormatError: no ``pseudo_labels.json``, or a set made from another data folder.
    """
    root, data = Path(root), Path(data)
    path = root / PSEUDO_JSON
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing; not a pseudo-labelled set")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("data_root") != str(data.resolve()):
        raise DatasetFormatError(f"{path}: made from {record.get('data_root')}, not from {data.resolve()}")
    by_id = {r.id: r for r in index_dataset(data, "unlabeled")}
    missing = [i for i in record["ids"] if i not in by_id]
    if missing:
        raise DatasetFormatError(f"{path}: unlabelled images {missing[:5]} are not in {data}")
    return PseudoLabelledSet(root, record, PseudoLabelledDataset(data, [by_id[i] for i in record["ids"]], root / LABELS_DIR))
