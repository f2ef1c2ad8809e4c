"""``segsynth run DATA -o RUN``: the whole loop on a user's folder, planned, resumable, ending in a report.

Stages, each skipped when its output is already there, so the same command continues a killed run:

1. ``RUN/plan.json`` (:mod:`segsynth.run.plan`): written once; an existing one, edited or not, is
   what later stages follow (the benchmark folder refuses a plan changed after it started);
2. ``RUN/benchmark/``: :func:`segsynth.benchmark.run_benchmark` with the plan's config: per-fold
   generators, synthetic sets, every setting at the same step budget, scored by test case;
3. ``RUN/evaluation/``: :func:`segsynth.evaluation.evaluate_synth` of the first run fold's synthetic
   set, judged by that fold's real-only baseline network (which never saw a synthetic image);
4. ``RUN/final/``: the deliverables (:mod:`segsynth.run.final`): the network of the setting the
   benchmark chose, trained on the labelled cases at the benchmark's step budget (with a generator
   and synthetic set of its own when a synthetic setting beat the best free control), and its
   model card; ``segsynth predict RUN/final IMAGES -o MASKS`` applies it;
5. ``RUN/report.html``: :func:`segsynth.report.build_report` of the whole folder, rebuilt only when
   it is older than the results it shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from segsynth.artifacts.names import (
    BENCHMARK_DIR,
    EVALUATION_DIR,
    METRICS_JSON,
    MODEL_CARD_JSON,
    PLAN_JSON,
    REPORT_HTML,
    RESULTS_JSON,
    SYNTH_DIR,
)
from segsynth.artifacts.schemas import BenchmarkResults, read_record
from segsynth.benchmark import BenchmarkConfig, run_benchmark
from segsynth.benchmark.recipes import BASELINE, fold_dir, seg_run_dir
from segsynth.evaluation import evaluate_synth
from segsynth.report import build_report
from segsynth.run.final import train_final
from segsynth.run.plan import Device, RunPlan, benchmark_config, load_plan, plan_run, save_plan


def open_plan(data: Path, out: Path, console: Console, device: Device | None = None) -> RunPlan:
    """The run's plan: ``out/plan.json`` when it exists (the user may have edited it), else a new one
    for ``device`` (default: what torch finds).

    Raises:
        ValueError: the saved plan was made for another dataset folder.
    """
    path = out / PLAN_JSON
    if path.is_file():
        plan = load_plan(path)
        if Path(plan.data) != data.resolve():
            raise ValueError(f"{path}: planned for {plan.data}, not {data.resolve()}; use a new --out")
        console.print(f"plan: {path} (saved; edits count until the benchmark starts, then use a new --out)")
        return plan
    plan = plan_run(data, device)
    out.mkdir(parents=True, exist_ok=True)
    save_plan(plan, path)
    console.print(f"plan: {path} (new, for {plan.device}); every choice says why")
    return plan


def _finished(results: Path, cfg: BenchmarkConfig) -> bool:
    """Whether ``results.json`` (written last by the benchmark) is there for this very config."""
    return results.is_file() and read_record(results, BenchmarkResults).config == cfg.model_dump(mode="json")


def _stale(target: Path, sources: list[Path]) -> bool:
    return not target.is_file() or any(s.stat().st_mtime_ns > target.stat().st_mtime_ns for s in sources)


def run_all(data: str | Path, out: str | Path, plan_only: bool = False, device: Device | None = None,
            console: Console | None = None) -> dict[str, Any]:
    """Plan (or re-read the plan), then run or continue every stage into ``out``.

    Args:
        data: dataset folder with labelled images and an ``unlabeled/`` style pool.
        out: the run folder.
        plan_only: stop after writing ``plan.json``.
        device: plan for ``cpu`` or ``cuda`` instead of the device found (a saved plan keeps its own).
        console: progress messages (default: stderr).

    Returns:
        ``{"plan": path, ...}`` plus ``benchmark``, ``evaluation``, ``final`` (its model card) and
        ``report`` paths when run.
    """
    console = console or Console(stderr=True)
    data, out = Path(data), Path(out)
    plan = open_plan(data, out, console, device)
    cfg = benchmark_config(plan)
    paths: dict[str, Any] = {"plan": out / PLAN_JSON}
    if plan_only:
        return paths

    console.rule("[bold]benchmark[/]: generators per fold, synthetic sets, segmentation at equal budgets")
    bench = out / BENCHMARK_DIR
    paths["benchmark"] = bench / RESULTS_JSON
    if not _finished(paths["benchmark"], cfg):
        run_benchmark(data, cfg, bench, console=console)

    fold = (cfg.run_folds or [0])[0]
    evaluation = out / EVALUATION_DIR
    if not (evaluation / METRICS_JSON).is_file():
        console.rule(f"[bold]synthetic set of fold {fold}[/]: layout fidelity, style retrieval, FID/KID, diversity")
        baseline = seg_run_dir(bench, fold, BASELINE, cfg.seeds[0])
        evaluate_synth(fold_dir(bench, fold) / SYNTH_DIR, data, seg_run=baseline, out=evaluation, console=console)
    paths["evaluation"] = evaluation / METRICS_JSON

    console.rule("[bold]final network[/]: the benchmark's choice, trained on the labelled cases")
    final = train_final(data, out, plan, cfg, console)
    paths["final"] = final / MODEL_CARD_JSON
    console.print(f"final network: {final} (segsynth predict {final} IMAGES -o MASKS)")

    report = out / REPORT_HTML
    if _stale(report, [paths["benchmark"], paths["evaluation"], paths["final"]]):
        build_report([out], report, title=f"segsynth run: {plan.fingerprint['name']}")
    paths["report"] = report
    console.print(f"report: {report}")
    return paths
