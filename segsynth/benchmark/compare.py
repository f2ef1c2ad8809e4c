"""Two generators on one benchmark: did the new one raise the synthetic settings' Dice?

Each benchmark already compares its settings with its own baseline. Comparing two generators asks
a second question of the same design: for one setting (``ratio:0.5``, say), the Dice of the runs
trained with the new generator's data minus those with the old one's, paired by test case (seeds
averaged within a case first, as everywhere in the benchmark). That is only fair when everything
but the generator is equal, so the comparison refuses results whose folds, seeds, step budget or
baseline scores differ: with the real-only rows reused (``segsynth benchmark --reuse``), the two
baselines are the very same runs and agree to the last digit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from segsynth.benchmark.stats import paired_difference


def _case_means(results: dict[str, Any], setting: str) -> dict[tuple[int, str], float]:
    """``{(fold, case): Dice averaged over seeds}`` of ``setting`` from a results dict's runs."""
    per_case: dict[tuple[int, str], list[float]] = defaultdict(list)
    for run in results["runs"]:
        if run["setting"] == setting:
            for case, value in run["case_dice"].items():
                if value is not None and math.isfinite(value):
                    per_case[(run["fold"], case)].append(value)
    return {key: float(np.mean(values)) for key, values in sorted(per_case.items())}


def check_same_experiment(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Refuse two results that differ in anything but the generator.

    Raises:
        ValueError: the folds, seeds, settings, controls, step budget or baseline case scores differ.
    """
    for key in ("folds", "fold_seed", "seeds", "settings", "controls", "low_label", "val_fraction",
                "segmentation_config", "segmentation_overrides"):
        if before["config"].get(key) != after["config"].get(key):
            raise ValueError(f"the two benchmarks differ in {key}: {before['config'].get(key)} vs {after['config'].get(key)}")
    if before["budget"] != after["budget"]:
        raise ValueError(f"the two benchmarks' segmentation budgets differ: {before['budget']} vs {after['budget']}")
    base_before, base_after = _case_means(before, before["baseline"]), _case_means(after, after["baseline"])
    if base_before.keys() != base_after.keys() or any(
            not math.isclose(base_before[k], base_after[k], rel_tol=0, abs_tol=1e-9) for k in base_before):
        raise ValueError("the two benchmarks' baselines score differently: they are not the same experiment "
                         "(reuse the real-only rows with segsynth benchmark --reuse)")


def compare_generators(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per synthetic setting: ΔDice vs baseline before and after, and after − before paired by case.

    Args:
        before, after: ``results.json`` contents of the same benchmark with the old and new generator.

    Returns:
        ``{"cases": n, "settings": {name: {"before": paired, "after": paired, "after_minus_before": paired}}}``,
        each ``paired`` a :func:`segsynth.benchmark.stats.paired_difference` of Dice.
    """
    check_same_experiment(before, after)
    rows = {}
    for name in before["config"]["settings"]:
        old, new = _case_means(before, name), _case_means(after, name)
        keys = sorted(set(old) & set(new))
        rows[name] = {
            "before": before["paired"][name]["dice"],
            "after": after["paired"][name]["dice"],
            "after_minus_before": paired_difference([new[k] for k in keys], [old[k] for k in keys]),
        }
    return {"cases": len(_case_means(before, before["baseline"])), "settings": rows}
