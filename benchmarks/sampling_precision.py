"""Sampling in bf16: speed and layout fidelity against fp32, on one trained model.

One model (the ``tiny`` recipe unless ``--config``) is trained on a dataset, or reused from
``--work``; three settings then generate the same ``-n`` layouts with the same style references and
noise (same seed), and ``evaluate_synth`` scores each set with one segmentation network trained
once on the real data (``sampler_steps.measure_all``):

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

from pathlib import Path
from typing import Any

import torch
from common import command_line, cpu_model_name, write_json
from rich.console import Console
from rich.table import Table
from sampler_steps import measure_all, sampling_parser, trained_pipeline

from segsynth.device import cpu_flags, sampling_precision

ROOT = Path(__file__).resolve().parents[1]
#: ((sampler, steps, style guidance), generate's mixed_precision): the starting point first.
SETTINGS: list[tuple[tuple[str, int, float], str]] = [
    (("dpmpp", 20, 1.5), "no"),
    (("dpmpp", 10, 1.5), "no"),
    (("dpmpp", 10, 1.5), "bf16"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = sampling_parser(__doc__.splitlines()[0], train_steps=400, tolerance=0.01, name="sampling_precision")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or 1)
    data = args.data.resolve()
    pipe, train_s = trained_pipeline(data, args.work.resolve(), args.config, args.train_steps)
    start, fp32, bf16 = rows = measure_all(pipe, data, args.work.resolve(), args.n, SETTINGS)
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
