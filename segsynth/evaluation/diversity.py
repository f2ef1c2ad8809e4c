"""Diversity: how different are samples drawn for the same layout, compared with real images?

A generator that ignores its noise (or copies its style references) draws the same image for a
layout every time; augmenting with such samples adds nothing. Two distances between images:

- ``pixel_rmse``: root-mean-square pixel difference (the images are aligned: same layout);
- ``stain_texture``: root-mean-square difference of the stain/texture descriptors
  (:class:`~segsynth.evaluation.features.StainTextureFeatures`; all in intensity units of [0, 1]
  images), i.e. their Euclidean distance divided by the square root of the dimension.

Synthetic samples are grouped by identical conditioning mask (``variants`` layouts repeat each
mask); when no mask repeats (``augmented`` layouts transform every draw), by the real sample the
layout came from. The reference is the same distances between real tiles of different images, and
between tiles of different images of one case (the variation one patient or slide shows).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from segsynth.evaluation.features import extract

DISTANCES = ("pixel_rmse", "stain_texture")


def _pixel_rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def _pairs_within(groups: Sequence[Sequence[int]], max_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    pairs = [pair for group in groups for pair in itertools.combinations(group, 2)]
    if len(pairs) > max_pairs:
        keep = rng.choice(len(pairs), max_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(keep)]
    return pairs


def _random_pairs(n: int, allowed, max_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``max_pairs`` distinct index pairs ``i < j`` with ``allowed(i, j)``."""
    total = n * (n - 1) // 2
    if total <= max_pairs * 4:
        pairs = [(i, j) for i, j in itertools.combinations(range(n), 2) if allowed(i, j)]
        if len(pairs) > max_pairs:
            pairs = [pairs[k] for k in sorted(rng.choice(len(pairs), max_pairs, replace=False))]
        return pairs
    found: set[tuple[int, int]] = set()
    for _ in range(max_pairs * 20):
        i, j = sorted(rng.choice(n, 2, replace=False).tolist())
        if allowed(i, j):
            found.add((i, j))
            if len(found) == max_pairs:
                break
    return sorted(found)


def _mean_distances(images: np.ndarray, features: np.ndarray, pairs: list[tuple[int, int]]) -> dict[str, Any]:
    if not pairs:
        return {"num_pairs": 0, **{name: None for name in DISTANCES}}
    scale = np.sqrt(features.shape[1])
    return {
        "num_pairs": len(pairs),
        "pixel_rmse": float(np.mean([_pixel_rmse(images[i], images[j]) for i, j in pairs])),
        "stain_texture": float(np.mean([np.linalg.norm(features[i] - features[j]) / scale for i, j in pairs])),
    }


def layout_groups(masks: np.ndarray, layout_ids: Sequence[str | None]) -> tuple[list[list[int]], str]:
    """Indices of samples sharing a layout (groups of at least two) and how they were grouped."""
    by_mask: dict[str, list[int]] = {}
    for index, mask in enumerate(masks):
        digest = hashlib.sha256(np.ascontiguousarray(mask, dtype=np.int64).tobytes() + str(mask.shape).encode()).hexdigest()
        by_mask.setdefault(digest, []).append(index)
    groups = [g for g in by_mask.values() if len(g) >= 2]
    if groups:
        return groups, "identical conditioning mask"
    by_id: dict[str, list[int]] = {}
    for index, layout_id in enumerate(layout_ids):
        if layout_id is not None:
            by_id.setdefault(layout_id, []).append(index)
    return [g for g in by_id.values() if len(g) >= 2], "same source layout (layout_id; masks differ by augmentation)"


def diversity(
    fake: np.ndarray,
    masks: np.ndarray,
    layout_ids: Sequence[str | None],
    real: np.ndarray,
    real_case_ids: Sequence[str],
    real_source_ids: Sequence[str],
    feature: nn.Module,
    max_pairs: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean pairwise distances of same-layout samples, of real tiles, and their ratio.

    Args:
        fake: synthetic images ``(N, C, H, W)`` float32; ``masks`` their layouts ``(N, H, W)``.
        layout_ids: each sample's source layout id (manifest), or None.
        real: real tiles of the same size ``(M, C, H, W)``; ``real_case_ids`` / ``real_source_ids``
            the case and image of each.
        feature: the stain/texture extractor.
        max_pairs: cap on the pairs per average (a seeded random subset).

    Returns:
        ``{"grouping", "num_groups", "synthetic_same_layout": {num_pairs, pixel_rmse,
        stain_texture}, "real_different_images": {...}, "real_same_case": {...},
        "ratio_to_real": {distance: synthetic / real}, "feature": name}``.
    """
    rng = np.random.default_rng(seed)
    real_t = torch.from_numpy(np.ascontiguousarray(real, dtype=np.float32))
    real_features = extract(feature, real_t).numpy()
    fake_features = extract(feature, torch.from_numpy(np.ascontiguousarray(fake, dtype=np.float32))).numpy()
    groups, grouping = layout_groups(masks, layout_ids)
    synthetic = _mean_distances(fake, fake_features, _pairs_within(groups, max_pairs, rng))
    different = _random_pairs(len(real), lambda i, j: real_source_ids[i] != real_source_ids[j], max_pairs, rng)
    same_case = _random_pairs(
        len(real),
        lambda i, j: real_case_ids[i] == real_case_ids[j] and real_source_ids[i] != real_source_ids[j],
        max_pairs,
        rng,
    )
    real_different = _mean_distances(real, real_features, different)
    ratio = {
        name: (synthetic[name] / real_different[name]) if synthetic[name] is not None and real_different[name] else None
        for name in DISTANCES
    }
    return {
        "grouping": grouping,
        "num_groups": len(groups),
        "synthetic_same_layout": synthetic,
        "real_different_images": real_different,
        "real_same_case": _mean_distances(real, real_features, same_case),
        "ratio_to_real": ratio,
        "feature": getattr(feature, "name", type(feature).__name__),
    }
