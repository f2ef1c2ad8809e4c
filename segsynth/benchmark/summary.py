"""Turn the benchmark's per-run metrics into the table people read.

The unit of analysis is the real **test case** (patient, slide, volume): a run's score on a case is
the foreground-averaged metric over that case's images, seeds are averaged within a case, and
every case weighs the same. "case std" is the spread of those case scores (STEDM's per-patient
variability). Settings are compared with the baseline paired by case (see
:mod:`segsynth.benchmark.stats`); "gap closed" is the share of the distance from the low-label
baseline to the all-labelled reference that a setting covers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.table import Table

from segsynth.benchmark.stats import mean_std, paired_difference

TABLE_METRICS = ("dice", "iou", "hd95")
PAIRED_METRICS = ("dice", "hd95")
CaseKey = tuple[int, str]


def _empty_reference(metrics: dict[str, Any]) -> set[tuple[str, str]]:
    """``(case, class)`` pairs whose reference holds no pixel of the class (unknown for runs
    scored before the counts were recorded: none)."""
    counts = metrics.get("case_reference_pixels") or {}
    return {(case, c) for case, row in counts.items() for c, n in row.items() if n == 0}


def _case_scores(metrics: dict[str, Any], metric: str, cls: str | None = None) -> dict[str, float]:
    """``{case: foreground-mean metric}`` of one run (or of class ``cls`` alone).

    A class whose reference is empty in a case is left out of that case's mean, as nnU-Net's
    evaluation does: the case cannot measure it, and scoring it 1 (both empty) or 0 (a false
    positive) would move the mean by what the case lacks, not by what the network learnt. A case
    left with no class is NaN and drops out of the averages (``empty_reference`` counts them).
    NaN values (e.g. HD95 of an empty prediction) are ignored too.
    """
    empty = _empty_reference(metrics)
    out = {}
    for case, values in metrics["per_case"].items():
        finite = [v for c, v in values[metric].items()
                  if (cls is None or c == cls) and (case, c) not in empty and v is not None and math.isfinite(v)]
        out[case] = float(np.mean(finite)) if finite else math.nan
    return out


def _seed_averaged(items: Sequence[dict[str, Any]], metric: str) -> dict[CaseKey, float]:
    """``{(fold, case): metric averaged over the seeds}`` of one setting."""
    per_case: dict[CaseKey, list[float]] = defaultdict(list)
    for run in items:
        for case, value in _case_scores(run["metrics"], metric).items():
            per_case[(run["fold"], case)].append(value)
    return {key: mean_std(values)[0] for key, values in sorted(per_case.items())}


def _row(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "runs": len(items),
        "folds": len({r["fold"] for r in items}),
        "seeds": len({r["seed"] for r in items}),
        "still_rising": sum(1 for r in items if r["metrics"].get("training", {}).get("still_rising", False)),
        "steps": sorted({r["metrics"]["training"]["steps"] for r in items if "training" in r["metrics"]}),
        "cases": sum(1 for v in _seed_averaged(items, "dice").values() if math.isfinite(v)),
    }
    for metric in TABLE_METRICS:
        mean, case_std = mean_std(list(_seed_averaged(items, metric).values()))
        run_means = [mean_std(list(_case_scores(r["metrics"], metric).values()))[0] for r in items]
        row[metric] = {"mean": mean, "case_std": case_std, "run_std": mean_std(run_means)[1]}
    row["empty_reference"] = len({(r["fold"], *pair) for r in items for pair in _empty_reference(r["metrics"])})
    if items:
        classes = items[0]["metrics"]["classes"]
        row["per_class_dice"] = {
            c: mean_std([mean_std(list(_case_scores(r["metrics"], "dice", c).values()))[0] for r in items])[0]
            for c in classes
        }
    return row


def _paired(mine: dict[CaseKey, float], theirs: dict[CaseKey, float]) -> dict[str, float]:
    keys = sorted(set(mine) & set(theirs))
    return paired_difference([mine[k] for k in keys], [theirs[k] for k in keys])


def _validation_dice(run: dict[str, Any]) -> float:
    """The run's best validation Dice (the score it was selected by), NaN when unknown."""
    metrics = run["metrics"]
    value = metrics.get("model", {}).get("val_dice", metrics.get("training", {}).get("best_val_dice"))
    return float(value) if value is not None else math.nan


def best_controls(by_setting: dict[str, list[dict[str, Any]]], controls: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per fold, the free control with the higher validation Dice (mean over seeds).

    The choice sees only the fold's validation cases (what each run was selected on), never a test
    case, so it is one a user could have made; ties go to the first control listed.

    Returns:
        ``{str(fold): {"chosen": name, "val_dice": {control: mean over seeds}}}`` for every fold
        where some control has a validation score.
    """
    scores: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name in controls:
        for run in by_setting.get(name, []):
            scores[run["fold"]][name].append(_validation_dice(run))
    out: dict[str, dict[str, Any]] = {}
    for fold, per_control in sorted(scores.items()):
        means = {name: mean_std(values)[0] for name, values in per_control.items()}
        finite = [name for name in controls if name in means and math.isfinite(means[name])]
        if finite:
            out[str(fold)] = {"chosen": max(finite, key=lambda n: (means[n], -finite.index(n))), "val_dice": means}
    return out


def _chosen_scores(by_setting: dict[str, list[dict[str, Any]]], chosen: dict[str, dict[str, Any]]) -> dict[CaseKey, float]:
    """``{(fold, case): Dice}`` of each fold's chosen control (seeds averaged within a case)."""
    out: dict[CaseKey, float] = {}
    for fold, choice in chosen.items():
        runs = [r for r in by_setting[choice["chosen"]] if str(r["fold"]) == fold]
        out.update(_seed_averaged(runs, "dice"))
    return out


def summarise(
    runs: Sequence[dict[str, Any]], settings: Sequence[str], baseline: str, reference: str | None = None,
    controls: Sequence[str] = (),
) -> dict[str, Any]:
    """Aggregate per-run metrics into per-setting rows and case-paired differences vs ``baseline``.

    Args:
        runs: dicts with ``fold``, ``seed``, ``setting`` and ``metrics`` (an ``evaluate_seg``
            result, with the run's ``training.json`` under ``training`` when available).
        settings: row order (the baseline first).
        baseline: name of the real-only low-label setting.
        reference: name of the all-labelled row ("gap closed" is measured against it), if any.
        controls: names of the free control rows (heavy augmentation, self-training): every other
            non-baseline row is also compared, paired by case, with each fold's best of them
            chosen on validation cases (:func:`best_controls`), the headline ``vs_best_control``.

    Returns:
        ``{"unit", "baseline", "reference", "settings": {name: row}, "paired": {name: {...}},
        "runs": [...]}``; a row holds ``runs``, ``cases``, ``folds``, ``seeds``, ``still_rising``,
        ``steps`` and per metric ``mean`` (over cases), ``case_std`` and ``run_std``; ``order`` is the
        row order; a paired entry
        holds per metric a :func:`paired_difference` plus ``relative_gain``, ``case_std_change``
        and ``gap_closed`` for Dice, and ``vs_best_control`` (a Dice :func:`paired_difference`
        against the chosen control) for the rows that are not controls; ``best_control`` names each
        fold's chosen control and the validation Dice it was chosen by.
    """
    by_setting: dict[str, list[dict[str, Any]]] = {s: [] for s in settings}
    for run in runs:
        by_setting[run["setting"]].append(run)
    rows = {name: _row(items) for name, items in by_setting.items()}
    base = {m: _seed_averaged(by_setting[baseline], m) for m in PAIRED_METRICS}
    reference_gain = math.nan
    if reference is not None and by_setting.get(reference):
        reference_gain = _paired(_seed_averaged(by_setting[reference], "dice"), base["dice"])["mean"]
    chosen = best_controls(by_setting, [c for c in controls if by_setting.get(c)])
    control_scores = _chosen_scores(by_setting, chosen)
    paired: dict[str, Any] = {}
    for name in settings:
        if name == baseline:
            continue
        entry: dict[str, Any] = {m: _paired(_seed_averaged(by_setting[name], m), base[m]) for m in PAIRED_METRICS}
        delta = entry["dice"]["mean"]
        base_mean = rows[baseline]["dice"]["mean"]
        entry["relative_gain"] = delta / base_mean if base_mean and math.isfinite(base_mean) else math.nan
        entry["case_std_change"] = rows[name]["dice"]["case_std"] - rows[baseline]["dice"]["case_std"]
        entry["gap_closed"] = delta / reference_gain if reference_gain > 0 else math.nan
        if chosen and name not in controls and name != reference:
            entry["vs_best_control"] = _paired(_seed_averaged(by_setting[name], "dice"), control_scores)
        paired[name] = entry
    compact_runs = [
        {k: r[k] for k in ("fold", "seed", "setting", "run")}
        | {"case_dice": _case_scores(r["metrics"], "dice"),
           "val_dice": _validation_dice(r),
           "still_rising": r["metrics"].get("training", {}).get("still_rising"),
           "steps": r["metrics"].get("training", {}).get("steps")}
        for r in runs
    ]
    return {"unit": "real test case (seeds averaged within a case); foreground-mean metric", "baseline": baseline,
            "reference": reference, "controls": list(controls), "best_control": chosen, "order": list(settings),
            "settings": rows, "paired": paired, "runs": compact_runs}


def setting_order(results: dict[str, Any]) -> list[str]:
    """Row order of a results dict (JSON files sort their keys, so the order is stored apart)."""
    return list(results.get("order") or results["settings"])


def _fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_p(value: float) -> str:
    """p-values: three decimals down to 0.001, then two significant digits (never a bare 0.000)."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _row_cells(results: dict[str, Any], name: str) -> list[str]:
    row = results["settings"][name]
    dice = row["dice"]
    cells = [name, str(row["cases"]), str(row["runs"]), f"{_fmt(dice['mean'])} ± {_fmt(dice['run_std'])}"]
    pair = results["paired"].get(name)
    best = (pair or {}).get("vs_best_control")
    if best is None:
        cells += ["—", "—"]
    else:
        cells += [_fmt(best["mean"], signed=True), f"[{_fmt(best['ci_low'], signed=True)}, {_fmt(best['ci_high'], signed=True)}]"]
    cells += [_fmt(dice["case_std"]), _fmt(row["hd95"]["mean"], 1)]
    if pair is None:
        cells += ["—"] * 6
    else:
        d = pair["dice"]
        cells += [
            _fmt(d["mean"], signed=True),
            f"[{_fmt(d['ci_low'], signed=True)}, {_fmt(d['ci_high'], signed=True)}]",
            _fmt_p(d["p_wilcoxon"]),
            "n/a" if not math.isfinite(pair["relative_gain"]) else f"{100 * pair['relative_gain']:+.1f}%",
            _fmt(pair["case_std_change"], signed=True),
            "n/a" if not math.isfinite(pair["gap_closed"]) else f"{100 * pair['gap_closed']:.0f}%",
        ]
    cells.append(f"{row['still_rising']}/{row['runs']}")
    return cells


HEADERS = ["setting", "cases", "runs", "Dice", "Δ vs best control", "CI (control)", "case std", "HD95 px", "ΔDice",
           "95% CI", "p", "rel. gain", "Δ case std", "gap closed", "still rising"]


def headline(results: dict[str, Any]) -> str:
    """One line saying what the numbers rest on (cases, folds, seeds, the shared step budget)."""
    base = results["settings"][results["baseline"]]
    budget = results.get("budget", {})
    steps = f"{budget['steps']} optimiser steps of batch {budget['batch_size']} per run" if budget else ""
    line = (f"{_count(base['cases'], 'real test case')} from {_count(base['folds'], 'fold')}, "
            f"{_count(base['seeds'], 'seed')} per setting" + (f"; {steps}, every setting" if steps else ""))
    chosen = results.get("best_control") or {}
    if chosen:
        picks = ", ".join(f"fold {fold}: {choice['chosen']}" for fold, choice in sorted(chosen.items(), key=lambda i: int(i[0])))
        line += f"; best free control by validation Dice ({picks})"
    return line


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


LEGEND = (
    "Unit: the real test case; seeds are averaged within a case first. Dice: mean over cases ± std over runs "
    "(training noise). Δ vs best control (the headline): paired Dice difference over test cases vs the better free "
    "control (heavy augmentation or self-training) of each fold, chosen on the fold's validation cases, with its "
    "percentile-bootstrap 95% CI over cases. case std: Dice std across test cases (per-patient variability); HD95: mean over cases. "
    "ΔDice: paired difference vs baseline over test cases, percentile-bootstrap 95% CI over cases; p: Wilcoxon "
    "signed-rank over cases (with n cases no p can be below 2/2^n). rel. gain: ΔDice / baseline Dice. gap closed: "
    "ΔDice / (all-labelled − baseline). still rising: runs whose smoothed validation Dice still rose over the last "
    "fifth of training (not converged)."
)


def caveats(results: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the table: test or validation cases that hold
    (almost) none of a class, and the (test case, class) pairs left out for an empty reference."""
    notes = list(results.get("fold_warnings", []))
    empty = results["settings"][results["baseline"]].get("empty_reference", 0)
    if empty:
        notes.append(f"{_count(empty, '(test case, class) pair')} with an empty reference left out of the class's "
                     "mean (nnU-Net's convention), not scored 0 or 1")
    return notes


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """The benchmark table's formatted cells, one list per row in :data:`HEADERS` order: built once,
    then rendered for the terminal (:func:`rich_table`), as Markdown (:func:`markdown_table`) and in
    the HTML report."""
    return [_row_cells(results, name) for name in setting_order(results)]


def rich_table(results: dict[str, Any]) -> Table:
    """The benchmark table for the terminal."""
    table = Table(title=f"segsynth benchmark: {headline(results)}",
                  caption="\n".join([LEGEND, *(f"warning: {note}" for note in caveats(results))]))
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "setting" else "right", no_wrap="CI" not in header)
    for row in table_rows(results):
        table.add_row(*row)
    return table


def markdown_table(results: dict[str, Any]) -> str:
    """The same table as GitHub Markdown (written to ``results.md``), under its headline."""
    lines = [headline(results) + ".", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    lines.append("")
    lines.append(LEGEND)
    notes = caveats(results)
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"
