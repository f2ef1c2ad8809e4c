"""Does the fast CPU path learn what fp32 learns? Loss curves at equal steps, three seeds.

For each seed, ``train_diffusion`` (the library entry point, unchanged) trains the tiny recipe on
the built-in brain-mri data twice: ``fp32`` (``train.mixed_precision: no``) and ``default``
(``auto``: bf16 autocast on a CPU with native bf16; fused AdamW and the foreach EMA in both). One
seed fixes data order, noise, timesteps and condition drops, so the two runs of a seed see the
same draws and differ only by the arithmetic. The loss is the min-SNR weighted loss from
``train_log.jsonl`` (each point the mean of ``log_every`` steps).

What "within run-to-run noise" means here: the seed-to-seed spread of fp32 itself. For the mean
loss over the last half of the run: ``noise`` = the standard deviation of it over the fp32 seeds;
``gap`` = the mean over seeds of (default - fp32), paired by seed. The fast path passes when
``|gap| <= noise``, and the same per logged point (``|mean default - mean fp32|`` against the fp32
seeds' standard deviation at that point) is recorded as the share of points within it.

Run: ``.venv/bin/python benchmarks/fast_path_quality.py`` (3 seeds x 2 precisions x 150 steps at
batch 4, 1 thread: about 5 minutes on two free cores). Writes
``benchmarks/results/fast_path_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import TINY, builtin_data, record_header, save_result, table_console
from rich.table import Table

from segsynth.config import load_config
from segsynth.device import resolve_mixed_precision
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.train import train_diffusion

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": "no", "default": "auto"}


def curve(run: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fast_path_quality.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the library keeps an explicit setting
    torch.set_num_threads(args.threads)
    console = table_console(132)
    data = builtin_data()
    work = Path(tempfile.mkdtemp(prefix="segsynth-quality-"))
    curves: dict[str, dict[int, dict[int, float]]] = {name: {} for name in PRECISIONS}
    for seed in args.seeds:
        for name, precision in PRECISIONS.items():
            cfg = load_config(DiffusionTrainConfig, TINY, {
                "train.steps": args.steps, "train.batch_size": args.batch_size, "train.seed": seed,
                "train.log_every": args.log_every, "train.sample_every": 0, "train.checkpoint_every": args.steps,
                "train.mixed_precision": precision})
            run = train_diffusion(data, cfg, work / f"{name}-seed{seed}")
            curves[name][seed] = curve(run)
            console.print(f"seed {seed} {name}: final logged loss {curves[name][seed][args.steps]:.4f}")
    steps = sorted(curves["fp32"][args.seeds[0]])
    late = [s for s in steps if s > args.steps // 2]

    def late_mean(name: str, seed: int) -> float:
        return statistics.mean(curves[name][seed][s] for s in late)

    fp32_late = [late_mean("fp32", s) for s in args.seeds]
    default_late = [late_mean("default", s) for s in args.seeds]
    noise = statistics.stdev(fp32_late)
    gap = statistics.mean(d - f for d, f in zip(default_late, fp32_late))
    points = []
    for s in steps:
        f = [curves["fp32"][seed][s] for seed in args.seeds]
        d = [curves["default"][seed][s] for seed in args.seeds]
        points.append({"step": s, "fp32_mean": statistics.mean(f), "fp32_std": statistics.stdev(f),
                       "default_mean": statistics.mean(d), "default_std": statistics.stdev(d)})
    within = sum(abs(p["default_mean"] - p["fp32_mean"]) <= p["fp32_std"] for p in points) / len(points)
    table = Table(title=f"tiny recipe, {args.steps} steps, batch {args.batch_size}: mean loss of steps "
                        f"{late[0] - args.log_every + 1}-{args.steps}")
    for col in ("seed", "fp32", f"default ({resolve_mixed_precision('auto')})", "default - fp32"):
        table.add_column(col, justify="right")
    for seed, f, d in zip(args.seeds, fp32_late, default_late):
        table.add_row(str(seed), f"{f:.4f}", f"{d:.4f}", f"{d - f:+.4f}")
    console.print(table)
    verdict = abs(gap) <= noise
    console.print(f"paired gap {gap:+.4f} vs fp32 seed-to-seed std {noise:.4f}: "
                  f"{'within' if verdict else 'OUTSIDE'} run-to-run noise; {within:.0%} of logged points within "
                  "one fp32 std")
    result = {
        **record_header("fast_path_quality", argv),
        "config": str(TINY.relative_to(ROOT)), "steps": args.steps, "batch_size": args.batch_size,
        "log_every": args.log_every, "seeds": args.seeds, "threads": args.threads,
        "default_resolves_to": resolve_mixed_precision("auto"),
        "late_window_steps": [late[0] - args.log_every + 1, args.steps],
        "late_mean_loss": {"fp32": fp32_late, "default": default_late},
        "fp32_seed_std": noise, "paired_gap_default_minus_fp32": gap, "within_noise": verdict,
        "share_of_points_within_one_fp32_std": within,
        "points": points,
        "curves": {name: {str(seed): {str(k): v for k, v in c.items()} for seed, c in per.items()}
                   for name, per in curves.items()},
    }
    return save_result(args.out, result, console)


if __name__ == "__main__":
    main()
