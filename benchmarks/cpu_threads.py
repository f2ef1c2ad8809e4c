"""Two training processes on the same cores: does throughput collapse, and which thread setting avoids it.

Each scenario starts one or two child processes that build the library's own ``train-diffusion``
task (tiny recipe, 64 px, batch 4; :func:`common.diffusion_task`), warm up, wait until every child is warm,
then call ``train_step`` for a fixed number of seconds and report their steps/s. A pair's
throughput is the sum of its two processes; it is compared with the best single process of the
same thread setting and with the best single process overall (the machine's capacity for this
step). A shared OpenMP runtime spins idle threads while waiting for work; two processes that each
start a thread per core then steal each other's cores.

Scenarios (the ``*_library`` ones and ``pair_split`` let the library choose the threads, as the
``segsynth`` command does before torch starts; the others set ``OMP_NUM_THREADS`` themselves):

- ``solo_cpus``: one process, as many threads as usable CPUs;
- ``solo_cpus_passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (what passive costs one run);
- ``solo_1``: one process, 1 thread;
- ``solo_library``: one process, the library's choice (a thread per usable CPU);
- ``pair_cpus``: two processes, each with a thread per usable CPU (oversubscribed);
- ``pair_cpus_passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep);
- ``pair_split``: two processes of one launch (``LOCAL_WORLD_SIZE=2``), the library's choice:
  usable CPUs / 2 threads each;
- ``pair_library``: two independent processes, the library's choice for each (what two users
  starting ``segsynth`` on the same machine get).

The machine may be shared with other work: scenarios run in sequence, so their absolute numbers
move with its load (recorded); repeat with ``--repeats`` and read the ratios.

Run: ``.venv/bin/python benchmarks/cpu_threads.py --quick`` (~2 min). Writes
``benchmarks/results/cpu_threads.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import fill_profile, record_header

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def child(seconds: float, barrier: Path, out: Path, data: Path, library_threads: bool) -> None:
    """One process: build the task, warm up, say so, wait for the go, train for ``seconds``; print steps/s.

    ``library_threads``: choose the thread count as the ``segsynth`` command does, before torch loads.
    """
    if library_threads:
        from segsynth.cpu_share import share_cpus

        share_cpus()
    import torch
    from common import diffusion_task

    from segsynth.cpu_share import rebalance_threads

    task, batch = diffusion_task(data, out, {"train.batch_size": 4})
    task.train_step(batch, 0)
    task.train_step(batch, 1)
    (barrier / f"ready-{os.getpid()}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.05)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rebalance_threads()  # as the training engine does before every step
        task.train_step(batch, steps + 2)
        steps += 1
    print(json.dumps({"steps_per_s": steps / (time.perf_counter() - start), "threads": torch.get_num_threads()}))


def run_scenario(processes: int, env_extra: dict[str, str], seconds: float, data: Path,
                 library_threads: bool) -> list[dict[str, Any]]:
    """Start ``processes`` children with ``env_extra``, let them train together once all are warm; their reports."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "LOCAL_WORLD_SIZE")}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    barrier = Path(tempfile.mkdtemp(prefix="segsynth-thr-barrier-"))
    procs = [subprocess.Popen([sys.executable, __file__, "--child", "--seconds", str(seconds), "--barrier",
                               str(barrier), "--data", str(data), "--out", tempfile.mkdtemp(prefix="segsynth-thr-"),
                              *(["--library-threads"] if library_threads else [])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(processes)]
    while len(list(barrier.glob("ready-*"))) < processes:
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError("a child process failed while starting")
        time.sleep(0.1)
    (barrier / "go").touch()
    reports = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a child process failed (exit {p.returncode})")
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    return reports


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 s per scenario, one repeat (~2 min)")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per scenario")
    parser.add_argument("--repeats", type=int, default=None, help="passes over all scenarios")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_threads.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--barrier", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--library-threads", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return fill_profile(args, {"seconds": 8.0, "repeats": 1}, {"seconds": 15.0, "repeats": 2})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        child(args.seconds, args.barrier, args.out, args.data, args.library_threads)
        return {}
    from common import builtin_data, save_result, table_console
    from rich.table import Table

    from segsynth.cpus import usable_cpus

    cpus = usable_cpus()
    #: name -> (processes, environment, threads chosen by the library)
    scenarios = {
        "solo_cpus": (1, {"OMP_NUM_THREADS": str(cpus)}, False),
        "solo_cpus_passive": (1, {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": "PASSIVE"}, False),
        "solo_1": (1, {"OMP_NUM_THREADS": "1"}, False),
        "solo_library": (1, {}, True),
        "pair_cpus": (2, {"OMP_NUM_THREADS": str(cpus)}, False),
        "pair_cpus_passive": (2, {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": "PASSIVE"}, False),
        "pair_split": (2, {"LOCAL_WORLD_SIZE": "2"}, True),
        "pair_library": (2, {}, True),
    }
    data = builtin_data()
    console = table_console(132)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
    loads = []
    for _ in range(args.repeats):
        for name, (processes, env, library_threads) in scenarios.items():
            loads.append(os.getloadavg()[0])
            reports = run_scenario(processes, env, args.seconds, data, library_threads)
            runs[name].append({"total_steps_per_s": sum(r["steps_per_s"] for r in reports), "processes": reports})
    best_solo = max(r["total_steps_per_s"] for name in scenarios if name.startswith("solo") for r in runs[name])
    rows = []
    for name, (processes, env, library_threads) in scenarios.items():
        total = statistics.median(r["total_steps_per_s"] for r in runs[name])
        rows.append({"scenario": name, "processes": processes, "env": env, "library_threads": library_threads,
                     "threads_per_process": runs[name][0]["processes"][0]["threads"],
                     "total_steps_per_s": total, "of_best_single_process": total / best_solo, "runs": runs[name]})
    table = Table(title=f"train-diffusion steps/s of one or two processes on {cpus} usable CPUs (shared machine)")
    for col in ("scenario", "processes", "threads each", "env", "total steps/s", "of best single process"):
        table.add_column(col, justify="left" if col in ("scenario", "env") else "right")
    for r in rows:
        table.add_row(r["scenario"], str(r["processes"]), str(r["threads_per_process"]),
                      " ".join(f"{k}={v}" for k, v in r["env"].items()) or "(none)", f"{r['total_steps_per_s']:.2f}",
                      f"{r['of_best_single_process']:.0%}")
    console.print(table)
    result = {
        **record_header("cpu_threads", argv),
        "quick": args.quick, "seconds_per_scenario": args.seconds, "repeats": args.repeats,
        "usable_cpus": cpus, "python": platform.python_version(),
        "load_average_1min_per_scenario": loads,
        "shared_machine": "other processes share these cores; scenarios run one after another",
        "best_single_process_steps_per_s": best_solo,
        "rows": rows,
    }
    return save_result(args.out, result, console)


if __name__ == "__main__":
    main()
