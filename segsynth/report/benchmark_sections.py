"""Report parts of benchmarks and of a ``segsynth run``'s outcome: the first-screen answer (ΔDice per
setting), the full results table with per-case Dice plots, and the final network handed over."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segsynth.artifacts.names import (
    BENCHMARK_YAML,
    FINAL_DIR,
    FOLD_DIR,
    METRICS_JSON,
    MODEL_CARD_JSON,
    RESULTS_JSON,
    SEED_DIR,
    SEG_RUNS_DIR,
)
from segsynth.artifacts.schemas import BenchmarkResults, read_record
from segsynth.benchmark.summary import HEADERS, LEGEND, headline, table_rows
from segsynth.io.json_file import read_json_object
from segsynth.report import figures
from segsynth.report.context import ReportContext
from segsynth.report.html import heading, image, paragraph, preformatted, table

#: Columns of the benchmark table shown on the report's first screen.
ANSWER_COLUMNS = ("setting", "cases", "runs", "Dice", "Δ vs best control", "CI (control)", "ΔDice", "95% CI", "p",
                  "rel. gain", "Δ case std", "gap closed", "still rising")


def benchmark(report: ReportContext, bench: Path) -> None:
    section = report.sections["benchmark"]
    section.add(heading(f"benchmark {report.rel(bench)}"))
    results_path = bench / RESULTS_JSON
    per_setting: dict[str, list[float]] = {}
    if results_path.is_file():
        record = read_record(results_path, BenchmarkResults)
        results = record.model_dump()
        report.dataset(record.data, "benchmark data (real)")
        section.add(paragraph(headline(results)), table(HEADERS, table_rows(results)), paragraph(LEGEND))
        for run in record.runs:
            per_setting.setdefault(run["setting"], []).extend(run.get("case_dice", {}).values())
    else:
        section.add(paragraph(f"no {RESULTS_JSON} yet (benchmark unfinished): per-case Dice from the finished runs' "
                              f"{METRICS_JSON}"))
        pattern = f"{FOLD_DIR.format(fold='*')}/{SEG_RUNS_DIR}/*/{SEED_DIR.format(seed='*')}/{METRICS_JSON}"
        for metrics_path in sorted(bench.glob(pattern)):
            metrics = read_json_object(metrics_path)
            setting = metrics_path.parent.parent.name
            for values in metrics.get("per_case", {}).values():
                per_setting.setdefault(setting, []).append(float(np.mean(list(values["dice"].values()))))
    if per_setting:
        counts = ", ".join(f"{name}: {len(v)}" for name, v in per_setting.items())
        section.add(image(
            figures.case_dice_plot(per_setting, "per-case Dice (test cases × folds × seeds)"),
            "per-case Dice per setting",
            f"box: quartiles; dots: one test case of one run; red bar: mean. Points per setting: {counts}",
        ))
    if (bench / BENCHMARK_YAML).is_file():
        report.sections["configs"].add(
            preformatted((bench / BENCHMARK_YAML).read_text(encoding="utf-8"), f"benchmark {report.rel(bench)}: {BENCHMARK_YAML}")
        )


def answer(report: ReportContext, bench: Path) -> None:
    """The first screen: what each setting did to Dice, and what that rests on."""
    results_path = bench / RESULTS_JSON
    if not results_path.is_file():
        return
    record = read_record(results_path, BenchmarkResults)
    results = record.model_dump()
    for run in record.runs:
        report.setting_of[Path(run["run"]).resolve()] = run["setting"]
    rows = table_rows(results)
    keep = [HEADERS.index(c) for c in ANSWER_COLUMNS]
    data = Path(record.data or bench).name
    report.sections["answer"].add(
        heading(f"{data} ({report.rel(bench)})"),
        paragraph(headline(results) + "."),
        table([HEADERS[i] for i in keep], [[row[i] for i in keep] for row in rows]),
    )


def final(report: ReportContext, run: Path) -> None:
    """The network a ``segsynth run`` hands over: which setting, why, and how to apply it."""
    card_path = run / FINAL_DIR / MODEL_CARD_JSON
    if not card_path.is_file():
        return
    card = read_json_object(card_path)
    report.sections["answer"].add(
        heading(f"final network ({report.rel(run / FINAL_DIR)})"),
        paragraph(f"Trained with {card['setting']}: {card['why']}."),
        paragraph(f"Apply it: {card['use']}"),
    )
