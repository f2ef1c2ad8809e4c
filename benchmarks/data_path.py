"""The training loop with its data path: augmentation with and without MONAI's metadata tracking.

The CPU step benchmarks (``cpu_defaults.py``, ``roofline.py``) reuse one batch, so they never see
what a real run pays per step to load and augment its examples. This one times what the engine
does each step, ``next(batches)`` and ``train_step``, for the library's own tasks (tiny
``train-diffusion`` recipe at batch 4; ``train-seg`` with light and with heavy augmentation at batch 8;
64 px built-in brain-mri data), in alternating rounds in one process, the order reversed every
other round, one thread, timed in process CPU time (robust on a machine shared with other work).

Variants:

- ``tracked``: the augmentation as a plain MONAI ``Compose`` (every transform records its
  ``MetaTensor`` history: the data path before this benchmark);
- ``plain``: :class:`segsynth.data.augment.PlainCompose`, the library's path now (same draws and
  values, no metadata).

Reported per task: CPU ms per step of each variant, the share of the step the data path takes,
and ``tracked / plain`` (the loop's speed-up) with the range of the per-round ratios.

Run: ``.venv/bin/python benchmarks/data_path.py --quick`` (~2 min). Writes
``benchmarks/results/data_path.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from common import builtin_data, diffusion_task, fill_profile, record_header, save_result, seg_task, table_console
from monai.transforms import Compose
from rich.table import Table

from segsynth.data.augment import PlainCompose

ROOT = Path(__file__).resolve().parents[1]
#: task name -> (builder, config overrides)
TASKS: dict[str, tuple[Any, dict[str, Any]]] = {
    "train-diffusion": (diffusion_task, {"train.batch_size": 4}),
    "train-seg light": (seg_task, {"train.augment": "light", "train.batch_size": 8}),
    "train-seg heavy": (seg_task, {"train.augment": "heavy", "train.batch_size": 8}),
}


@contextmanager
def tracked_metadata() -> Iterator[None]:
    """Run every :class:`PlainCompose` as the plain MONAI ``Compose`` it was before (metadata tracked)."""
    plain_call = PlainCompose.__call__
    PlainCompose.__call__ = Compose.__call__  # type: ignore[method-assign]
    try:
        yield
    finally:
        PlainCompose.__call__ = plain_call  # type: ignore[method-assign]


def timed_steps(task: Any, batches: Iterator[Any], steps: int, start: int) -> tuple[float, float]:
    """CPU seconds of ``steps`` loop iterations: (loading the batches, the whole loop)."""
    loading = 0.0
    tick = time.process_time()
    for k in range(steps):
        before = time.process_time()
        batch = next(batches)
        loading += time.process_time() - before
        task.train_step(batch, start + k)
    return loading, time.process_time() - tick


def endless_batches(task: Any) -> Iterator[Any]:
    """The task's own batches, started again from step 0 when its run's steps are used up."""
    while True:
        yield from task.batches(0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20 steps per variant")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="loop steps per variant and round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_path.json")
    args = parser.parse_args(argv)
    return fill_profile(args, {"rounds": 3, "steps": 20}, {"rounds": 5, "steps": 40})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    load_at_start = os.getloadavg()[0]
    data = builtin_data()
    console = table_console(120)
    rows = []
    for name, (build, overrides) in TASKS.items():
        task, _ = build(data, Path(tempfile.mkdtemp(prefix="segsynth-data-path-")), overrides)
        batches = endless_batches(task)
        timed_steps(task, batches, 3, 0)  # warm-up
        step = 3
        per: dict[str, list[tuple[float, float]]] = {"tracked": [], "plain": []}
        for round_ in range(args.rounds):
            order = ("tracked", "plain") if round_ % 2 == 0 else ("plain", "tracked")
            for variant in order:
                if variant == "tracked":
                    with tracked_metadata():
                        per[variant].append(timed_steps(task, batches, args.steps, step))
                else:
                    per[variant].append(timed_steps(task, batches, args.steps, step))
                step += args.steps
        ms = {v: statistics.median(total for _, total in runs) / args.steps * 1e3 for v, runs in per.items()}
        data_ms = {v: statistics.median(load for load, _ in runs) / args.steps * 1e3 for v, runs in per.items()}
        ratios = [t[1] / p[1] for t, p in zip(per["tracked"], per["plain"])]
        rows.append({"task": name, "overrides": overrides,
                     "cpu_ms_per_step": ms, "data_cpu_ms_per_step": data_ms,
                     "data_share": {v: data_ms[v] / ms[v] for v in ms},
                     "speedup": ms["tracked"] / ms["plain"], "speedup_range": [min(ratios), max(ratios)]})
    table = Table(title="CPU ms per training step including its data path (1 thread, 64 px)")
    for col in ("task", "tracked ms", "data share", "plain ms", "data share", "loop speed-up", "range"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in rows:
        table.add_row(r["task"], f"{r['cpu_ms_per_step']['tracked']:.1f}", f"{r['data_share']['tracked']:.0%}",
                      f"{r['cpu_ms_per_step']['plain']:.1f}", f"{r['data_share']['plain']:.0%}",
                      f"{r['speedup']:.2f}x", f"{r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f}")
    console.print(table)
    result = {**record_header("data_path", argv), "quick": args.quick, "rounds": args.rounds, "steps": args.steps,
              "threads": 1, "clock": "process CPU time", "data": "built-in brain-mri (64 px)",
              "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]}, "rows": rows}
    return save_result(args.out, result, console)


if __name__ == "__main__":
    main()
