"""``evaluate_seg``: score a trained run's best network on a labelled dataset.

By default the run's own test split is scored when ``data`` is the folder it was trained on, and
every labelled image otherwise (e.g. an external dataset). Metrics and their empty-mask
conventions are those of :mod:`segsynth.seg.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segsynth.artifacts.names import BEST_DIR, DATASET_JSON, SPLIT_JSON
from segsynth.artifacts.schemas import SegRunSplit, read_record
from segsynth.data.format import DatasetFormatError
from segsynth.data.loader import SegDataset, index_dataset
from segsynth.device import inference_device
from segsynth.seg.metrics import MetricAccumulator
from segsynth.seg.networks import load_network, predict_logits


def _default_ids(run: Path, data: Path, all_ids: list[str]) -> tuple[list[str], str]:
    split_path = run / SPLIT_JSON
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path}: missing (not a segmentation run folder)")
    split = read_record(split_path, SegRunSplit)
    if Path(split.data_root) != data.resolve():
        return all_ids, "all labelled images (dataset not used in training)"
    if not split.test_ids:
        raise ValueError(f"{split_path}: the run has no test split; pass the ids to evaluate")
    return list(split.test_ids), "test split of the run"


@torch.no_grad()
def evaluate_seg(run: str | Path, data: str | Path, ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Predict every selected image of ``data`` with ``run/best`` and compute the metrics.

    Args:
        run: a ``train_seg`` run folder.
        data: a labelled dataset folder with the same labels as the training data.
        ids: sample ids to score (default: see module docstring).

    Returns:
        :meth:`MetricAccumulator.result` plus ``run``, ``data``, ``selection`` and the ``model``'s
        step and validation Dice.

    Raises:
        FileNotFoundError: no best network in the run.
        DatasetFormatError: the dataset's labels differ from the network's classes.
        ValueError: unknown ids or nothing to evaluate.
    """
    run, data = Path(run), Path(data)
    model, _, meta = load_network(run / BEST_DIR)
    refs = index_dataset(data)
    by_id = {r.id: r for r in refs}
    if ids is None:
        selected, selection = _default_ids(run, data, list(by_id))
    else:
        selected, selection = list(ids), "given ids"
    unknown = [i for i in selected if i not in by_id]
    if unknown:
        raise ValueError(f"{data}: unknown sample ids {unknown[:5]}")
    if not selected:
        raise ValueError(f"{data}: no images to evaluate")
    dataset = SegDataset(data, refs=[by_id[i] for i in selected])
    if dataset.spec.class_names != meta["class_names"]:
        raise DatasetFormatError(
            f"{data / DATASET_JSON}: labels {dataset.spec.class_names} differ from the network's {meta['class_names']}"
        )
    accumulator = MetricAccumulator(meta["class_names"])
    model.to(inference_device())
    for index, ref in enumerate(dataset.refs):
        image, mask = dataset.load_arrays(index)
        logits = predict_logits(model, torch.from_numpy(image.copy())[None], meta["divisor"], meta["patch_size"])
        accumulator.add(ref.id, ref.case_id, logits.argmax(1)[0], torch.from_numpy(mask.copy()))
    return {
        "run": str(run.resolve()),
        "data": str(data.resolve()),
        "selection": selection,
        "model": {"step": meta["step"], "val_dice": meta["val_dice"], "network": meta["network"]["name"]},
        **accumulator.result(),
    }
