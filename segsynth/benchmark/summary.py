"""Turn the benchmark's per-run metrics into the table people read.

Units of analysis: a *run* is one (fold, seed, setting) segmentation model; its score is the
mean over the fold's test **cases** (patients) of the foreground-averaged metric, so every patient
weighs the same. The across-case std is STEDM's per-patient variability. Settings are compared
with the baseline *paired* by (fold, seed, case).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.table import Table

from segsynth.benchmark.stats import mean_std, paired_difference

TABLE_METRICS = ("dice", "iou", "hd95")
PAIRED_METRICS = ("dice", "hd95")


def _case_scores(metrics: dict[str, Any], metric: str) -> dict[str, float]:
    """``{case: foreground-mean metric}`` of one run."""
    return {case: float(np.mean(list(values[metric].values()))) for case, values in metrics["per_case"].items()}


def summarise(runs: Sequence[dict[str, Any]], settings: Sequence[str], baseline: str) -> dict[str, Any]:
    """Aggregate per-run metrics into per-setting rows and paired differences vs ``baseline``.

    Args:
        runs: dicts with ``fold``, ``seed``, ``setting`` and ``metrics`` (an ``evaluate_seg`` result).
        settings: row order (the baseline first).
        baseline: name of the real-only setting.

    Returns:
        ``{"settings": {name: {metric: {mean, std, case_std}, "per_class_dice": {...}, "runs": n}},
        "paired": {name: {metric: paired_difference(...)}}, "runs": [...]}``.
    """
    by_setting: dict[str, list[dict[str, Any]]] = {s: [] for s in settings}
    for run in runs:
        by_setting[run["setting"]].append(run)
    rows: dict[str, Any] = {}
    for name, items in by_setting.items():
        row: dict[str, Any] = {"runs": len(items)}
        for metric in TABLE_METRICS:
            per_run = [_case_scores(r["metrics"], metric) for r in items]
            mean, std = mean_std([float(np.mean(list(c.values()))) for c in per_run])
            case_std = mean_std([float(np.std(list(c.values()))) for c in per_run])[0]
            row[metric] = {"mean": mean, "std": std, "case_std": case_std}
        if items:
            classes = items[0]["metrics"]["classes"]
            row["per_class_dice"] = {
                c: mean_std([r["metrics"]["summary"]["dice"][c]["case_mean"] for r in items])[0] for c in classes
            }
        rows[name] = row
    paired: dict[str, Any] = {}
    base_runs = {(r["fold"], r["seed"]): r for r in by_setting[baseline]}
    for name in settings:
        if name == baseline:
            continue
        paired[name] = {}
        for metric in PAIRED_METRICS:
            a, b = [], []
            for run in by_setting[name]:
                base = base_runs.get((run["fold"], run["seed"]))
                if base is None:
                    continue
                mine, theirs = _case_scores(run["metrics"], metric), _case_scores(base["metrics"], metric)
                for case in sorted(set(mine) & set(theirs)):
                    a.append(mine[case])
                    b.append(theirs[case])
            paired[name][metric] = paired_difference(a, b)
    compact_runs = [
        {k: r[k] for k in ("fold", "seed", "setting", "run")} | {"case_dice": _case_scores(r["metrics"], "dice")}
        for r in runs
    ]
    return {"unit": "mean over test cases of the foreground-mean metric", "baseline": baseline,
            "settings": rows, "paired": paired, "runs": compact_runs}


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _fmt_p(value: float) -> str:
    """p-values: three decimals down to 0.001, then two significant digits (never a bare 0.000)."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _row_cells(results: dict[str, Any], name: str) -> list[str]:
    row = results["settings"][name]
    cells = [name, str(row["runs"])]
    for metric in TABLE_METRICS:
        m = row[metric]
        digits = 1 if metric == "hd95" else 3
        cells.append(f"{_fmt(m['mean'], digits)} ± {_fmt(m['std'], digits)}")
    cells.append(_fmt(row["dice"]["case_std"]))
    pair = results["paired"].get(name)
    if pair is None:
        cells += ["—", "—", "—"]
    else:
        d = pair["dice"]
        cells += [f"{d['mean']:+.3f}", f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"] if d["n"] else ["n/a", "n/a"]
        cells.append(_fmt_p(d["p_wilcoxon"]))
    return cells


HEADERS = ["setting", "runs", "Dice", "IoU", "HD95 px", "case std", "ΔDice", "95% CI", "p"]
LEGEND = (
    "Dice, IoU, HD95: mean ± std over runs (folds × seeds) of the mean over test cases. case std: Dice std "
    "across test cases (per-patient variability). ΔDice: paired difference vs baseline over (fold, seed, test "
    "case) with a bootstrap 95% CI; p: Wilcoxon signed-rank."
)


def rich_table(results: dict[str, Any]) -> Table:
    """The benchmark table for the terminal."""
    table = Table(title="segsynth benchmark", caption=LEGEND)
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "setting" else "right", no_wrap=header != "95% CI")
    for name in results["settings"]:
        table.add_row(*_row_cells(results, name))
    return table


def markdown_table(results: dict[str, Any]) -> str:
    """The same table as GitHub Markdown (written to ``results.md``)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for name in results["settings"]:
        lines.append("| " + " | ".join(_row_cells(results, name)) + " |")
    lines.append("")
    lines.append(LEGEND)
    return "\n".join(lines) + "\n"
