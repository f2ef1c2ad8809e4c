"""Layout fidelity: does a synthetic image show the structures of the mask it was generated from?

The semantic-synthesis standard (SDM, SegGuidedDiff): a segmentation network trained on real data
only, frozen, segments every synthetic image, and its prediction is scored against the
conditioning mask with Dice and IoU per class (the empty-mask conventions of
:mod:`segsynth.seg.metrics`). The same network scored on real held-out images gives the ceiling:
a generator cannot be expected to beat the segmenter's own accuracy on real data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segsynth.seg.evaluate import evaluate_seg
from segsynth.seg.metrics import MetricAccumulator
from segsynth.seg.networks import load_network, predict_logits
from segsynth.seg.predict import network_dir

#: Metrics reported for layout fidelity (the accumulator computes more).
FIDELITY_METRICS = ("dice", "iou")

Predictor = Callable[[torch.Tensor], torch.Tensor]


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "num_images": result["num_images"],
        "num_cases": result["num_cases"],
        "classes": result["classes"],
        "summary": {m: result["summary"][m] for m in FIDELITY_METRICS},
    }


@torch.no_grad()
def score_layouts(
    images: np.ndarray,
    masks: np.ndarray,
    predict: Predictor,
    class_names: Sequence[str],
    ids: Sequence[str] | None = None,
    case_ids: Sequence[str] | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Dice/IoU of ``predict(images)`` against ``masks``.

    Args:
        images: float32 ``(N, C, H, W)`` in [0, 1].
        masks: int ``(N, H, W)`` conditioning layouts.
        predict: ``(B, C, H, W) -> (B, H, W)`` labels.
        class_names: all K label names (background first; it is not scored).
        ids, case_ids: per image (default: positions; each image its own case).

    Returns:
        ``{"num_images", "num_cases", "classes", "summary": {"dice" | "iou": {class | "mean_fg":
        {mean, std, case_mean, case_std}}}, "per_image_dice": [mean foreground Dice per image]}``.
    """
    if len(images) != len(masks) or len(images) == 0:
        raise ValueError(f"need as many images as masks (and at least one), got {len(images)} and {len(masks)}")
    ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
    case_ids = list(case_ids) if case_ids is not None else list(ids)
    accumulator = MetricAccumulator(list(class_names))
    per_image = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        labels = predict(batch)
        for offset, pred in enumerate(labels):
            i = start + offset
            values = accumulator.add(ids[i], case_ids[i], pred, torch.from_numpy(np.asarray(masks[i])))
            per_image.append(float(np.mean(list(values["dice"].values()))))
    return {**_summary(accumulator.result()), "per_image_dice": per_image}


def network_predictor(run: str | Path, device: str | torch.device | None = None) -> tuple[Predictor, dict[str, Any]]:
    """The frozen best network of a ``train_seg`` run (or a saved network folder, see
    :func:`segsynth.seg.predict.network_dir`) as a predictor on ``device`` (default the CPU),
    with its metadata."""
    model, _, meta = load_network(network_dir(run))
    model.requires_grad_(False)
    if device is not None:
        model.to(device)

    def predict(images: torch.Tensor) -> torch.Tensor:
        return predict_logits(model, images, meta["divisor"], meta["patch_size"]).argmax(1)

    return predict, meta


def layout_fidelity(
    images: np.ndarray,
    masks: np.ndarray,
    seg_run: str | Path,
    real: str | Path | None = None,
    ids: Sequence[str] | None = None,
    case_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score synthetic images against their layouts with a trained run's network, and the same
    network on real held-out images as the ceiling.

    Args:
        images, masks: the synthetic set (see :func:`score_layouts`).
        seg_run: a ``train_seg`` run trained on real data.
        real: the real dataset; held-out images are the run's test split when it was trained on
            this folder, all its labelled images otherwise (see :func:`segsynth.evaluate_seg`).
        ids, case_ids: per synthetic image.
        class_names: the synthetic set's labels, checked against the network's.

    Returns:
        ``{"seg_run", "model", "synthetic": {...}, "real_held_out": {...} | {"skipped": reason},
        "fraction_of_ceiling": {class | "mean_fg": synthetic Dice / real Dice}}``.
    """
    predict, meta = network_predictor(seg_run)
    if int(meta["in_channels"]) != images.shape[1]:
        raise ValueError(f"{seg_run}: the network reads {meta['in_channels']} channels, the synthetic images have {images.shape[1]}")
    if class_names is not None and list(class_names) != list(meta["class_names"]):
        raise ValueError(f"the synthetic labels {list(class_names)} differ from the network's {meta['class_names']}")
    synthetic = score_layouts(images, masks, predict, meta["class_names"], ids, case_ids)
    out: dict[str, Any] = {
        "seg_run": str(Path(seg_run).resolve()),
        "model": {"network": meta["network"]["name"], "epoch": meta.get("epoch"), "val_dice": meta.get("val_dice")},
        "synthetic": synthetic,
    }
    if real is None:
        out["real_held_out"] = {"skipped": "no real dataset given"}
        return out
    try:
        ceiling = evaluate_seg(seg_run, real)
    except ValueError as exc:
        out["real_held_out"] = {"skipped": str(exc)}
        return out
    out["real_held_out"] = {"selection": ceiling["selection"], **_summary(ceiling)}
    ratio = {}
    for cls, stats in synthetic["summary"]["dice"].items():
        ceiling_dice = out["real_held_out"]["summary"]["dice"][cls]["mean"]
        ratio[cls] = stats["mean"] / ceiling_dice if ceiling_dice > 0 else None
    out["fraction_of_ceiling"] = ratio
    return out
