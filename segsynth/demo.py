"""The demo: the whole loop on the built-in real data, on CPU, in minutes.

1. build the three built-in datasets, check them and print their summary;
2. on ``nuclei-fluo``, fold 0 of a case split: train a small layout+style diffusion model on the
   fold's labelled training cases only, save its sample grid, generate a synthetic set in the
   style of unlabelled (never-seen) images and export it for nnU-Net;
3. benchmark real-only vs real + synthetic segmentation on the fold's held-out test cases
   (low-label regime, 2 seeds): every run trains the same planned number of optimiser steps, the
   two free controls "baseline + heavy augmentation" and "self-training" stand beside the synthetic
   settings, and the table rests on the real test cases, which its headline counts (the
   all-labelled reference row of the full benchmark is left out so the demo fits its 15 minutes);
4. measure the synthetic set (layout fidelity, zero-shot style retrieval, FID/KID, diversity) and
   write one self-contained HTML report of everything.

Every stage writes an ordinary run folder under ``out``; re-running the demo continues where it
stopped instead of starting over.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from segsynth.artifacts.names import (
    BENCHMARK_DIR,
    DATASET_JSON,
    EVALUATION_DIR,
    METRICS_JSON,
    REPORT_HTML,
    RESULTS_MD,
    SAMPLES_DIR,
)
from segsynth.artifacts.schemas import read_metrics
from segsynth.benchmark import BenchmarkConfig, fold_generator, headline, quick_profile, rich_table, run_benchmark
from segsynth.benchmark.recipes import BASELINE, seg_run_dir
from segsynth.config import parse_config
from segsynth.console import LogConsole
from segsynth.data.builtin import BUILTIN_DATASETS, build_builtin
from segsynth.data.check import check_dataset
from segsynth.data.info import dataset_info
from segsynth.data.nnunet import NNUNET_JSON, export_nnunet
from segsynth.evaluation import evaluate_synth
from segsynth.evaluation.table import metrics_table
from segsynth.report import build_report

#: The demo's diffusion recipe (CPU, 64 px), shipped with the package (:mod:`segsynth.recipes`).
TINY_CONFIG = "tiny"
DEMO_DATASET = "nuclei-fluo"
#: Diffusion steps of the demo's generator: what fits the 15-minute budget on 2 CPU cores (300 before
#: the faster data path and bf16 sampling paid for twice as many).
DEMO_DIFFUSION_STEPS = 600


#: ``--smoke``: every stage at toy sizes (a denoiser of two 8/16-channel levels trained 2 steps,
#: 4-step segmentation runs, one seed), to check the whole loop in a few minutes; its numbers mean nothing.
SMOKE_PROFILE: dict[str, Any] = {
    "seeds": [0],
    "diffusion_overrides": {
        "model.block_out_channels": [8, 16], "model.attention_levels": [False, True], "model.layers_per_block": 1,
        "model.style.encoder_channels": [8, 16], "model.style.dim": 16, "train.steps": 2, "train.warmup": 1,
        "train.sample_every": 0,
    },
    "segmentation_overrides": {"train.steps": 4, "train.val_every": 2, "network.channels": [8, 16], "network.strides": [2]},
    "generation": {"n": 4, "steps": 2, "per_mask": 1, "batch_size": 4},
}


def demo_benchmark_config(smoke: bool = False) -> BenchmarkConfig:
    """Quick profile on fold 0 only, 2 labelled cases (1 for training, 1 for validation), with the
    tiny diffusion recipe; the segmentation budget is the benchmark's planned one.

    Args:
        smoke: use :data:`SMOKE_PROFILE` on top (the test of the demo itself).
    """
    profile: dict[str, Any] = quick_profile()
    profile.update(
        run_folds=[0],
        seeds=[0, 1],
        controls=["heavy_augmentation", "self_training"],
        low_label=2,
        diffusion_config=TINY_CONFIG,
        diffusion_overrides={"train.steps": DEMO_DIFFUSION_STEPS, "train.sample_every": 0},
    )
    if smoke:
        profile.update(SMOKE_PROFILE)
    return parse_config(BenchmarkConfig, profile, "demo smoke profile" if smoke else "demo profile")


def _dataset_table(rows: list[dict[str, Any]]) -> Table:
    columns = ("dataset", "labels", "provenance", "cases", "labelled", "unlabelled", "size", "class fractions", "check")
    table = Table(title="built-in datasets")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(row[c]) for c in columns])
    return table


def build_data(out: Path, console: Console) -> dict[str, Path]:
    """Stage 1: built-in datasets, checked and fingerprinted."""
    roots, rows = {}, []
    for name in BUILTIN_DATASETS:
        root = out / "data" / name
        if not (root / DATASET_JSON).is_file():
            build_builtin(name, root)
        report = check_dataset(root)
        if not report.ok:
            raise ValueError(f"{root}: built-in dataset failed its check: {report.errors[0]}")
        info = dataset_info(root)
        roots[name] = root
        rows.append(
            {
                "dataset": name,
                "labels": ", ".join(info["labels"]),
                "provenance": info["label_provenance"],
                "cases": info["num_cases"],
                "labelled": info["num_images"],
                "unlabelled": info["num_unlabeled"],
                "size": f"{info['image_size']['height']['median']:.0f} px",
                "class fractions": ", ".join(f"{k} {v:.2f}" for k, v in info["class_fractions"].items()),
                "check": "ok",
            }
        )
    console.print(_dataset_table(rows))
    return roots


def run_demo(out: str | Path, console: Console | None = None, smoke: bool = False) -> dict[str, Any]:
    """Run every stage into ``out`` (see module docstring); return the benchmark results.

    ``smoke`` runs the same stages at toy sizes (:data:`SMOKE_PROFILE`)."""
    console = console or LogConsole()
    out = Path(out)
    start = time.perf_counter()

    def stage(title: str) -> None:
        console.rule(f"[bold]{title}[/]  (t = {time.perf_counter() - start:.0f} s)")

    stage("1/4 built-in real datasets")
    data = build_data(out, console)[DEMO_DATASET]
    bench, cfg = out / BENCHMARK_DIR, demo_benchmark_config(smoke)

    stage(f"2/4 generator for {DEMO_DATASET}, fold 0: layout + style diffusion, synthetic set in unseen styles")
    run, synth, _ = fold_generator(data, bench, cfg, fold=0, console=console)
    grids = sorted((run / SAMPLES_DIR).glob("*.png"))
    console.print(f"diffusion run: {run}")
    console.print(f"sample grid (layout | style refs | sample): {grids[-1] if grids else 'none'}")
    nnunet = out / "nnUNet_raw" / "Dataset501_NucleiFluoSyn"
    if not (nnunet / NNUNET_JSON).is_file():
        export_nnunet(synth, nnunet, merge_real=data)
    console.print(f"synthetic set: {synth}  ·  nnU-Net export (real + syn_ cases): {nnunet}")

    stage(f"3/4 benchmark at equal step budgets: real only, controls and + synthetic, fold 0 test cases, "
          f"{len(cfg.seeds)} seed(s)")
    results = run_benchmark(data, cfg, bench, console=console)
    console.print(rich_table(results))
    console.print(f"[bold]{headline(results)}[/]; baseline runs still rising at the end: "
                  f"{results['settings']['baseline']['still_rising']} of {results['settings']['baseline']['runs']}")
    console.print(f"benchmark: {bench / RESULTS_MD}")

    stage("4/4 generator fidelity and the report")
    # The baseline network (real data of fold 0 only) judges the layouts: it never saw a synthetic image.
    saved = read_metrics(synth / EVALUATION_DIR / METRICS_JSON)
    fidelity = saved.model_dump() if saved is not None else evaluate_synth(
        synth, data, seg_run=seg_run_dir(bench, 0, BASELINE, 0), console=console
    )
    console.print(metrics_table(fidelity))
    report = build_report([out], out / REPORT_HTML, title="segsynth demo")
    console.print(f"report: {report}")
    stage("done")
    return results
