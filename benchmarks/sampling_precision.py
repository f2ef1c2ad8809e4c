"""Sampling in bf16: speed and layout fidelity against fp32, on one trained model.

One model (the ``tiny`` recipe unless ``--config``) is trained on a dataset, or reused from
``--work``; three settings then generate the same ``-n`` layouts with the same style references and
noise (same seed), and ``evaluate_synth`` scores each set with one segmentation network trained
once on the real data (``sampler_steps.measure``):

- DPM-Solver++ 20 steps, fp32: the sampling the speed issue started from;
- DPM-Solver++ 10 steps, fp32: ``generate``'s default sampler before this benchmark;
- DPM-Solver++ 10 steps, bf16 autocast: ``generate``'s default now (``mixed_precision: auto`` on a
  CPU with native bf16).

Speed is the process CPU time per image (one thread unless ``--threads``; robust on a machine
shared with other work) with the wall time beside it; quality is the layout fidelity (foreground
Dice of the real-data network on the synthetic images against their layouts), FID / KID against
real tiles, and zero-shot style retrieval. The gate: bf16's fidelity within ``--tolerance`` (0.01)
of fp32 at the same sampler and steps.

Run: ``.venv/bin/python benchmarks/sampling_precision.py --data DATA/nuclei-fluo --work /tmp/precision``
(about 15 minutes on one CPU core; the data from ``segsynth data builtin nuclei-fluo DATA/nuclei-fluo``);
writes ``benchmarks/results/sampling_precision.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from common import command_line, cpu_model_name, train_unless_done, write_json
from rich.console import Console
from rich.table import Table
from sampler_steps import measure

from segsynth.artifacts.names import PIPELINE_DIR
from segsynth.config import load_config
from segsynth.device import cpu_flags, sampling_precision
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.pipeline import SegSynthPipeline

ROOT = Path(__file__).resolve().parents[1]
#: (sampler, steps, style guidance, generate's mixed_precision): the starting point first.
SETTINGS: list[tuple[str, int, float, str]] = [
    ("dpmpp", 20, 1.5, "no"),
    ("dpmpp", 10, 1.5, "no"),
    ("dpmpp", 10, 1.5, "bf16"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder with unlabeled/ (segsynth data builtin)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the model, the sets and their scores")
    parser.add_argument("--config", type=Path, default=ROOT / "segsynth" / "recipes" / "tiny.yaml")
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("-n", type=int, default=48, help="samples per setting")
    parser.add_argument("--tolerance", type=float, default=0.01, help="fidelity (Dice) bf16 may lose against fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "sampling_precision.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work, data = args.work.resolve(), args.data.resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    cfg = load_config(DiffusionTrainConfig, args.config, {"train.steps": args.train_steps})
    train_s = train_unless_done(data, cfg, run, console=Console(stderr=True))
    pipe = SegSynthPipeline.from_pretrained(str(run / PIPELINE_DIR))
    pipe.set_progress_bar_config(disable=True)
    rows: list[dict[str, Any]] = []
    seg_run: Path | None = None
    for sampler, steps, guidance, precision in SETTINGS:
        rows.append(measure(pipe, data, work, args.n, (sampler, steps, guidance), seg_run, precision))
        seg_run = Path(rows[0]["seg_run"])  # one real-data network scores every set
        print(json.dumps(rows[-1]), flush=True)
    start, fp32, bf16 = rows
    result = {
        "benchmark": "sampling_precision",
        "command": command_line("sampling_precision", argv),
        "cpu": cpu_model_name(), "cpu_flags": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512f"}),
        "auto_precision_here": sampling_precision("auto", torch.device("cpu")),
        "data": str(data), "config": str(args.config), "train_steps": args.train_steps, "train_s": train_s,
        "n": args.n, "torch_threads": torch.get_num_threads(), "clock": "process CPU time per image",
        "rows": rows,
        "bf16_vs_fp32": {"speedup": fp32["cpu_seconds_per_image"] / bf16["cpu_seconds_per_image"],
                         "fidelity_change": bf16["fidelity_dice"] - fp32["fidelity_dice"],
                         "within_tolerance": abs(bf16["fidelity_dice"] - fp32["fidelity_dice"]) <= args.tolerance,
                         "tolerance": args.tolerance},
        "default_vs_start": {"speedup": start["cpu_seconds_per_image"] / bf16["cpu_seconds_per_image"],
                             "fidelity_change": bf16["fidelity_dice"] - start["fidelity_dice"]},
    }
    write_json(args.json, result)
    table = Table(title=f"sampling precision on {data.name}: {args.n} samples each, one model ({args.train_steps} steps)")
    for column in ("sampler", "steps", "precision", "UNet rows/img", "CPU s/img", "wall s/img", "fidelity Dice",
                   "ceiling", "FID", "retrieval"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["sampler"], str(r["steps"]), r["mixed_precision"], f"{r['unet_rows_per_image']:.0f}",
                      f"{r['cpu_seconds_per_image']:.3f}", f"{r['seconds_per_image']:.3f}", f"{r['fidelity_dice']:.3f}",
                      f"{r['ceiling_dice']:.3f}", f"{r['fid']:.4f}", f"{r['retrieval_pairwise']:.3f}")
    console = Console(width=160)
    console.print(table)
    console.print(f"bf16 vs fp32 (DPM-Solver++ 10): {result['bf16_vs_fp32']}")
    console.print(f"default now vs DPM-Solver++ 20 fp32: {result['default_vs_start']}")
    return result


if __name__ == "__main__":
    main()
