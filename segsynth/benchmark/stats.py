"""Paired statistics for "setting vs baseline" with the patient (test case) as the unit.

Every setting is trained on the same folds and seeds as the baseline. Seeds measure the training
noise of one case, not new patients: 3 seeds x 4 test cases are 4 observations, not 12. So a
metric is first averaged over seeds within each test case, and the paired difference per case is
summarised by its mean, a seeded bootstrap 95 % interval over cases (``scipy.stats.bootstrap``)
and a Wilcoxon signed-rank test over cases (``scipy.stats.wilcoxon``, exact for small n).
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
    n_boot: int = 5000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Summarise ``setting - baseline`` over paired units (one value per test case).

    Args:
        setting: the metric per unit for the synthetic setting (seeds already averaged).
        baseline: the same units, in the same order, for the baseline.
        n_boot: bootstrap resamples for the confidence interval.
        seed: bootstrap seed (the interval is reproducible).
        confidence: two-sided coverage of the interval.

    Returns:
        ``mean``, ``ci_low``, ``ci_high`` (percentile bootstrap over units; NaN below two units),
        ``p_wilcoxon`` (NaN when all differences are zero or fewer than two units),
        ``p_min`` (the smallest two-sided p the exact test can give with ``n`` units: with few
        cases no result can be significant, and the table says so), ``n`` (units with both values
        finite) and ``wins`` (fraction of units where the setting is higher).
    """
    a = np.asarray(setting, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    n = int(diff.size)
    nan = math.nan
    if n == 0:
        return {"mean": nan, "ci_low": nan, "ci_high": nan, "p_wilcoxon": nan, "p_min": nan, "n": 0, "wins": nan}
    low = high = nan
    if n >= 2:
        if np.all(diff == diff[0]):
            low = high = float(diff[0])
        else:
            interval = stats.bootstrap(
                (diff,), np.mean, n_resamples=n_boot, confidence_level=confidence, method="percentile",
                random_state=np.random.default_rng(seed),
            ).confidence_interval
            low, high = float(interval.low), float(interval.high)
    p_value = nan
    if n >= 2 and np.any(diff != 0):
        p_value = float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)
    return {
        "mean": float(diff.mean()),
        "ci_low": low,
        "ci_high": high,
        "p_wilcoxon": p_value,
        "p_min": float(min(1.0, 2.0 / 2**n)),
        "n": n,
        "wins": float(np.mean(diff > 0)),
    }
