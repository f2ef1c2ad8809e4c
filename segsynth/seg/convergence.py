"""Has a segmentation run stopped improving? Read from its validation curve.

A baseline that is still learning when it stops makes any extra data look useful, so every run
records whether its validation Dice was still rising at the end. The raw curve of a small
validation set is noisy; it is smoothed by a trailing moving average before any decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Share of a run, at its end, over which "still rising" is judged.
LAST_SHARE = 0.2


def smoothed(curve: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: value ``i`` is the mean of ``curve[max(0, i-window+1) .. i]``."""
    values = np.asarray(curve, dtype=np.float64)
    return [float(values[max(0, i - window + 1) : i + 1].mean()) for i in range(len(values))]


def validations_without_gain(curve: Sequence[float], window: int, min_delta: float) -> int:
    """Validations since the smoothed curve last rose above its running best by more than ``min_delta``."""
    best, since = -math.inf, 0
    for value in smoothed(curve, window):
        if value > best + min_delta:
            best, since = value, 0
        else:
            since += 1
    return since


def convergence(steps: Sequence[int], curve: Sequence[float], window: int, min_delta: float) -> dict[str, Any]:
    """Summarise a validation curve measured at ``steps``.

    ``still_rising`` is True when the smoothed curve's best value inside the last fifth of the run
    beats its best before it by more than ``min_delta`` (or when no validation precedes the last
    fifth, so convergence cannot be shown).

    Returns:
        ``still_rising``, ``gain_last_fifth`` (that difference; NaN when undefined),
        ``best_step``/``best_val_dice`` of the raw curve, ``final_smoothed``.
    """
    if len(steps) != len(curve) or not curve:
        raise ValueError("convergence needs one validation Dice per validation step, at least one")
    smooth = smoothed(curve, window)
    cut = (1.0 - LAST_SHARE) * steps[-1]
    before = [v for s, v in zip(steps, smooth, strict=True) if s <= cut]
    last = [v for s, v in zip(steps, smooth, strict=True) if s > cut]
    gain = max(last) - max(before) if before and last else math.nan
    best = int(np.argmax(curve))
    return {
        "still_rising": bool(math.isnan(gain) or gain > min_delta),
        "gain_last_fifth": gain,
        "best_step": int(steps[best]),
        "best_val_dice": float(curve[best]),
        "final_smoothed": smooth[-1],
    }
