"""What fraction of this CPU's measured peak the training and sampling steps reach.

The peak is measured, not taken from a datasheet: square matmuls of a few sizes (fp32 and bf16)
and the most expensive convolution of the tiny recipe's UNet (its first level: 32 -> 32
channels, 3x3, at 64 px, batch 4), forward only, each at 1 and 2 threads; the fastest of many
single calls, and the best kernel of a dtype is its peak (MKL's fp32 matmul is not the fastest
fp32 kernel on every CPU; oneDNN's convolution can beat it). The achieved
rate of each workload is its FLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode`` over
one real call (via ``flop_counter_mode`` of ``benchmarks/common.py``, which adds the CPU
attention kernel), divided by its measured time. The workloads call the library's own code:

- ``diffusion_train``: ``DiffusionTask.train_step`` (the ``train-diffusion`` step: objective with
  style encoder and condition drops, backward, clipping, AdamW, EMA) on the tiny recipe, batch 4;
- ``sampling_step``: one DPM-Solver++ step of ``SegSynthPipeline`` with style CFG (a UNet call on
  the doubled batch), from a 20-step call on 2 images divided by 20;
- ``seg_train``: ``SegTask.train_step`` (default MONAI UNet, DiceCE, AdamW) at 64 px, batch 8;
- ``autoencoder_train``: ``AutoencoderTask.train_step`` (default latent autoencoder, 64 px tiles).

Each workload runs as ``fp32`` (``mixed_precision: no``) and ``default`` (what ``auto`` resolves
to here: bf16 autocast on a CPU with native bf16). Variants are timed in alternating rounds in one
process, so load from other processes hits all of them; the median round is reported. At one
thread a step's time is the process's CPU time (what it computed, not what it waited for a
core on a shared machine), at two threads its wall time. Only
convolutions, matmuls and attention are counted (normalisations and elementwise ops are
memory-bound and not FLOPs a matmul unit could run), so a fraction is of the compute the
hardware's best kernel could do.

Run: ``.venv/bin/python benchmarks/roofline.py --quick`` (1 thread for the workloads, ~2 min);
without ``--quick`` the workloads run at 1 and 2 threads with more rounds. Writes
``benchmarks/results/roofline.json`` (with the CPU's flags from ``/proc/cpuinfo``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    autocast,
    autoencoder_task,
    builtin_data,
    counted_flops,
    cpu_model_name,
    diffusion_task,
    fill_profile,
    processor,
    record_header,
    save_result,
    seg_task,
    table_console,
)
from rich.table import Table

from segsynth.cpus import usable_cpus
from segsynth.device import BF16_CPU_FLAGS, cpu_flags, resolve_mixed_precision
from segsynth.diffusion.pipeline import SegSynthPipeline

ROOT = Path(__file__).resolve().parents[1]
#: flags worth recording: what decides which kernels oneDNN and MKL can use
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
               "amx_bf16", "amx_int8")
#: the tiny UNet's first-level convolution: batch 4, 32 -> 32 channels, 3x3, 64 x 64
CONV_SHAPE = {"batch": 4, "in": 32, "out": 32, "kernel": 3, "size": 64}


def best_rate(call: Callable[[], Any], flops: int, repeats: int) -> float:
    """The best of ``repeats`` single timed calls, in FLOP/s.

    The best, not the mean: on a shared machine most calls lose time to other processes; the
    fastest is the closest to what the chip does undisturbed, and a peak is an upper bound. At
    one thread the clock is the process's CPU time, as for the workloads.
    """
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    call()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        call()
        best = min(best, clock() - start)
    return flops / best


def measure_peaks(threads: list[int], matmul_sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Matmul (each size) and conv rates, fp32 and bf16, at each thread count."""
    g = torch.Generator().manual_seed(0)
    rows = []
    c = CONV_SHAPE
    for n in threads:
        torch.set_num_threads(n)
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            for size in matmul_sizes:
                a = torch.randn(size, size, generator=g).to(dtype)
                b = torch.randn(size, size, generator=g).to(dtype)
                mm = lambda a=a, b=b: torch.mm(a, b)  # noqa: E731
                rows.append({"kernel": f"matmul {size}^3", "dtype": name, "threads": n,
                             "flop_per_s": best_rate(mm, counted_flops(mm), repeats)})
            x = torch.randn(c["batch"], c["in"], c["size"], c["size"], generator=g).to(dtype)
            w = torch.randn(c["out"], c["in"], c["kernel"], c["kernel"], generator=g).to(dtype)
            conv = lambda x=x, w=w: F.conv2d(x, w, padding=c["kernel"] // 2)  # noqa: E731
            rows.append({"kernel": "conv {batch}x{in}->{out} {kernel}x{kernel} @{size}px".format(**c), "dtype": name,
                         "threads": n, "flop_per_s": best_rate(conv, counted_flops(conv), 2 * repeats)})
    return rows


def sampling_call(task: Any, steps: int, images: int) -> Callable[[], Any]:
    """A guided DPM-Solver++ call of the released pipeline's code on the task's live model."""
    model = task.raw_model
    pipe = SegSynthPipeline.from_model(model, task.scheduler)
    pipe.set_progress_bar_config(disable=True)
    rows = task.preview
    layout, refs = rows["layout"][:images], rows["style_images"][:images]
    s = task.cfg.sampling
    precision = task.accelerator.mixed_precision

    def call() -> Any:
        model.eval()
        gens = [torch.Generator().manual_seed(i) for i in range(images)]
        params = [p for p in model.parameters() if p.requires_grad]
        try:  # frozen, as in a released pipeline (the FLOP counter's module tracker trips on trainable ones)
            for p in params:
                p.requires_grad_(False)
            with torch.no_grad(), autocast("cpu", precision == "bf16"):
                return pipe(layout, refs, num_inference_steps=steps, sampler="dpmpp", generator=gens,
                            style_guidance_scale=s.style_guidance_scale,
                            layout_guidance_scale=s.layout_guidance_scale, guidance_rescale=s.guidance_rescale).images
        finally:
            for p in params:
                p.requires_grad_(True)

    return call


def build_workloads(data: Path, out: Path, names: list[str], sample_steps: int) -> dict[tuple[str, str], dict[str, Any]]:
    """``(workload, variant) -> {"call", "per_call"}``: ``per_call`` steps (or samples) in one call."""
    built: dict[tuple[str, str], dict[str, Any]] = {}
    for variant, precision in (("fp32", "no"), ("default", "auto")):
        if "diffusion_train" in names or "sampling_step" in names:
            task, batch = diffusion_task(data, out / f"diffusion-{variant}",
                                         {"train.batch_size": 4, "train.mixed_precision": precision})
            state = {"step": 0}

            def step(task: Any = task, batch: Any = batch, state: dict[str, int] = state) -> Any:
                state["step"] += 1
                return task.train_step(batch, state["step"])

            if "diffusion_train" in names:
                built["diffusion_train", variant] = {"call": step, "per_call": 1, "unit": "step"}
            if "sampling_step" in names:
                built["sampling_step", variant] = {"call": sampling_call(task, sample_steps, 2),
                                                   "per_call": sample_steps, "unit": "step", "grad": False}
        if "seg_train" in names:
            task, batch = seg_task(data, out / f"seg-{variant}", {"train.batch_size": 8,
                                                                  "train.mixed_precision": precision})
            built["seg_train", variant] = {"call": lambda t=task, b=batch: t.train_step(b, 0), "per_call": 1,
                                           "unit": "step"}
        if "autoencoder_train" in names:
            task, batch = autoencoder_task(data, out / f"ae-{variant}", {"mixed_precision": precision})
            built["autoencoder_train", variant] = {"call": lambda t=task, b=batch: t.train_step(b, 0), "per_call": 1,
                                                   "unit": "step"}
    return built


def time_workloads(built: dict[tuple[str, str], dict[str, Any]], threads: int, rounds: int,
                   min_seconds: float) -> dict[tuple[str, str], dict[str, float]]:
    """Seconds per unit of each workload, wall and CPU: alternating rounds, each call repeated for
    ``min_seconds`` of CPU time, the median round.

    With one thread the process's CPU time is the robust measure on a shared machine (it leaves
    out the time spent waiting for a core); with more, wall time is (CPU time adds the threads).
    """
    torch.set_num_threads(threads)
    for w in built.values():
        w["call"]()  # warm-up (kernel selection, first allocations)
    times: dict[tuple[str, str], dict[str, list[float]]] = {key: {"wall": [], "cpu": []} for key in built}
    for r in range(rounds):
        order = list(built) if r % 2 == 0 else list(reversed(built))
        for key in order:
            w, n, start, start_cpu = built[key], 0, time.perf_counter(), time.process_time()
            while True:
                w["call"]()
                n += 1
                if time.process_time() - start_cpu >= min_seconds:
                    break
            times[key]["wall"].append((time.perf_counter() - start) / (n * w["per_call"]))
            times[key]["cpu"].append((time.process_time() - start_cpu) / (n * w["per_call"]))
    return {key: {k: statistics.median(v) for k, v in t.items()} for key, t in times.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 thread for the workloads, fewer rounds (~2 min)")
    parser.add_argument("--workloads", nargs="+", default=None,
                        choices=("diffusion_train", "sampling_step", "seg_train", "autoencoder_train"))
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts of the workloads")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timing rounds")
    parser.add_argument("--min-seconds", type=float, default=None, help="time per workload per round")
    parser.add_argument("--matmul-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per peak kernel (the best counts)")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "roofline.json")
    args = parser.parse_args(argv)
    everything = ["diffusion_train", "sampling_step", "seg_train", "autoencoder_train"]
    quick = {"workloads": everything, "threads": [1], "rounds": 3, "min_seconds": 1.5, "matmul_sizes": [512, 1024],
             "repeats": 15}
    full = {"workloads": everything, "threads": [1, 2], "rounds": 5, "min_seconds": 3.0, "matmul_sizes": [512, 1024, 2048],
            "repeats": 30}
    return fill_profile(args, quick, full)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    console = table_console(140)
    load = os.getloadavg()[0]
    peak_threads = sorted({1, 2, *args.threads})
    peaks = measure_peaks(peak_threads, args.matmul_sizes, args.repeats)
    data = builtin_data()
    out = Path(tempfile.mkdtemp(prefix="segsynth-roofline-"))
    built = build_workloads(data, out, args.workloads, args.sample_steps)
    flops = {key: counted_flops(w["call"], w.get("grad", True)) // w["per_call"] for key, w in built.items()}
    default_precision = resolve_mixed_precision("auto")

    def peak_of(dtype: str, threads: int, kernel: str = "") -> float:
        """The best measured rate of ``dtype`` at ``threads`` (of kernels named ``kernel...``)."""
        return max(p["flop_per_s"] for p in peaks if p["dtype"] == dtype and p["threads"] == threads
                   and p["kernel"].startswith(kernel))

    rows = []
    for n in args.threads:
        seconds = time_workloads(built, n, args.rounds, args.min_seconds)
        for (name, variant), measured in seconds.items():
            sec = measured["cpu"] if n == 1 else measured["wall"]
            dtype = "bfloat16" if variant == "default" and default_precision == "bf16" else "float32"
            rate = flops[name, variant] / sec
            rows.append({"workload": name, "variant": variant, "dtype": dtype, "threads": n,
                         "flops_per_unit": flops[name, variant], "unit": built[name, variant]["unit"],
                         "seconds_per_unit": sec, "clock": "process CPU time" if n == 1 else "wall",
                         "wall_seconds_per_unit": measured["wall"], "cpu_seconds_per_unit": measured["cpu"],
                         "units_per_s": 1 / sec, "flop_per_s": rate,
                         "fraction_of_peak": rate / peak_of(dtype, n),
                         "fraction_of_fp32_peak": rate / peak_of("float32", n),
                         "fraction_of_conv_peak": rate / peak_of(dtype, n, "conv")})
    for row in rows:
        ref = next(r for r in rows if r["workload"] == row["workload"] and r["threads"] == row["threads"]
                   and r["variant"] == "fp32")
        row["speed_vs_fp32"] = ref["seconds_per_unit"] / row["seconds_per_unit"]

    table = Table(title="measured peak (best of repeats)")
    for col in ("kernel", "dtype", "threads", "GFLOP/s"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for p in peaks:
        table.add_row(p["kernel"], p["dtype"], str(p["threads"]), f"{p['flop_per_s'] / 1e9:.1f}")
    console.print(table)
    table = Table(title=f"achieved; peak = best measured kernel of the same dtype and threads (default = {default_precision})")
    for col in ("workload", "variant", "threads", "GFLOP / step", "steps/s", "GFLOP/s", "of peak", "of conv peak",
                "of fp32 peak", "speed vs fp32"):
        table.add_column(col, justify="left" if col == "workload" else "right")
    for r in rows:
        table.add_row(r["workload"], f"{r['variant']} ({r['dtype'].replace('float', 'fp').replace('bfloat', 'bf')})",
                      str(r["threads"]), f"{r['flops_per_unit'] / 1e9:.2f}", f"{r['units_per_s']:.2f}",
                      f"{r['flop_per_s'] / 1e9:.1f}", f"{r['fraction_of_peak']:.1%}",
                      f"{r['fraction_of_conv_peak']:.1%}", f"{r['fraction_of_fp32_peak']:.1%}",
                      f"{r['speed_vs_fp32']:.2f}x")
    console.print(table)

    flags = cpu_flags()
    result = {
        **record_header("roofline", argv),
        "quick": args.quick,
        "machine": {"processor": processor(),
                    "model_name": cpu_model_name() or "", "usable_cpus": usable_cpus(),
                    "cpu_flags": sorted(f for f in SHOWN_FLAGS if f in flags),
                    "native_bf16": bool(flags & BF16_CPU_FLAGS),
                    "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "load_average_1min_at_start": load,
                    "shared": "other processes share these cores; ratios of variants timed side by side are "
                              "the robust figures, absolute rates are lower bounds"},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "default_mixed_precision": default_precision,
        "counting": "torch.utils.flop_counter.FlopCounterMode (+ CPU flash attention): convolutions, matmuls, "
                    "attention; multiply-add = 2 FLOPs; a train step includes its backward",
        "timing": {"rounds": args.rounds, "min_cpu_seconds_per_round": args.min_seconds, "statistic": "median round",
                   "clock": "process CPU time at 1 thread, wall time at more; peaks: fastest single call, same clocks",
                   "sample_steps": args.sample_steps, "sampling_images": 2},
        "peak": "the best rate of any measured kernel (matmul sizes, the UNet conv) of the same dtype and threads; "
                "fraction_of_fp32_peak compares a bf16 run with what fp32 could reach",
        "peaks": peaks,
        "workloads": rows,
    }
    return save_result(args.out, result, console)


if __name__ == "__main__":
    main()
