"""The demo: the whole loop on the built-in real data, on CPU, in minutes.

1. build the three built-in datasets, check them and print their summary;
2. train a small layout+style diffusion model on ``nuclei-fluo`` and save a sample grid;
3. generate a synthetic set in the style of unlabelled (never-seen) images and export it for nnU-Net;
4. run a quick benchmark (baseline vs synthetic settings, case folds, 3 seeds) and print the table.

Every stage writes an ordinary run folder under ``out``; re-running the demo continues where it
stopped instead of starting over.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from segsynth.benchmark import BenchmarkConfig, quick_profile, rich_table, run_benchmark
from segsynth.config import load_config, parse_config
from segsynth.data.builtin import BUILTIN_DATASETS, build_builtin
from segsynth.data.check import check_dataset
from segsynth.data.info import dataset_info
from segsynth.data.nnunet import export_nnunet
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.train import train_diffusion
from segsynth.synth.generate import generate

#: The demo's diffusion recipe: ``configs/tiny.yaml`` when run from a checkout, else the defaults.
TINY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
DEMO_DATASET = "nuclei-fluo"


def _dataset_table(rows: list[dict]) -> Table:
    table = Table(title="built-in datasets")
    for column in ("dataset", "labels", "provenance", "cases", "labelled", "unlabelled", "size", "class fractions", "check"):
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(row[c]) for c in ("dataset", "labels", "provenance", "cases", "labelled", "unlabelled", "size", "fractions", "check")])
    return table


def build_data(out: Path, console: Console) -> dict[str, Path]:
    """Stage 1: built-in datasets, checked and fingerprinted."""
    roots, rows = {}, []
    for name in BUILTIN_DATASETS:
        root = out / "data" / name
        if not (root / "dataset.json").is_file():
            build_builtin(name, root)
        report = check_dataset(root)
        info = dataset_info(root)
        roots[name] = root
        height = info["image_size"]["height"]
        rows.append(
            {
                "dataset": name,
                "labels": ", ".join(info["labels"]),
                "provenance": info["label_provenance"],
                "cases": info["num_cases"],
                "labelled": info["num_images"],
                "unlabelled": info["num_unlabeled"],
                "size": f"{height['median']:.0f} px",
                "fractions": ", ".join(f"{k} {v:.2f}" for k, v in info["class_fractions"].items()),
                "check": "ok" if report.ok else f"{len(report.errors)} errors",
            }
        )
        if not report.ok:
            raise ValueError(f"{root}: built-in dataset failed its check: {report.errors[0]}")
    console.print(_dataset_table(rows))
    return roots


def run_demo(out: str | Path, console: Console | None = None, benchmark: bool = True) -> None:
    """Run every stage into ``out`` (see module docstring)."""
    console = console or Console()
    out = Path(out)
    start = time.perf_counter()

    def stage(title: str) -> None:
        console.rule(f"[bold]{title}[/]  (t = {time.perf_counter() - start:.0f} s)")

    stage("1/4 built-in real datasets")
    roots = build_data(out, console)
    data = roots[DEMO_DATASET]

    stage("2/4 layout + style diffusion model on nuclei-fluo")
    cfg = load_config(DiffusionTrainConfig, TINY_CONFIG if TINY_CONFIG.is_file() else None)
    run = out / "runs" / "diffusion"
    if not (run / "pipeline" / "model_index.json").is_file():
        train_diffusion(data, cfg, run, resume=(run / "checkpoints").is_dir(), console=console)
    grids = sorted((run / "samples").glob("*.png"))
    console.print(f"diffusion run: {run}  sample grid (layout | style refs | sample): {grids[-1] if grids else 'none'}")

    stage("3/4 synthetic set in unseen styles, exported for nnU-Net")
    synth = out / "synth" / DEMO_DATASET
    if not (synth / "manifest.jsonl").is_file():
        generate(run, synth, 32, layouts="augmented", steps=20, batch_size=16, resume=synth.exists(), console=console)
    nnunet = out / "nnUNet_raw" / "Dataset501_NucleiFluoSyn"
    if not (nnunet / "dataset.json").is_file():
        export_nnunet(synth, nnunet, merge_real=data)
    console.print(f"synthetic set: {synth}  nnU-Net export (real + syn_): {nnunet}")

    if benchmark:
        stage("4/4 quick benchmark: real only vs + synthetic (case folds x 3 seeds)")
        bench_cfg = parse_config(BenchmarkConfig, quick_profile() | {"diffusion_config": str(TINY_CONFIG) if TINY_CONFIG.is_file() else None})
        results = run_benchmark(data, out / "benchmark", bench_cfg, console=console)
        console.print(rich_table(results))
        console.print(f"benchmark: {out / 'benchmark' / 'results.md'}")
    stage("done")
