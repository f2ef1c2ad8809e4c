"""Segmentation metrics per image, per case and per class, with explicit empty-mask conventions.

Per image and per foreground class: Dice, IoU, precision, recall (MONAI ``DiceMetric``,
``MeanIoU``, ``ConfusionMatrixMetric``) and the 95th-percentile Hausdorff distance and the average
symmetric surface distance (MONAI ``HausdorffDistanceMetric``, ``SurfaceDistanceMetric``), in
pixels. Background is not scored.

Empty-mask conventions (so no image silently drops out of an average):

* prediction and reference both empty for a class: Dice = IoU = precision = recall = 1,
  HD95 = ASSD = 0 (the network correctly found nothing);
* exactly one of them empty: Dice = IoU = precision = recall = 0 and HD95 = ASSD = the image
  diagonal ``sqrt(H**2 + W**2)`` (the largest distance possible in the image: a missed or
  hallucinated structure is the worst case, not a missing value).

Aggregation: a case's value is the mean over its images; the summary gives the mean and standard
deviation over images and over cases -- the latter (std of per-case means, population ``ddof=0``)
is the across-patient spread STEDM reports as per-patient variability.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    ConfusionMatrixMetric,
    DiceMetric,
    HausdorffDistanceMetric,
    MeanIoU,
    SurfaceDistanceMetric,
)
from monai.networks.utils import one_hot

METRIC_NAMES = ("dice", "iou", "precision", "recall", "hd95", "assd")
OVERLAP_METRICS = ("dice", "iou", "precision", "recall")
DISTANCE_METRICS = ("hd95", "assd")
EMPTY_MASK_CONVENTION = (
    "both empty: dice=iou=precision=recall=1, hd95=assd=0; "
    "one empty: dice=iou=precision=recall=0, hd95=assd=image diagonal (pixels)"
)


class _Scorers:
    """The MONAI metric objects, built once (background excluded, empty references kept)."""

    def __init__(self) -> None:
        self.dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
        self.iou = MeanIoU(include_background=False, reduction="none", ignore_empty=False)
        self.confusion = ConfusionMatrixMetric(
            include_background=False, metric_name=("precision", "recall"), reduction="none", compute_sample=True
        )
        self.hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        self.assd = SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")


def image_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int, scorers: _Scorers | None = None) -> dict[str, np.ndarray]:
    """Every metric of one 2D image, one value per foreground class.

    Args:
        pred: ``(H, W)`` predicted labels.
        target: ``(H, W)`` reference labels.
        num_classes: K including background.

    Returns:
        ``{metric: float64 array (K-1,)}`` following the module's empty-mask conventions.
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must be equal (H, W) label maps, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    scorers = scorers or _Scorers()
    p = one_hot(pred.long()[None, None], num_classes)
    t = one_hot(target.long()[None, None], num_classes)
    pred_any = p[0, 1:].flatten(1).any(1).numpy()
    ref_any = t[0, 1:].flatten(1).any(1).numpy()
    both_empty = ~pred_any & ~ref_any
    one_empty = pred_any ^ ref_any
    out: dict[str, np.ndarray] = {
        "dice": scorers.dice(p, t)[0].numpy(),
        "iou": scorers.iou(p, t)[0].numpy(),
    }
    scorers.confusion.reset()
    scorers.confusion(p, t)
    precision, recall = scorers.confusion.aggregate()
    out["precision"] = precision[0].numpy()
    out["recall"] = recall[0].numpy()
    both = pred_any & ref_any
    for name in DISTANCE_METRICS:
        values = np.zeros(num_classes - 1)
        if both.any():
            with warnings.catch_warnings():
                # MONAI warns about classes empty on one side; those are handled by our convention.
                warnings.simplefilter("ignore")
                values[both] = getattr(scorers, name)(p, t)[0].numpy()[both]
        out[name] = values
    diagonal = math.hypot(*pred.shape)
    for name in OVERLAP_METRICS:
        out[name] = np.where(both_empty, 1.0, np.where(one_empty, 0.0, out[name])).astype(np.float64)
    for name in DISTANCE_METRICS:
        out[name] = np.where(both_empty, 0.0, np.where(one_empty, diagonal, out[name])).astype(np.float64)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(arr)), "std": float(np.std(arr))}


class MetricAccumulator:
    """Collects per-image metrics and summarises them per case and per class.

    Args:
        class_names: all K label names ordered by value (background first; it is not scored).
    """

    def __init__(self, class_names: list[str]) -> None:
        if len(class_names) < 2:
            raise ValueError(f"need background and at least one class, got {class_names}")
        self.class_names = list(class_names)
        self.foreground = self.class_names[1:]
        self.records: list[dict[str, Any]] = []
        self._scorers = _Scorers()

    def add(self, sample_id: str, case_id: str, pred: torch.Tensor, target: torch.Tensor) -> dict[str, dict[str, float]]:
        """Score one image (``(H, W)`` label maps) and remember it under its case."""
        values = image_metrics(pred.cpu(), target.cpu(), len(self.class_names), self._scorers)
        metrics = {m: dict(zip(self.foreground, map(float, values[m]), strict=True)) for m in METRIC_NAMES}
        counts = torch.bincount(target.cpu().long().flatten(), minlength=len(self.class_names))
        reference = {c: int(counts[k]) for k, c in enumerate(self.foreground, start=1)}
        self.records.append({"id": sample_id, "case_id": case_id, "metrics": metrics, "reference_pixels": reference})
        return metrics

    def case_reference_pixels(self) -> dict[str, dict[str, int]]:
        """``{case: {class: reference pixels over the case's images}}``: a case whose reference
        holds no pixel of a class cannot measure that class (the benchmark leaves it out of the
        class's mean, as nnU-Net's evaluation does, instead of scoring it 1 or 0)."""
        out: dict[str, dict[str, int]] = {}
        for record in self.records:
            row = out.setdefault(record["case_id"], {c: 0 for c in self.foreground})
            for c, n in record["reference_pixels"].items():
                row[c] += n
        return dict(sorted(out.items()))

    def per_case(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{case: {metric: {class: mean over the case's images}}}``."""
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.records:
            grouped[record["case_id"]].append(record["metrics"])
        return {
            case: {
                m: {c: float(np.mean([r[m][c] for r in rows])) for c in self.foreground} for m in METRIC_NAMES
            }
            for case, rows in sorted(grouped.items())
        }

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{metric: {class | "mean_fg": {mean, std, case_mean, case_std}}}``.

        ``mean``/``std`` are over images, ``case_mean``/``case_std`` over per-case means;
        ``mean_fg`` first averages the foreground classes of each image (or case).
        """
        if not self.records:
            raise ValueError("no image was scored")
        cases = self.per_case()
        out: dict[str, dict[str, dict[str, float]]] = {}
        for m in METRIC_NAMES:
            out[m] = {}
            for c in [*self.foreground, "mean_fg"]:
                def pick(metrics: dict[str, dict[str, float]]) -> float:
                    row = metrics[m]
                    return float(np.mean(list(row.values()))) if c == "mean_fg" else row[c]

                image_stats = _stats([pick(r["metrics"]) for r in self.records])
                case_stats = _stats([pick(v) for v in cases.values()])
                out[m][c] = {**image_stats, "case_mean": case_stats["mean"], "case_std": case_stats["std"]}
        return out

    def result(self) -> dict[str, Any]:
        """Everything, JSON-ready: conventions, per-image, per-case and summary."""
        return {
            "classes": self.foreground,
            "units": "pixels",
            "empty_mask_convention": EMPTY_MASK_CONVENTION,
            "num_images": len(self.records),
            "num_cases": len({r["case_id"] for r in self.records}),
            "summary": self.summary(),
            "per_case": self.per_case(),
            "case_reference_pixels": self.case_reference_pixels(),
            "per_image": self.records,
        }
