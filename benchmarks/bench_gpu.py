"""GPU efficiency: training and sampling img/s, FLOPs per UNet call, and the matmul rate achieved.

For one config (default the ``base`` recipe at 256 px) and a grid of variants side by side in one
process (``fp32`` / ``bf16`` autocast x channels_last off/on x ``torch.compile`` off/on):

a) **Training** img/s of the full step the trainer runs: objective with the style encoder on N
   references and the condition drops, backward, gradient clipping, AdamW and the EMA update,
   on one fixed synthetic batch on the device (no data loading), after untimed warm-up steps
   (which include compilation; their time is reported as ``first step s``).
b) **Sampling** img/s of the pipeline with the config's sampler and steps (DPM-Solver++ 20 for
   base.yaml) and its guidance (style CFG 1.5, rescale 0.7: two UNet rows per image per step).
c) **FLOPs per UNet call**, counted by ``torch.utils.flop_counter`` (forward, per image and per
   batch), and the FLOPs of a whole training step counted the same way (forward + backward of
   every part, the style encoder included) to check the usual "3 x forward" estimate.
d) The device's **measured bf16 matmul rate** (a large square matmul, the hardware's best case)
   and the **achieved fraction**: training FLOPs/s = 3 x forward FLOPs per image x img/s (and
   sampling FLOPs/s = UNet rows per image x forward FLOPs per image x img/s), divided by it.

Variants that cannot run (``torch.compile`` without Triton or a C++ compiler, or failing to
compile) are kept in the table and the JSON with the reason. ``first step s`` includes the
compilation (much shorter when inductor's on-disk cache already holds the graphs). Channels-last
variants also record how many convolutions of one training-mode UNet forward saw NHWC inputs
(``nhwc convs``), i.e. whether the layout survives the network's norms and attention on this
device. Two kinds of NCHW input are expected: the first convolution's (the model's inputs stay
NCHW; that convolution's output is NHWC) and, in training mode, every ResBlock shortcut's, which
diffusers makes ``contiguous()`` to keep DDP's gradient strides consistent.

Run: ``.venv/bin/python benchmarks/bench_gpu.py --quick`` (tiny.yaml at 32 px, 1 thread; on a CPU
the four eager variants and ``fp32+compile`` for training only: under 3 min on 2 CPU cores, about
1 min once inductor's cache holds the compiled graphs); on a GPU:
``.venv/bin/python benchmarks/bench_gpu.py`` (base.yaml, 256 px, batch 16, all eight variants).
Writes ``benchmarks/results/bench_gpu-<device>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    TrainLoop,
    add_model_arguments,
    autocast,
    channels_last_conv_inputs,
    count_calls,
    counted_flops,
    device_name,
    fill_profile,
    measured_matmul_tflops,
    ours_loss,
    run_record,
    save_result,
    set_threads,
    sync,
    synthetic_batch,
    table_console,
    unet_call_flops,
    unet_inputs,
)
from rich.table import Table

from segsynth.config import load_config
from segsynth.diffusion import SegSynthPipeline, diffusion_loss, make_train_scheduler
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.performance import apply_memory_format, maybe_compile
from segsynth.models import SegSynthModel

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Variant:
    """One column of the comparison: precision, memory format and compilation."""

    precision: str
    channels_last: bool
    compile: bool

    @property
    def name(self) -> str:
        return "+".join([self.precision, *(["cl"] if self.channels_last else []),
                         *(["compile"] if self.compile else [])])

    @classmethod
    def parse(cls, name: str) -> Variant:
        parts = name.split("+")
        if parts[0] not in PRECISIONS or not set(parts[1:]) <= {"cl", "compile"} or len(set(parts[1:])) != len(parts) - 1:
            raise argparse.ArgumentTypeError(f"variant {name!r}: PRECISION[+cl][+compile], PRECISION in {PRECISIONS}")
        return cls(parts[0], "cl" in parts, "compile" in parts)


ALL_VARIANTS = tuple(Variant(p, cl, c) for p, cl, c in itertools.product(PRECISIONS, (False, True), (False, True)))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def short_error(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


# --------------------------------------------------------------------------------------------


def count_train_step_flops(model: SegSynthModel, cfg: DiffusionTrainConfig, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one training step's forward + backward of the whole model, counted."""
    scheduler = make_train_scheduler(cfg.objective)
    generator = torch.Generator(device=batch["image"].device).manual_seed(0)
    model.train()
    flops = counted_flops(lambda: diffusion_loss(model, scheduler, batch, cfg.objective, generator)["loss"].backward())
    model.zero_grad(set_to_none=True)
    return flops


def time_training(loop: TrainLoop, warmup: int, steps: int, device: torch.device) -> dict[str, Any]:
    start = time.perf_counter()
    loss = loop.step()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        loss = loop.step()
    sync(device)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(loop.step())
    sync(device)
    seconds = time.perf_counter() - start
    return {"first_step_s": first, "steps": steps, "seconds": seconds,
            "finite_loss": all(math.isfinite(float(v)) for v in [loss, *losses])}


def time_sampling(model: SegSynthModel, cfg: DiffusionTrainConfig, batch: dict[str, torch.Tensor], images: int,
                  steps: int, device: torch.device, variant: Variant) -> dict[str, Any]:
    s = cfg.sampling
    pipe = SegSynthPipeline.from_model(model, make_train_scheduler(cfg.objective))
    pipe.set_progress_bar_config(disable=True)
    layout, refs = batch["mask"][:images], batch["style_images"][:images]
    guidance = {"sampler": s.sampler, "style_guidance_scale": s.style_guidance_scale,
                "layout_guidance_scale": s.layout_guidance_scale, "guidance_rescale": s.guidance_rescale}
    model.eval()
    with autocast(device, variant.precision == "bf16"):
        gen = [torch.Generator(device=device).manual_seed(i) for i in range(images)]
        start = time.perf_counter()
        pipe(layout, refs, num_inference_steps=2, generator=gen, **guidance)  # warm-up (and eval-mode compile)
        sync(device)
        warmup_s = time.perf_counter() - start
        gen = [torch.Generator(device=device).manual_seed(i) for i in range(images)]
        with count_calls(pipe.unet) as counts:
            start = time.perf_counter()
            out = pipe(layout, refs, num_inference_steps=steps, generator=gen, **guidance).images
            sync(device)
            seconds = time.perf_counter() - start
    return {**guidance, "steps": steps, "images": images, "warmup_s": warmup_s, "seconds": seconds,
            "img_per_s": images / seconds, "unet_calls": counts["calls"],
            "unet_rows_per_image": counts["rows"] / images, "finite": bool(torch.isfinite(out).all())}


def run_variant(variant: Variant, cfg: DiffusionTrainConfig, batch: dict[str, torch.Tensor], device: torch.device,
                args: argparse.Namespace) -> dict[str, Any]:
    """Build, convert, compile and time one variant; a variant that cannot run records why."""
    row: dict[str, Any] = {"variant": variant.name, "precision": variant.precision,
                           "channels_last": variant.channels_last, "compile": variant.compile}
    torch._dynamo.reset()  # each compiled variant starts from an empty cache (no cache-size fallback to eager)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(cfg.train.seed)
    model = apply_memory_format(SegSynthModel.from_config(cfg.model).to(device), variant.channels_last)
    if variant.channels_last:
        kwargs = unet_inputs(model.unet, 2)
        with torch.no_grad(), autocast(device, variant.precision == "bf16"):
            nhwc, convs = channels_last_conv_inputs(model, lambda: model.unet(**kwargs))
        row["nhwc_conv_inputs"] = [nhwc, convs]
    try:
        maybe_compile(model, variant.compile, device)
        loop = TrainLoop(model, ours_loss(model, cfg, batch), cfg, device, variant.name, not args.no_ema)
        # TrainLoop's autocast keys on the name's "bf16" prefix, which Variant.name keeps.
        timed = time_training(loop, args.warmup_steps, args.train_steps, device)
        b = cfg.train.batch_size
        row["train"] = {**timed, "batch_size": b, "img_per_s": timed["steps"] * b / timed["seconds"]}
        if device.type == "cuda":
            row["train"]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        del loop
        if args.skip_sampling:
            pass
        elif variant.compile and not args.compiled_sampling:
            row["sampling_skipped"] = "compiled sampling not timed (--quick: one more compile); see --compiled-sampling"
        else:
            steps = args.sample_steps or cfg.sampling.steps
            row["sampling"] = time_sampling(model, cfg, batch, min(args.sample_images, cfg.train.batch_size),
                                            steps, device, variant)
    except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a result, not a crash
        if not variant.compile:
            raise
        row["skipped"] = f"torch.compile: {short_error(exc)}"
        row["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
    return row


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "CPU-sized run: tiny.yaml, 32 px, batch 4, few steps; on a CPU one compiled "
                                "variant, training only")
    parser.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: the config's)")
    parser.add_argument("--variants", nargs="+", type=Variant.parse, default=None,
                        help="e.g. fp32 bf16+cl bf16+cl+compile (default: all eight on CUDA; a CPU-sized set with --quick)")
    parser.add_argument("--no-ema", action="store_true", help="leave the EMA update out of the training step")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--compiled-sampling", action=argparse.BooleanOptionalAction, default=None,
                        help="time sampling for compiled variants too (default: yes, but not with --quick)")
    parser.add_argument("--matmul-size", type=int, default=None, help="side of the square matmul (8192 on CUDA, else 1024)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 with --quick)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON result (default benchmarks/results/bench_gpu-<device>.json)")
    args = parser.parse_args(argv)
    quick = {"config": ROOT / "segsynth" / "recipes" / "tiny.yaml", "image_size": 32, "batch_size": 4, "warmup_steps": 2,
             "train_steps": 20, "sample_images": 2, "threads": 1, "compiled_sampling": False}
    full = {"config": ROOT / "segsynth" / "recipes" / "base.yaml", "image_size": 256, "batch_size": None, "warmup_steps": 5,
            "train_steps": 30, "sample_images": 16, "threads": None, "compiled_sampling": True}
    fill_profile(args, quick, full)
    if args.warmup_steps < 1 or args.train_steps < 1:
        parser.error("--warmup-steps and --train-steps must be >= 1")
    return args


def default_variants(device: torch.device, quick: bool) -> list[Variant]:
    if device.type == "cuda" or not quick:
        return list(ALL_VARIANTS)
    # On a CPU each compiled variant spends minutes in inductor: the quick set compiles one.
    return [v for v in ALL_VARIANTS if not v.compile] + [Variant("fp32", False, True)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    variants = args.variants or default_variants(device, args.quick)
    overrides = {k: v for k, v in {"model.image_size": args.image_size, "train.batch_size": args.batch_size,
                                   "model.num_classes": args.num_classes}.items() if v is not None}
    cfg = load_config(DiffusionTrainConfig, args.config, overrides)
    mc, batch_size = cfg.model, cfg.train.batch_size
    name = device_name(device)
    console = table_console(150)

    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 1024)
    matmul = {str(dtype).removeprefix("torch."): measured_matmul_tflops(device, dtype, matmul_size,
                                                                        iters=20 if device.type == "cuda" else 5)
              for dtype in (torch.bfloat16, torch.float32)}
    peak = matmul["bfloat16"]

    torch.manual_seed(cfg.train.seed)
    probe = SegSynthModel.from_config(mc).to(device)
    batch = synthetic_batch(mc, batch_size, device)
    fwd_batch = unet_call_flops(probe, batch_size)
    fwd_image = fwd_batch / batch_size
    step_counted = count_train_step_flops(probe, cfg, batch)
    del probe
    console.print(f"{name} ({device}): bf16 matmul {peak:.3f} TFLOP/s, fp32 {matmul['float32']:.3f} "
                  f"({matmul_size}^2); UNet forward {fwd_image / 1e9:.3f} GFLOP/image, {fwd_batch / 1e9:.2f} "
                  f"GFLOP/batch of {batch_size}; counted training step {step_counted / batch_size / 1e9:.3f} "
                  f"GFLOP/image ({step_counted / fwd_batch:.2f} x forward)")

    rows = []
    for variant in variants:
        console.print(f"[dim]{variant.name} ...[/dim]")
        row = run_variant(variant, cfg, batch, device, args)
        if "train" in row:
            tflops = 3 * fwd_image * row["train"]["img_per_s"] / 1e12
            row["train"].update(tflops=tflops, fraction_of_bf16_matmul=tflops / peak)
        if "sampling" in row:
            smp = row["sampling"]
            tflops = smp["unet_rows_per_image"] * fwd_image * smp["img_per_s"] / 1e12
            smp.update(tflops=tflops, fraction_of_bf16_matmul=tflops / peak)
        rows.append(row)

    table = Table(title=f"{args.config.name}, {mc.image_size} px, batch {batch_size}, N = {mc.style.num_refs} refs, "
                        f"{name} ({device}); % = FLOP/s of the bf16 matmul rate ({peak:.3g} TFLOP/s)")
    for col in ("variant", "train img/s", "train TFLOP/s", "train %", "first step s", "sample img/s",
                "sample TFLOP/s", "sample %", "peak GiB", "nhwc convs", "note"):
        table.add_column(col, justify="left" if col in ("variant", "note") else "right")
    for row in rows:
        tr, smp = row.get("train"), row.get("sampling")
        table.add_row(
            row["variant"],
            f"{tr['img_per_s']:.2f}" if tr else "-", f"{tr['tflops']:.4g}" if tr else "-",
            f"{100 * tr['fraction_of_bf16_matmul']:.1f}" if tr else "-", f"{tr['first_step_s']:.1f}" if tr else "-",
            f"{smp['img_per_s']:.2f}" if smp else "-", f"{smp['tflops']:.4g}" if smp else "-",
            f"{100 * smp['fraction_of_bf16_matmul']:.1f}" if smp else "-",
            f"{tr['peak_memory_gib']:.1f}" if tr and "peak_memory_gib" in tr else "-",
            "/".join(map(str, row["nhwc_conv_inputs"])) if "nhwc_conv_inputs" in row else "-",
            row.get("skipped", "sampling not timed (--quick)" if "sampling_skipped" in row
                    else "" if (not tr or tr["finite_loss"]) else "non-finite loss"),
        )
    console.print(table)

    result = {
        **run_record("bench_gpu", argv, args, device, name, cfg),
        "timing": {"warmup_steps": args.warmup_steps, "train_steps": args.train_steps, "ema": not args.no_ema,
                   "sample_images": min(args.sample_images, batch_size),
                   "data": "one fixed synthetic batch on the device (no loading)"},
        "matmul_tflops": {**matmul, "size": matmul_size},
        "flops": {
            "unet_forward_per_image": fwd_image, "unet_forward_per_batch": fwd_batch, "batch_size": batch_size,
            "image_size": mc.image_size, "train_step_assumed_per_image": 3 * fwd_image,
            "train_step_counted_per_image": step_counted / batch_size,
            "note": "training FLOP/s = 3 x UNet forward FLOPs per image x img/s; the counted step (forward + "
                    "backward of UNet, style encoder on N refs and aggregator) shows how close 3x is",
        },
        "variants": rows,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"bench_gpu-{slug(name)}.json"
    return save_result(out, result, console)


if __name__ == "__main__":
    main()
