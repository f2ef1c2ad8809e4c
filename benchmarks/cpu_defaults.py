"""Each CPU speed default of ``train-diffusion``, measured side by side against the old defaults.

Every variant is the library's own :class:`~segsynth.diffusion.train.DiffusionTask` (tiny recipe,
64 px, batch 4, the built-in brain-mri data, one batch of its loader reused) with one setting
changed; ``train_step`` is timed in alternating rounds in one process, the order reversed every
other round. The measure is the process's CPU time per step (one thread): on a machine shared
with other work, wall time counts the seconds the process waited for a core, CPU time only
those it computed; wall-clock ratios are recorded beside it. Reported per variant: median
``before`` CPU time per step / the variant's median (a speed-up), and the range of the per-round
ratios.

Variants:

- ``before``: the defaults before this benchmark existed: fp32, NCHW, AdamW's per-tensor loop,
  EMA as a per-tensor loop after every step;
- ``bf16``: bf16 autocast (``mixed_precision: auto`` on a CPU with native bf16);
- ``bf16_channels_last``: bf16 plus ``train.channels_last``;
- ``fp32_channels_last``: ``train.channels_last`` alone;
- ``fused_adamw``: AdamW's fused kernel;
- ``ema_foreach``: the EMA as one multi-tensor update;
- ``ema_every_4``: the EMA updated every 4th step only (its cost bound: a quarter of the updates);
- ``after``: the library's defaults now (bf16 where native, fused AdamW, foreach EMA).

``--compile`` additionally measures ``train.compile`` once (not interleaved: compiling takes
minutes): the seconds to the first compiled step and the compiled step time against eager, and
from them the run length at which compiling pays.

Run: ``.venv/bin/python benchmarks/cpu_defaults.py --quick`` (1 thread, ~2 min). Writes
``benchmarks/results/cpu_defaults.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import builtin_data, diffusion_task, fill_profile, record_header, save_result, table_console
from rich.table import Table

from segsynth.device import cpu_flags, resolve_mixed_precision

ROOT = Path(__file__).resolve().parents[1]
BASE = {"train.batch_size": 4}
#: name -> (config overrides, fused AdamW, foreach EMA, EMA every k steps); ``before`` first
VARIANTS: dict[str, tuple[dict[str, Any], bool, bool, int]] = {
    "before": ({"train.mixed_precision": "no"}, False, False, 1),
    "bf16": ({"train.mixed_precision": "bf16"}, False, False, 1),
    "bf16_channels_last": ({"train.mixed_precision": "bf16", "train.channels_last": True}, False, False, 1),
    "fp32_channels_last": ({"train.mixed_precision": "no", "train.channels_last": True}, False, False, 1),
    "fused_adamw": ({"train.mixed_precision": "no"}, True, False, 1),
    "ema_foreach": ({"train.mixed_precision": "no"}, False, True, 1),
    "ema_every_4": ({"train.mixed_precision": "no"}, False, False, 4),
    "after": ({}, True, True, 1),
}


class Variant:
    """A task with the variant's optimiser and EMA settings, and a step counter."""

    def __init__(self, data: Path, out: Path, overrides: dict[str, Any], fused: bool, ema_foreach: bool,
                 ema_every: int) -> None:
        self.task, self.batch = diffusion_task(data, out, {**BASE, **overrides})
        for group in self.task.optimizer.optimizer.param_groups:
            group["fused"] = fused  # AdamW reads these at every step
            group["foreach"] = False if not fused else None
        self.task.ema.foreach = ema_foreach
        if ema_every > 1:
            ema_step, state = self.task.ema.step, {"n": 0}

            def every(parameters: Any) -> None:
                state["n"] += 1
                if state["n"] % ema_every == 0:
                    ema_step(parameters)

            self.task.ema.step = every
        self.step = 0

    def __call__(self) -> float:
        self.step += 1
        return float(self.task.train_step(self.batch, self.step)["loss"])


def measure_compile(data: Path, out: Path, steps: int) -> dict[str, Any]:
    """Seconds to the first compiled step, and compiled against eager step time (defaults otherwise)."""
    eager = Variant(data, out / "eager", {}, True, True, 1)
    start = time.perf_counter()
    compiled = Variant(data, out / "compiled", {"train.compile": True}, True, True, 1)
    compiled()
    first = time.perf_counter() - start
    for v in (eager, compiled):
        v()
    times = {"eager": [], "compiled": []}
    for _ in range(steps):
        for name, v in (("eager", eager), ("compiled", compiled)):
            t = time.perf_counter()
            v()
            times[name].append(time.perf_counter() - t)
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    saved = eager_s - compiled_s
    return {"first_step_seconds": first, "eager_step_seconds": eager_s, "compiled_step_seconds": compiled_s,
            "speed_up": eager_s / compiled_s,
            "steps_to_repay": (first - compiled_s) / saved if saved > 0 else None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 thread, 6 rounds of 2 steps (~2 min on a free core)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per variant per round")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
    parser.add_argument("--compile", action="store_true", help="also measure train.compile once (minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_defaults.json")
    args = parser.parse_args(argv)
    fill_profile(args, {"threads": 1, "rounds": 6, "steps": 2, "variants": list(VARIANTS)},
                 {"threads": 1, "rounds": 10, "steps": 5, "variants": list(VARIANTS)})
    if "before" not in args.variants:
        args.variants.insert(0, "before")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    console = table_console(132)
    load = os.getloadavg()[0]
    data = builtin_data()
    out = Path(tempfile.mkdtemp(prefix="segsynth-cpu-defaults-"))
    variants = {name: Variant(data, out / name, *VARIANTS[name]) for name in args.variants}
    torch.set_num_threads(args.threads)  # building an engine sets the threads the library picks
    for v in variants.values():
        v()
        v()
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                variants[name]()
            cpu[name].append((time.process_time() - start_cpu) / args.steps)
            wall[name].append((time.perf_counter() - start) / args.steps)
    rows = []
    for name in variants:
        ratios = [b / s for b, s in zip(cpu["before"], cpu[name])]
        rows.append({"variant": name, "overrides": VARIANTS[name][0], "fused_adamw": VARIANTS[name][1],
                     "ema_foreach": VARIANTS[name][2], "ema_every": VARIANTS[name][3],
                     "median_cpu_seconds_per_step": statistics.median(cpu[name]),
                     "median_wall_seconds_per_step": statistics.median(wall[name]),
                     "steps_per_cpu_s": 1 / statistics.median(cpu[name]),
                     "steps_per_wall_s": 1 / statistics.median(wall[name]),
                     "speed_vs_before": statistics.median(cpu["before"]) / statistics.median(cpu[name]),
                     "speed_vs_before_wall": statistics.median(wall["before"]) / statistics.median(wall[name]),
                     "round_ratio_min": min(ratios), "round_ratio_max": max(ratios)})
    table = Table(title=f"train-diffusion step, tiny recipe 64 px batch 4, {args.threads} thread(s), "
                        f"median of {args.rounds} interleaved rounds (shared machine)")
    for col in ("variant", "steps per CPU-s", "speed vs before (CPU time)", "per-round range", "speed vs before (wall)"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(r["variant"], f"{r['steps_per_cpu_s']:.2f}", f"{r['speed_vs_before']:.2f}x",
                      f"{r['round_ratio_min']:.2f}-{r['round_ratio_max']:.2f}", f"{r['speed_vs_before_wall']:.2f}x")
    console.print(table)
    result: dict[str, Any] = {
        **record_header("cpu_defaults", argv),
        "quick": args.quick, "threads": args.threads, "rounds": args.rounds, "steps_per_round": args.steps,
        "torch": torch.__version__, "python": platform.python_version(),
        "native_bf16": "avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags(),
        "auto_resolves_to": resolve_mixed_precision("auto"),
        "load_average_1min_at_start": load,
        "shared_machine": "other processes share these cores: the speed-ups use CPU time per step; wall time is recorded",
        "rows": rows,
    }
    if args.compile:
        result["compile"] = measure_compile(data, out, steps=args.steps * 2)
        c = result["compile"]
        console.print(f"compile: first step {c['first_step_seconds']:.0f} s, step {c['eager_step_seconds']:.3f} s "
                      f"eager vs {c['compiled_step_seconds']:.3f} s compiled ({c['speed_up']:.2f}x); repaid after "
                      f"{c['steps_to_repay']:.0f} steps" if c["steps_to_repay"] else "compile: no gain per step")
    return save_result(args.out, result, console)


if __name__ == "__main__":
    main()
