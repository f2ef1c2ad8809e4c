"""Distribution distance: FID and KID on features that exist offline.

torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` accept any feature
module; we give them our own (see :mod:`segsynth.evaluation.features`), used raw like Inception's pool
features: the stain/texture statistics are all intensities, intensity differences or activations
of [0, 1] images, so they share one scale, and standardising them by the real set would blow up
dimensions that barely vary in the real data. No Inception weights are loaded, ever, and every
result names its extractor: an FID on these features is comparable only with FIDs on the same
features.

Beside synthetic-vs-real, the same numbers for two halves of the real data split by case (patients
never on both sides) give the baseline a perfect generator would reach. Both estimators depend on
the sample sizes (FID is biased upward for small sets), so the sizes are reported too.

KID is the unbiased MMD estimate with a cubic polynomial kernel, averaged over random subsets
(seeded here). It is about 0 for two independent samples of one distribution and can be slightly
negative; for the *same* images passed twice it is ``-2 (mean self-kernel - mean kernel) / (m - 1)``,
which shrinks as the subset size m grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import warnings

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


#: Upper bound of the KID subset size (torchmetrics' default).
MAX_KID_SUBSET = 1000


def _feed(metric: nn.Module, images: torch.Tensor, real: bool, batch_size: int) -> None:
    for start in range(0, len(images), batch_size):
        metric.update(images[start : start + batch_size], real=real)


@torch.no_grad()
def fid_kid(
    feature: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    kid_subsets: int = 50,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """FID and KID between image sets with the feature module ``feature`` (torchmetrics).

    Args:
        feature: maps ``(B, C, H, W)`` float images to ``(B, D)``; has ``num_features``.
        real, fake: ``(N, C, H, W)`` float32 images in [0, 1] (at least 2 each).
        kid_subsets: random subsets KID is averaged over; the subset size is the smaller set's
            size (at most :data:`MAX_KID_SUBSET`).
        seed: seed of the KID subsets.

    Returns:
        ``{"fid", "kid_mean", "kid_std", "kid_subset_size", "n_real", "n_fake"}``.
    """
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID/KID need at least 2 images per set, got {len(real)} real and {len(fake)} synthetic")
    fid = FrechetInceptionDistance(feature=feature, reset_real_features=True)
    _feed(fid, real, True, batch_size)
    _feed(fid, fake, False, batch_size)
    subset = min(len(real), len(fake), MAX_KID_SUBSET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns that KID keeps every feature in memory
        kid = KernelInceptionDistance(feature=feature, subsets=kid_subsets, subset_size=subset)
    _feed(kid, real, True, batch_size)
    _feed(kid, fake, False, batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {
        "fid": max(0.0, float(fid.compute())),  # negative only by rounding
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "kid_subset_size": subset,
        "n_real": len(real),
        "n_fake": len(fake),
    }


def split_by_case(case_ids: Sequence[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Two halves of a set with no case on both sides, as equal in size as the cases allow.

    Cases are visited in a seeded order, largest first, each going to the smaller half. With a
    single case the images themselves are split at random (and the result says so).

    Returns:
        ``(indices of half A, indices of half B, how it was split)``.
    """
    cases = sorted(set(case_ids))
    members = {case: [i for i, c in enumerate(case_ids) if c == case] for case in cases}
    rng = np.random.default_rng(seed)
    if len(cases) < 2:
        order = rng.permutation(len(case_ids))
        half = len(order) // 2
        return np.sort(order[:half]), np.sort(order[half:]), "at random by image (only one case)"
    shuffled = [cases[i] for i in rng.permutation(len(cases))]
    shuffled.sort(key=lambda case: -len(members[case]))
    a: list[int] = []
    b: list[int] = []
    for case in shuffled:
        (a if len(a) <= len(b) else b).extend(members[case])
    return np.array(sorted(a)), np.array(sorted(b)), f"by case ({len(cases)} cases)"


def distribution_distance(
    extractors: dict[str, nn.Module],
    real: np.ndarray,
    fake: np.ndarray,
    real_case_ids: Sequence[str],
    kid_subsets: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """FID/KID of synthetic vs real and of real vs real (halves by case), per extractor.

    Args:
        extractors: ``{key: feature module}`` with ``num_features`` and ``name``.
        real: real images (tiles of the synthetic size) ``(N, C, H, W)`` float32.
        fake: synthetic images ``(M, C, H, W)`` float32.
        real_case_ids: the case of each real image (for the real-vs-real split).

    Returns:
        ``{key: {"extractor": name, "num_features", "synthetic_vs_real": {...},
        "real_vs_real": {... , "split"} | {"skipped": reason}}}``; in ``real_vs_real``,
        ``n_real`` / ``n_fake`` are the sizes of the two halves.
    """
    real_t = torch.from_numpy(np.ascontiguousarray(real, dtype=np.float32))
    fake_t = torch.from_numpy(np.ascontiguousarray(fake, dtype=np.float32))
    half_a, half_b, how = split_by_case(list(real_case_ids), seed)
    out: dict[str, Any] = {}
    for key, feature in extractors.items():
        entry: dict[str, Any] = {
            "extractor": getattr(feature, "name", type(feature).__name__),
            "num_features": int(feature.num_features),
            "synthetic_vs_real": fid_kid(feature, real_t, fake_t, kid_subsets, seed),
        }
        if min(len(half_a), len(half_b)) >= 2:
            baseline = fid_kid(feature, real_t[half_a], real_t[half_b], kid_subsets, seed)
            entry["real_vs_real"] = {**baseline, "split": how}
        else:
            entry["real_vs_real"] = {"skipped": f"too few real images for two halves ({len(half_a)} + {len(half_b)})"}
        out[key] = entry
    return out
