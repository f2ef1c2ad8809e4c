"""CPU throughput of the segmentation trainer's step: fp32 vs bf16 autocast, NCHW vs channels_last.

What one timed training step is: the unpaired step of ``segsynth.seg.train._Loop.train_steps``,
rebuilt from the same parts: a MONAI network from :func:`segsynth.seg.networks.build_network`
(the default :class:`~segsynth.seg.config.NetworkConfig` and a small one), ``DiceCELoss``
(one-hot target, softmax, the default weights) on ``logits.float()``, AdamW with the default
learning rate and weight decay under a ``LambdaLR`` schedule, the model and optimiser prepared by
an accelerator from :func:`segsynth.device.make_accelerator`, the forward under
``accelerator.autocast()``, the loss reduced over processes (as the trainer does before its
finite-loss check), then ``zero_grad``, ``accelerator.backward``, the optimiser and scheduler
steps. Data loading is left out: every step sees the same fixed synthetic batch (discs on a noisy
background), so the figure is the network's cost, not the loader's.

Variants, timed side by side in one process: ``fp32`` (``mixed_precision="no"``, what ``auto``
resolves to on a CPU), ``bf16`` (``mixed_precision="bf16"``: accelerate enables native bf16
autocast on a CPU; whether it is fast depends on the CPU's bf16 instructions, which are recorded),
each with ``channels_last`` off and on (weights and batch in NHWC, as
``segsynth.diffusion.performance.apply_memory_format`` does for the denoiser; the seg trainer has
no such option yet). Grid: both networks x batch 8 and 16 x 64 and 128 px. Within one (network,
batch, size) cell the four variants are warmed up, then timed in alternating blocks, so a load
change on a shared machine hits all four; ratios are against ``fp32`` of the same cell. Validation
inference (``segsynth.seg.networks.predict_logits`` under ``torch.no_grad`` in eval mode, what
``validation_dice`` runs per image; with the variant's autocast) is timed the same way on the batch.

accelerate keeps one mixed-precision setting per process (``AcceleratorState`` is a singleton),
so the benchmark resets that state (``AcceleratorState._reset_state``) and builds the variant's
accelerator before each block; building it is not timed. A model prepared under ``bf16`` keeps
its autocast forward wrapper whatever the state is later.

Run: ``.venv/bin/python benchmarks/bench_seg.py --quick`` (1 thread, 12 timed steps per variant
and cell, about 1-2 min on one CPU core); ``.venv/bin/python benchmarks/bench_seg.py`` for longer
timing (30 steps, all threads). Load from other processes slows every variant of a cell alike
(they alternate) but is recorded: the 1-minute load average at the start. Writes ``benchmarks/results/bench_seg.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from common import (
    count_params,
    fill_profile,
    processor,
    record_header,
    reset_accelerate,
    seconds_since,
    set_threads,
    synthetic_discs,
    table_console,
)
from monai.losses import DiceCELoss
from rich.table import Table

from segsynth.device import cpu_flags, make_accelerator
from segsynth.io.atomic import atomic_write_json
from segsynth.seg.config import NetworkConfig, SegTrainConfig
from segsynth.seg.networks import build_network, predict_logits, size_divisor

ROOT = Path(__file__).resolve().parents[1]
#: (name, mixed_precision, channels_last)
VARIANTS = (("fp32", "no", False), ("fp32_cl", "no", True), ("bf16", "bf16", False), ("bf16_cl", "bf16", True))
#: The default network and a small one (two 8/16/32 levels, one residual unit: a CPU-sized run).
NETWORKS = {
    "default": NetworkConfig(),
    "small": NetworkConfig(channels=(8, 16, 32), strides=(2, 2), num_res_units=1),
}
CHANNELS, NUM_CLASSES = 1, 3


def use_precision(mixed_precision: str) -> Accelerator:
    """A fresh accelerator of ``mixed_precision``: accelerate's state allows one setting per
    process, so it is reset first (only this benchmark switches; a run never does)."""
    reset_accelerate()
    return make_accelerator(mixed_precision)


def bf16_support() -> dict[str, Any]:
    """Whether bf16 autocast can run here, and the CPU instructions that make it fast (or not)."""
    flags = cpu_flags()
    record: dict[str, Any] = {"cpu_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"})}
    try:
        accelerator = use_precision("bf16")
        with accelerator.autocast():
            enabled = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        record.update(available=bool(enabled and accelerator.native_amp),
                      how="Accelerator(mixed_precision='bf16') on the CPU: native_amp, torch.autocast('cpu', bfloat16)")
        if not record["available"]:
            record["reason"] = "accelerate accepted bf16 but its autocast context did not enable CPU bf16 autocast"
    except (ValueError, RuntimeError) as exc:
        record.update(available=False, reason=f"{type(exc).__name__}: {exc}")
    return record


def synthetic_batch(batch_size: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 1, S, S)`` in [0, 1] and masks ``(B, S, S)`` of one disc per foreground class."""
    return synthetic_discs(batch_size, size, NUM_CLASSES, CHANNELS, torch.Generator().manual_seed(seed))


@dataclass
class Loop:
    """One variant of one cell: its prepared model and optimiser, and the batch in its layout."""

    name: str
    mixed_precision: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: DiceCELoss
    image: torch.Tensor
    mask: torch.Tensor
    divisor: int

    def train_step(self, accelerator: Accelerator) -> float:
        """What ``_Loop.train_steps`` does for one unpaired batch (data already on the device)."""
        self.model.train()
        with accelerator.autocast():
            logits = self.model(self.image)
            loss = self.loss_fn(logits.float(), self.mask[:, None])
        mean_loss = float(accelerator.reduce(loss.detach().reshape(1), "mean"))
        self.optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        return mean_loss

    @torch.no_grad()
    def infer(self, accelerator: Accelerator) -> torch.Tensor:
        """Validation logits of the batch, as ``validation_dice`` computes them (one call per batch)."""
        self.model.eval()
        with accelerator.autocast():
            return predict_logits(self.model, self.image, self.divisor)


def make_loop(name: str, mixed_precision: str, channels_last: bool, network: NetworkConfig,
              image: torch.Tensor, mask: torch.Tensor, cfg: SegTrainConfig) -> Loop:
    """Build and prepare one variant; every variant of a cell starts from the same weights."""
    accelerator = use_precision(mixed_precision)
    torch.manual_seed(cfg.train.seed)
    model = build_network(network, CHANNELS, NUM_CLASSES)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.loss.lambda_dice, lambda_ce=cfg.loss.lambda_ce)
    model, optimizer = accelerator.prepare(model, optimizer)
    return Loop(name, mixed_precision, model, optimizer, scheduler, loss_fn, image.to(accelerator.device),
                mask.to(accelerator.device), size_divisor(network))


@contextlib.contextmanager
def timer(seconds: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[key] += time.perf_counter() - start


def time_cell(loops: list[Loop], warmup: int, steps: int, block: int, infer_steps: int) -> dict[str, dict[str, Any]]:
    """Warm every variant up (train and inference), then time them in alternating blocks."""
    for loop in loops:
        accelerator = use_precision(loop.mixed_precision)
        for _ in range(warmup):
            loop.train_step(accelerator)
        loop.infer(accelerator)
    train_s = {loop.name: 0.0 for loop in loops}
    infer_s = {loop.name: 0.0 for loop in loops}
    done = {loop.name: 0 for loop in loops}
    inferred = {loop.name: 0 for loop in loops}
    losses: dict[str, list[float]] = {loop.name: [] for loop in loops}
    finite_logits = dict.fromkeys(train_s, True)
    while min(done.values()) < steps or min(inferred.values()) < infer_steps:
        for loop in loops:
            accelerator = use_precision(loop.mixed_precision)
            n = min(block, steps - done[loop.name])
            with timer(train_s, loop.name):
                for _ in range(n):
                    losses[loop.name].append(loop.train_step(accelerator))
            done[loop.name] += n
            m = min(block, infer_steps - inferred[loop.name])
            with timer(infer_s, loop.name):
                for _ in range(m):
                    logits = loop.infer(accelerator)
            if m:
                finite_logits[loop.name] &= bool(torch.isfinite(logits).all())
            inferred[loop.name] += m
    batch = loops[0].image.shape[0]
    return {
        loop.name: {
            "train_steps": done[loop.name], "train_seconds": train_s[loop.name],
            "train_images_per_s": done[loop.name] * batch / train_s[loop.name],
            "infer_batches": inferred[loop.name], "infer_seconds": infer_s[loop.name],
            "infer_images_per_s": inferred[loop.name] * batch / infer_s[loop.name],
            "finite": all(math.isfinite(v) for v in losses[loop.name]) and finite_logits[loop.name],
            "first_loss": losses[loop.name][0], "last_loss": losses[loop.name][-1],
        }
        for loop in loops
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 thread, 2 warm-up + 12 timed steps per variant")
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--image-sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed training steps per variant")
    parser.add_argument("--train-steps", type=int, default=None, help="timed training steps per variant")
    parser.add_argument("--infer-batches", type=int, default=None, help="timed validation inference calls per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 with --quick)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_seg.json")
    args = parser.parse_args(argv)
    quick = {"warmup_steps": 2, "train_steps": 12, "infer_batches": 12, "threads": 1}
    full = {"warmup_steps": 3, "train_steps": 30, "infer_batches": 30, "threads": None}
    return fill_profile(args, quick, full)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)
    console = table_console(140)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    bf16 = bf16_support()
    variants = [v for v in VARIANTS if v[1] == "no" or bf16["available"]]
    cfg = SegTrainConfig()
    rows = []
    for net_name in args.networks:
        network = NETWORKS[net_name]
        for size in args.image_sizes:
            for batch_size in args.batch_sizes:
                image, mask = synthetic_batch(batch_size, size)
                loops = [make_loop(name, mp, cl, network, image, mask, cfg) for name, mp, cl in variants]
                block = max(1, min(3, args.train_steps // 4))
                timed = time_cell(loops, args.warmup_steps, args.train_steps, block, args.infer_batches)
                base = timed["fp32"]
                for name, mp, cl in variants:
                    rows.append({
                        "network": net_name, "image_size": size, "batch_size": batch_size, "variant": name,
                        "mixed_precision": mp, "channels_last": cl, **timed[name],
                        "train_ratio_vs_fp32": timed[name]["train_images_per_s"] / base["train_images_per_s"],
                        "infer_ratio_vs_fp32": timed[name]["infer_images_per_s"] / base["infer_images_per_s"],
                    })
                console.print(f"{net_name} {size} px batch {batch_size}: " + ", ".join(
                    f"{n} {timed[n]['train_images_per_s']:.1f} img/s" for n, _, _ in variants))
                del loops
    reset_accelerate()

    table = Table(title=f"segmentation training / validation images/s, {torch.get_num_threads()} thread(s), "
                        f"ratios vs fp32 of the same row group")
    for col in ("network", "px", "batch", "variant", "train img/s", "train vs fp32", "infer img/s", "infer vs fp32"):
        table.add_column(col, justify="left" if col in ("network", "variant") else "right")
    for row in rows:
        table.add_row(row["network"], str(row["image_size"]), str(row["batch_size"]), row["variant"],
                      f"{row['train_images_per_s']:.1f}", f"{row['train_ratio_vs_fp32']:.2f}x",
                      f"{row['infer_images_per_s']:.1f}", f"{row['infer_ratio_vs_fp32']:.2f}x")
    console.print(table)
    if not bf16["available"]:
        console.print(f"bf16 not timed: {bf16['reason']}")

    result = {
        **record_header("bench_seg", argv),
        "quick": args.quick,
        "device": "cpu",
        "device_name": processor(),
        "torch": torch.__version__,
        "monai": version("monai"),
        "accelerate": version("accelerate"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1min": load,
        "bf16": bf16,
        "networks": {name: {**NETWORKS[name].model_dump(mode="json"),
                            "params": count_params(build_network(NETWORKS[name], CHANNELS, NUM_CLASSES))}
                     for name in args.networks},
        "step": {"loss": "DiceCELoss(to_onehot_y, softmax, lambda_dice=1, lambda_ce=1) on logits.float()",
                 "optimizer": f"AdamW(lr={cfg.optim.lr}, weight_decay={cfg.optim.weight_decay}) + LambdaLR",
                 "in_channels": CHANNELS, "num_classes": NUM_CLASSES,
                 "data": "one fixed synthetic batch per cell (no loading)",
                 "inference": "predict_logits(model, batch, divisor) in eval mode under no_grad and autocast"},
        "timing": {"warmup_steps": args.warmup_steps, "train_steps": args.train_steps,
                   "infer_batches": args.infer_batches, "order": "variants alternate in blocks within a cell"},
        "rows": rows,
        "seconds": seconds_since(started),
    }
    atomic_write_json(args.out, result)
    console.print(f"wrote {args.out} in {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
