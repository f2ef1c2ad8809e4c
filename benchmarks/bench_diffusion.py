"""Training and sampling speed of the layout+style model against a plain mask-concat UNet.

a) **Training**: steps/s of a full ``SegSynthModel`` step (objective incl. the style encoder on N
   references and the condition drops, backward, grad clipping, AdamW step) against the plain
   SegGuidedDiff-style loop: a diffusers ``UNet2DModel`` fed the noisy image concatenated with the
   one-hot layout, epsilon MSE, same optimiser. The baseline's block widths are searched so its
   parameter count matches ours (all parts: UNet, style encoder, aggregator) within ~10 %. Both
   see the same synthetic batch (no data loading), the same batch size and image size, and are
   timed in alternating blocks in one process after untimed warm-up steps. A second plain UNet
   with exactly our UNet's widths is timed alongside: ours / it is what the style branch and the
   condition drops cost, while the matched-parameter baseline spends our style parameters on
   wider UNet levels instead.
b) **Sampling** with our pipeline: UNet calls and seconds per image for DDIM 128 steps + CFG
   (STEDM's setting: style guidance 1.5, rescale 0.7) against DPM-Solver++ 20 and UniPC 10 with
   the same guidance. Calls are counted by a forward hook on the UNet, not assumed.

On CUDA the ``bf16`` (autocast) and ``bf16_cl`` (autocast + channels_last) variants are timed too;
``--variants`` selects them explicitly (they also run, slowly, on a CPU).

Run: ``.venv/bin/python benchmarks/bench_diffusion.py --quick``  (tiny.yaml at 64 px, 1 thread,
under ~3 min on 2 CPU cores); on a GPU: ``.venv/bin/python benchmarks/bench_diffusion.py``
(base.yaml, 256 px, batch 16).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    TrainLoop,
    add_model_arguments,
    autocast,
    count_calls,
    count_params,
    fill_profile,
    ours_loss,
    processor,
    run_record,
    save_result,
    set_threads,
    sync,
    synthetic_batch,
    table_console,
)
from diffusers import UNet2DModel
from rich.table import Table

from segsynth.config import load_config
from segsynth.diffusion import SegSynthPipeline, make_train_scheduler
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.models import ModelConfig, SegSynthModel

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "bf16", "bf16_cl")
# (name, sampler, steps): STEDM samples with DDIM 128 + CFG; the other two are our fast settings.
SAMPLING = (("ddim128_cfg", "ddim", 128), ("dpmpp20_cfg", "dpmpp", 20), ("unipc10_cfg", "unipc", 10))
GUIDANCE = {"style_guidance_scale": 1.5, "layout_guidance_scale": 1.0, "guidance_rescale": 0.7}


# --------------------------------------------------------------------------------------------
# The baseline: a plain UNet2DModel on [noisy image, one-hot layout], epsilon target.


def baseline_unet(mc: ModelConfig, widths: tuple[int, ...]) -> UNet2DModel:
    """A mask-concat ``UNet2DModel`` laid out like ours (levels, attention, depth), of ``widths``."""
    return UNet2DModel(
        sample_size=mc.image_size,
        in_channels=mc.image_channels + mc.num_classes,
        out_channels=mc.image_channels,
        block_out_channels=widths,
        layers_per_block=mc.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in mc.attention_levels),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(mc.attention_levels)),
        attention_head_dim=mc.attention_head_dim,
        norm_num_groups=mc.norm_num_groups,
    )


def match_baseline_widths(mc: ModelConfig, target: int) -> tuple[tuple[int, ...], int]:
    """Block widths whose baseline UNet has about ``target`` parameters, and that count.

    Each level's width stays a multiple of what GroupNorm (and, at attention levels and the
    bottleneck, the head size) requires. A uniform scale of our widths is tried first, then single
    levels are nudged by one step (the best single move each round) while that brings the count closer and widths stay non-decreasing.
    Models are built on the meta device, so the search allocates nothing.
    """
    levels = len(mc.block_out_channels)
    needs_heads = [a or i == levels - 1 for i, a in enumerate(mc.attention_levels)]
    quanta = [math.lcm(mc.norm_num_groups, mc.attention_head_dim) if h else mc.norm_num_groups for h in needs_heads]
    cache: dict[tuple[int, ...], int] = {}

    def params(widths: tuple[int, ...]) -> int:
        if widths not in cache:
            with torch.device("meta"):
                cache[widths] = count_params(baseline_unet(mc, widths))
        return cache[widths]

    def gap(widths: tuple[int, ...]) -> float:
        return abs(params(widths) - target) / target

    def valid(widths: tuple[int, ...]) -> bool:
        return all(w >= q for w, q in zip(widths, quanta)) and all(a <= b for a, b in zip(widths, widths[1:]))

    uniform = {
        tuple(max(q, round(c * s / 100 / q) * q) for c, q in zip(mc.block_out_channels, quanta))
        for s in range(50, 301, 5)
    }
    best = min((w for w in uniform if valid(w)), key=gap)
    while True:
        moves = [tuple(w + sign * quanta[i] if j == i else w for j, w in enumerate(best))
                 for i in range(levels) for sign in (-1, 1)]
        step = min((m for m in moves if valid(m)), key=gap, default=best)
        if gap(step) >= gap(best):
            return best, params(best)
        best = step


# --------------------------------------------------------------------------------------------
# The training steps' memory format, the baseline's loss, and their timing.


def to_variant(module: torch.nn.Module, batch: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """Put ``module`` (in place) and the 4-D tensors of ``batch`` in the variant's memory format."""
    if not variant.endswith("_cl"):
        return batch
    module.to(memory_format=torch.channels_last)
    return {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in batch.items()}


def baseline_loss(unet: UNet2DModel, cfg: DiffusionTrainConfig, batch: dict[str, torch.Tensor], variant: str):
    """SegGuidedDiff's recipe: DDPM epsilon MSE, layout as one-hot channels next to the noisy image."""
    scheduler = make_train_scheduler(cfg.objective.model_copy(update={"prediction_type": "epsilon"}))
    x0 = batch["image"] * 2 - 1
    onehot = F.one_hot(batch["mask"], cfg.model.num_classes).permute(0, 3, 1, 2).to(x0.dtype)
    onehot = to_variant(torch.nn.Identity(), {"onehot": onehot}, variant)["onehot"]

    def loss(g: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g, device=g.device)
        noise = torch.randn(x0.shape, generator=g, device=g.device, dtype=x0.dtype)
        noisy = scheduler.add_noise(x0, noise, t.to(x0.device))
        pred = unet(torch.cat([noisy, onehot], dim=1), t.to(x0.device)).sample
        return F.mse_loss(pred.float(), noise.float())

    return loss


def time_training(loops: dict[str, TrainLoop], warmup: int, steps: int, block: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """Warm every loop up, then time them in alternating blocks of ``block`` steps (drift hits both)."""
    for loop in loops.values():
        for _ in range(warmup):
            loop.step()
    sync(device)
    seconds = dict.fromkeys(loops, 0.0)
    done = dict.fromkeys(loops, 0)
    losses: dict[str, list[float]] = {name: [] for name in loops}
    while min(done.values()) < steps:
        for name, loop in loops.items():
            n = min(block, steps - done[name])
            start = time.perf_counter()
            for _ in range(n):
                loss = loop.step()
            sync(device)
            seconds[name] += time.perf_counter() - start
            done[name] += n
            losses[name].append(float(loss))
    return {
        name: {"steps": done[name], "seconds": seconds[name], "steps_per_s": done[name] / seconds[name],
               "finite_loss": all(math.isfinite(v) for v in losses[name])}
        for name in loops
    }


# --------------------------------------------------------------------------------------------
# Sampling.


def time_sampling(model: SegSynthModel, cfg: DiffusionTrainConfig, batch: dict[str, torch.Tensor], images: int,
                  device: torch.device, variant: str) -> list[dict[str, Any]]:
    pipe = SegSynthPipeline.from_model(model, make_train_scheduler(cfg.objective))
    pipe.set_progress_bar_config(disable=True)
    layout, refs = batch["mask"][:images], batch["style_images"][:images]
    rows = []
    model.eval()
    for name, sampler, steps in SAMPLING:
        gen = [torch.Generator(device=device).manual_seed(i) for i in range(images)]
        with autocast(device, variant.startswith("bf16")):
            pipe(layout, refs, num_inference_steps=2, sampler=sampler, generator=gen, **GUIDANCE)  # warm-up
            sync(device)
            with count_calls(pipe.unet) as counts:
                start = time.perf_counter()
                out = pipe(layout, refs, num_inference_steps=steps, sampler=sampler, generator=gen, **GUIDANCE).images
                sync(device)
                seconds = time.perf_counter() - start
        rows.append({
            "variant": variant, "setting": name, "sampler": sampler, "steps": steps, **GUIDANCE,
            "images": images, "unet_calls": counts["calls"], "unet_rows_per_image": counts["rows"] / images,
            "seconds": seconds, "s_per_image": seconds / images, "finite": bool(torch.isfinite(out).all()),
        })
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, "CPU-sized run: tiny.yaml, 64 px, batch 4, few steps")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                        help="precision/layout variants (default: fp32 on CPU, all three on CUDA)")
    parser.add_argument("--ema", action="store_true", help="include an EMA update in both training steps")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 with --quick)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_diffusion.json")
    args = parser.parse_args(argv)
    quick = {"config": ROOT / "segsynth" / "recipes" / "tiny.yaml", "image_size": 64, "batch_size": 4, "warmup_steps": 2,
             "train_steps": 10, "sample_images": 2, "threads": 1}
    full = {"config": ROOT / "segsynth" / "recipes" / "base.yaml", "image_size": None, "batch_size": None, "warmup_steps": 5,
            "train_steps": 30, "sample_images": 4, "threads": None}
    return fill_profile(args, quick, full)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    variants = args.variants or (list(VARIANTS) if device.type == "cuda" else ["fp32"])
    overrides = {k: v for k, v in {"model.image_size": args.image_size, "train.batch_size": args.batch_size,
                                   "model.num_classes": args.num_classes}.items() if v is not None}
    cfg = load_config(DiffusionTrainConfig, args.config, overrides)
    mc, batch_size = cfg.model, cfg.train.batch_size
    console = table_console(132)

    with torch.device("meta"):
        probe = SegSynthModel.from_config(mc)
    ours_params = count_params(probe)
    widths, base_params = match_baseline_widths(mc, ours_params)
    with torch.device("meta"):
        same_params = count_params(baseline_unet(mc, tuple(mc.block_out_channels)))
    # "baseline" is the comparison asked for (equal parameter count); "baseline_our_widths" has
    # exactly our UNet's widths, so ours / it is the cost of the style branch and the drops alone.
    baselines = {"baseline": widths, "baseline_our_widths": tuple(mc.block_out_channels)}
    console.print(f"ours: {ours_params:,} parameters (unet {count_params(probe.unet):,}, style encoder "
                  f"{count_params(probe.style_encoder):,}, aggregator {count_params(probe.style_aggregator):,}); "
                  f"baseline UNet2DModel {list(widths)}: {base_params:,} ({base_params / ours_params - 1:+.1%})")

    batch = synthetic_batch(mc, batch_size, device)
    train_rows, sample_rows = [], []
    for variant in variants:
        torch.manual_seed(cfg.train.seed)
        ours = SegSynthModel.from_config(mc).to(device)
        ours_batch = to_variant(ours, batch, variant)
        loops = {"ours": TrainLoop(ours, ours_loss(ours, cfg, ours_batch), cfg, device, variant, args.ema)}
        for name, w in baselines.items():
            unet = baseline_unet(mc, w).to(device)
            loops[name] = TrainLoop(unet, baseline_loss(unet, cfg, to_variant(unet, batch, variant), variant),
                                    cfg, device, variant, args.ema)
        block = max(1, min(5, args.train_steps // 4))
        timed = time_training(loops, args.warmup_steps, args.train_steps, block, device)
        train_rows.append({"variant": variant, **timed, **{
            f"ratio_ours_over_{name}": timed["ours"]["steps_per_s"] / timed[name]["steps_per_s"] for name in baselines}})
        if device.type == "cuda":
            train_rows[-1]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        del loops, unet
        if not args.skip_sampling:
            sample_rows += time_sampling(ours, cfg, ours_batch, min(args.sample_images, batch_size), device, variant)
        del ours
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    table = Table(title=f"training steps/s, batch {batch_size}, {mc.image_size} px, N = {mc.style.num_refs} refs, {device}")
    for col in ("variant", "model", "block widths", "params", "steps/s", "speed ours / this"):
        table.add_column(col, justify="left" if col == "model" else "right")
    described = {"ours": ("SegSynthModel (style, CFG drops)", mc.block_out_channels, ours_params),
                 "baseline": ("UNet2DModel mask-concat, matched params", widths, base_params),
                 "baseline_our_widths": ("UNet2DModel mask-concat, our widths", mc.block_out_channels, same_params)}
    for row in train_rows:
        for name, (label, w, n) in described.items():
            ratio = row["ours"]["steps_per_s"] / row[name]["steps_per_s"]
            table.add_row(row["variant"], label, str(list(w)), f"{n:,}", f"{row[name]['steps_per_s']:.3f}",
                          "" if name == "ours" else f"{ratio:.2f}x")
    console.print(table)
    if sample_rows:
        table = Table(title=f"sampling with our pipeline, {mc.image_size} px, style CFG 1.5, rescale 0.7, {device}")
        for col in ("variant", "setting", "UNet calls", "UNet rows / image", "s / image", "speed-up vs DDIM-128"):
            table.add_column(col, justify="right")
        for row in sample_rows:
            ref = next(r for r in sample_rows if r["variant"] == row["variant"] and r["setting"] == "ddim128_cfg")
            table.add_row(row["variant"], row["setting"], str(row["unet_calls"]), f"{row['unet_rows_per_image']:g}",
                          f"{row['s_per_image']:.3f}", f"{ref['s_per_image'] / row['s_per_image']:.1f}x")
        console.print(table)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else processor()
    result = {
        **run_record("bench_diffusion", argv, args, device, device_name, cfg),
        "timing": {"warmup_steps": args.warmup_steps, "train_steps": args.train_steps, "ema": args.ema,
                   "data": "one fixed synthetic batch on the device (no loading)"},
        "params": {"ours": ours_params, "ours_unet": count_params(probe.unet),
                   "ours_style": count_params(probe.style_encoder) + count_params(probe.style_aggregator),
                   "baseline": base_params, "baseline_block_out_channels": list(widths),
                   "baseline_over_ours": base_params / ours_params, "baseline_our_widths": same_params},
        "train": train_rows,
        "sampling": sample_rows,
    }
    return save_result(args.out, result, console)


if __name__ == "__main__":
    main()
