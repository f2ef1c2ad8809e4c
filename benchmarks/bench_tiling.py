"""Tiled sampling of large layouts: seam visibility vs. tile overlap, and cost vs. image size.

A tiny model is trained on flat grey images (one random level each, all-background layout), so
every sample should be one flat level: tiles that are not reconciled disagree visibly at their
borders. For each overlap the seam ratio (:func:`segsynth.diffusion.tiling.seam_ratio`: gradient
energy across tile borders / elsewhere; 1 = invisible) is measured on 64 px images made of 16 px
tiles; for each image size, the seconds per image, the denoiser calls and the largest input the
denoiser sees (which bounds its activation memory) are recorded.

Run: ``.venv/bin/python benchmarks/bench_tiling.py`` (about a minute on 2 CPU cores); writes
``benchmarks/results/bench_tiling.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from common import count_calls, write_json
from rich.console import Console
from rich.table import Table

from segsynth.artifacts.names import IMAGES_DIR, MASKS_DIR
from segsynth.data.format import DatasetSpec, save_spec
from segsynth.data.io import write_image
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.diffusion.tiling import seam_ratio, tile_windows
from segsynth.diffusion.train import train_diffusion

ROOT = Path(__file__).resolve().parents[1]
#: 16 px, two levels: the smallest model the trainer accepts.
FLAT_MODEL = {"image_size": 16, "block_out_channels": [8, 16], "attention_levels": [False, True],
              "style": {"encoder_channels": [8, 16], "dim": 16, "num_refs": 2}}


def flat_dataset(root: Path, count: int = 16, size: int = 16, seed: int = 0) -> Path:
    """Flat images, one random grey level each, under an all-background layout."""
    rng = np.random.default_rng(seed)
    cases = {}
    for i in range(count):
        write_image(root / IMAGES_DIR / f"c{i}_0.png", np.full((size, size), rng.uniform(40, 215), np.uint8))
        write_image(root / MASKS_DIR / f"c{i}_0.png", np.zeros((size, size), np.uint8))
        cases[f"c{i}_0"] = f"c{i}"
    save_spec(root, DatasetSpec(name="flat", description="flat grey images", modality="test", prompt="flat",
                                channels=1, labels={"background": 0, "object": 1}, label_provenance="human",
                                licence="CC0-1.0", cases=cases))
    return root


def train_flat_model(work: Path, steps: int = 100) -> SegSynthPipeline:
    """The tiny flat-image model (about 15 s on 2 CPU cores for 100 steps)."""
    cfg = DiffusionTrainConfig.model_validate({
        "model": FLAT_MODEL,
        "train": {"steps": steps, "batch_size": 8, "lr": 3e-3, "warmup": 10, "sample_every": 0,
                  "checkpoint_every": 1000, "mixed_precision": "no", "ema_decay": 0.9},
        "data": {"augmentation": "none", "style_sampler": "augmented"},
        "sampling": {"style_guidance_scale": 1.0, "steps": 5},
    })
    run = train_diffusion(flat_dataset(work / "flat"), cfg, work / "run")
    pipe = SegSynthPipeline.from_pretrained(str(run / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe: SegSynthPipeline, size: int, overlap: int | None, images: int = 2, steps: int = 10) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(i) for i in range(images)]
    return pipe(torch.zeros(images, size, size, dtype=torch.long), None, num_inference_steps=steps,
                style_guidance_scale=1.0, generator=generators, tile_overlap=overlap).images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps of the flat model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_tiling.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    console = Console(width=120)
    with TemporaryDirectory() as tmp:
        pipe = train_flat_model(Path(tmp), args.steps)
    seams = []
    for overlap in (0, 2, 4, 8):
        images = sample(pipe, 64, overlap)
        seams.append({"overlap": overlap, "tiles": len(tile_windows(64, 64, 16, overlap)),
                      "seam_ratio": seam_ratio(images, tile_windows(64, 64, 16, overlap))})
    costs = []
    for size in args.sizes:
        with count_calls(pipe.unet.inner) as counts:
            tick = time.perf_counter()
            sample(pipe, size, None, images=1)
            seconds = time.perf_counter() - tick
        costs.append({"size": size, "s_per_image": seconds, "unet_calls": counts["calls"],
                      "largest_unet_input": counts["largest"]})

    table = Table(title="seams: 64 px images of 16 px tiles (1 = invisible)")
    for col in ("overlap px", "tiles", "seam ratio"):
        table.add_column(col, justify="right")
    for row in seams:
        table.add_row(str(row["overlap"]), str(row["tiles"]), f"{row['seam_ratio']:.2f}")
    console.print(table)
    table = Table(title="cost vs image size (default overlap, 10 steps, 1 image)")
    for col in ("size px", "s / image", "UNet calls", "largest UNet input"):
        table.add_column(col, justify="right")
    for row in costs:
        table.add_row(str(row["size"]), f"{row['s_per_image']:.2f}", str(row["unet_calls"]), str(row["largest_unet_input"]))
    console.print(table)
    write_json(args.out, {"benchmark": "bench_tiling", "train_steps": args.steps, "seams": seams,
                          "cost": costs, "torch": torch.__version__})
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
