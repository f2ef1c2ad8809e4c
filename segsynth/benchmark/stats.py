"""Paired statistics for "setting vs baseline" on the same test cases.

Every synthetic setting is trained on the same folds and seeds as the baseline, so the honest
comparison is paired: per (fold, seed, case) difference of a metric, summarised by its mean, a
seeded bootstrap 95 % confidence interval and a Wilcoxon signed-rank p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation, ignoring NaN; ``(nan, nan)`` when nothing is left."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def paired_difference(
    setting: Sequence[float],
    baseline: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Summarise ``setting - baseline`` over paired observations.

    Args:
        setting: metric per paired unit (e.g. per fold/seed/case) for the synthetic setting.
        baseline: the same units, in the same order, for the baseline.
        n_boot: bootstrap resamples for the confidence interval.
        seed: bootstrap seed (the interval is reproducible).
        confidence: two-sided coverage of the interval.

    Returns:
        ``mean``, ``ci_low``, ``ci_high``, ``p_wilcoxon`` (NaN when all differences are zero or fewer
        than two pairs), ``n`` (pairs with both values finite) and ``wins`` (fraction of pairs where
        the setting is better, i.e. higher).
    """
    a = np.asarray(setting, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    n = int(diff.size)
    if n == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_wilcoxon": math.nan, "n": 0, "wins": math.nan}
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    p_value = math.nan
    if n >= 2 and np.any(diff != 0):
        p_value = float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)
    return {
        "mean": float(diff.mean()),
        "ci_low": float(np.quantile(boot, alpha)),
        "ci_high": float(np.quantile(boot, 1.0 - alpha)),
        "p_wilcoxon": p_value,
        "n": n,
        "wins": float(np.mean(diff > 0)),
    }
