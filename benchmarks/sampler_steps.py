"""Fewest denoiser calls at equal quality: samplers, step counts and guidance on one trained model.

One model (the ``tiny`` recipe unless ``--config``) is trained on a dataset, or reused from
``--work``; every setting then generates the same ``-n`` layouts (same seed, so the same augmented
real masks and the same style references, drawn from ``DATA/unlabeled``) and ``evaluate_synth``
scores each set with one segmentation network trained once on the real data. The reference is
STEDM's sampling: DDIM with 128 steps and classifier-free guidance on the style (1.5, rescale 0.7).
For each setting the table gives the UNet rows per image (counted by a forward hook on the UNet,
never assumed: guidance doubles the rows of a step), seconds per image, layout fidelity (foreground
Dice of the real-data network on the synthetic images against their layouts, next to its real-image
ceiling), FID / KID against real tiles (segmentation-encoder features), and zero-shot style
retrieval. The recommendation is the setting with the fewest UNet rows whose fidelity is within
``--tolerance`` (2 Dice points) of the reference; FID is printed beside it so the reader sees what
else it costs.

Run: ``.venv/bin/python benchmarks/sampler_steps.py --data DATA/nuclei-fluo --work /tmp/sampler``
(about 15 minutes on 2 CPU cores with a trained model in ``--work``); writes
``benchmarks/results/sampler_steps.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from common import command_line, count_calls, train_unless_done, write_json
from rich.console import Console
from rich.table import Table

from segsynth.artifacts.names import PIPELINE_DIR, UNLABELED_DIR
from segsynth.config import load_config
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.evaluation import evaluate_synth
from segsynth.synth.config import GenerationConfig
from segsynth.synth.generate import generate

ROOT = Path(__file__).resolve().parents[1]

#: (sampler, steps, style guidance): STEDM's reference first, then the cheaper candidates.
SETTINGS: list[tuple[str, int, float]] = [
    ("ddim", 128, 1.5),
    ("ddim", 50, 1.5),
    ("dpmpp", 20, 1.5),
    ("dpmpp", 10, 1.5),
    ("unipc", 10, 1.5),
    ("unipc", 5, 1.5),
    ("dpmpp", 20, 1.0),
    ("dpmpp", 10, 1.0),
    ("unipc", 10, 1.0),
]


def measure(pipe: SegSynthPipeline, data: Path, work: Path, n: int, setting: tuple[str, int, float],
            seg_run: Path | None, mixed_precision: str = "no") -> dict[str, Any]:
    """Generate one set with ``setting`` (afresh, so its UNet rows are counted) and score it.

    ``mixed_precision``: generate's setting (``no``, fp32, is what this benchmark's table was drawn in).
    """
    sampler, steps, guidance = setting
    name = f"{sampler}_{steps}_{guidance}" + ("" if mixed_precision == "no" else f"_{mixed_precision}")
    out = work / f"synth_{name}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = GenerationConfig(n=n, layout_data=data, styles=data / UNLABELED_DIR, sampler=sampler, steps=steps,
                           style_guidance=guidance, seed=0, mixed_precision=mixed_precision)
    with count_calls(pipe.unet) as counts:
        tick, cpu_tick = time.perf_counter(), time.process_time()
        generate(pipe, out, cfg)
        seconds, cpu_seconds = time.perf_counter() - tick, time.process_time() - cpu_tick
    rows = counts["rows"]
    metrics = evaluate_synth(out, data, seg_run, out=work / f"eval_{name}", console=Console(stderr=True))
    fidelity = metrics["layout_fidelity"]
    seg = metrics["distribution"]["seg_encoder"]
    style = metrics["style_retrieval"]
    return {
        "sampler": sampler, "steps": steps, "style_guidance": guidance,
        "mixed_precision": mixed_precision,
        "unet_rows_per_image": rows / n, "seconds_per_image": seconds / n, "cpu_seconds_per_image": cpu_seconds / n,
        "fidelity_dice": fidelity["synthetic"]["summary"]["dice"]["mean_fg"]["mean"],
        "ceiling_dice": fidelity["real_held_out"]["summary"]["dice"]["mean_fg"]["mean"],
        "fid": seg["synthetic_vs_real"]["fid"], "kid": seg["synthetic_vs_real"]["kid_mean"],
        "fid_real_vs_real": seg["real_vs_real"]["fid"],
        "retrieval_pairwise": style.get("pairwise_accuracy"), "retrieval_top1": style.get("top1_accuracy"),
        "retrieval_top1_chance": style.get("top1_chance"),
        "seg_run": metrics["seg_run"]["path"],
    }


def sampling_parser(description: str, train_steps: int, tolerance: float, name: str) -> argparse.ArgumentParser:
    """The options of a benchmark that samples sets from one trained model and scores them
    (``--tolerance``: the fidelity, in Dice, a setting may lose against the reference)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder with unlabeled/ (segsynth data builtin)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the model, the sets and their scores")
    parser.add_argument("--config", type=Path, default=ROOT / "segsynth" / "recipes" / "tiny.yaml")
    parser.add_argument("--train-steps", type=int, default=train_steps)
    parser.add_argument("-n", type=int, default=48, help="samples per setting")
    parser.add_argument("--tolerance", type=float, default=tolerance, help="fidelity (Dice) a setting may lose")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / f"{name}.json")
    return parser


def trained_pipeline(data: Path, work: Path, config: Path, train_steps: int) -> tuple[SegSynthPipeline, float | None]:
    """The one model every setting samples from, trained into ``work/run`` unless it is there, and
    the seconds its training took (None when reused)."""
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    cfg = load_config(DiffusionTrainConfig, config, {"train.steps": train_steps})
    train_s = train_unless_done(data, cfg, run, console=Console(stderr=True))
    pipe = SegSynthPipeline.from_pretrained(str(run / PIPELINE_DIR))
    pipe.set_progress_bar_config(disable=True)
    return pipe, train_s


def measure_all(pipe: SegSynthPipeline, data: Path, work: Path, n: int,
                settings: list[tuple[tuple[str, int, float], str]]) -> list[dict[str, Any]]:
    """:func:`measure` of each ``(setting, mixed_precision)``, all scored by the first one's real-data network."""
    rows: list[dict[str, Any]] = []
    seg_run: Path | None = None
    for setting, precision in settings:
        rows.append(measure(pipe, data, work, n, setting, seg_run, precision))
        seg_run = Path(rows[0]["seg_run"])
        print(json.dumps(rows[-1]), flush=True)
    return rows


def recommend(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The setting with the fewest UNet rows whose fidelity is within ``tolerance`` of the reference's."""
    reference = rows[0]
    within = [r for r in rows if r["fidelity_dice"] >= reference["fidelity_dice"] - tolerance]
    best = min(within, key=lambda r: (r["unet_rows_per_image"], -r["fidelity_dice"]))
    return {"setting": {k: best[k] for k in ("sampler", "steps", "style_guidance")},
            "unet_rows_per_image": best["unet_rows_per_image"],
            "fewer_rows_than_reference": reference["unet_rows_per_image"] / best["unet_rows_per_image"],
            "fidelity_dice": best["fidelity_dice"], "reference_fidelity_dice": reference["fidelity_dice"],
            "tolerance": tolerance}


def main(argv: list[str] | None = None) -> None:
    parser = sampling_parser(__doc__.splitlines()[0], train_steps=600, tolerance=0.02, name="sampler_steps")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work, data = args.work.resolve(), args.data.resolve()
    pipe, train_s = trained_pipeline(data, work, args.config, args.train_steps)
    rows = measure_all(pipe, data, work, args.n, [(setting, "no") for setting in SETTINGS])
    result = {
        "benchmark": "sampler_steps",
        "command": command_line("sampler_steps", argv),
        "data": str(data), "config": str(args.config), "train_steps": args.train_steps, "train_s": train_s,
        "n": args.n, "torch_threads": torch.get_num_threads(), "reference": "ddim 128 steps, style guidance 1.5 (STEDM)",
        "rows": rows, "recommendation": recommend(rows, args.tolerance),
    }
    write_json(args.json, result)
    table = Table(title=f"samplers on {data.name}: {args.n} samples each, one model ({args.train_steps} steps)")
    for column in ("sampler", "steps", "guidance", "UNet rows/img", "s/img", "fidelity Dice", "ceiling", "FID", "KID",
                   "retrieval"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["sampler"], str(r["steps"]), f"{r['style_guidance']:.1f}", f"{r['unet_rows_per_image']:.0f}",
                      f"{r['seconds_per_image']:.3f}", f"{r['fidelity_dice']:.3f}", f"{r['ceiling_dice']:.3f}",
                      f"{r['fid']:.4f}", f"{r['kid']:.4f}", f"{r['retrieval_pairwise']:.3f}")
    console = Console(width=160)
    console.print(table)
    console.print(f"recommended: {result['recommendation']}")


if __name__ == "__main__":
    main()
