"""Which style injection fits a style-dependent task better: time embedding, cross-attention or both?

Toy task (16 px, grey): a disc layout, and a per-sample *style* = (background level, disc level,
stripe amplitude, stripe orientation). The N = 2 references share the style but not the layout,
so the only way to know the intensities is to read them off the references. For each injection
we train the same tiny model for a fixed number of steps and report

* ``heldout_loss``: unweighted v-prediction MSE on 256 held-out samples (fixed t and noise), with the
  references, and ``heldout_loss_no_style`` with the null style (the gap is what style explains);
* ``style_mae``: sample 64 images (DPM-Solver++, 10 steps, style guidance 1.5, φ 0.7) and
  compare the mean intensity inside / outside the disc with the style's levels (mean absolute error);
* ``saturated``: the fraction of those sampled pixels at exactly 0 or 1, i.e. whose estimate left
  [-1, 1] and was clipped (``real_saturated``: the same fraction in the rendered targets). With
  ``--prediction-types v_prediction epsilon`` this is the measurement behind v being the default
  objective (see :class:`segsynth.diffusion.objective.ObjectiveConfig`).

Run: ``.venv/bin/python benchmarks/style_injection.py --steps 400 --seeds 0 1``  (1 thread, CPU);
``--injections time --prediction-types v_prediction epsilon`` compares the two objectives.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from common import count_params

from segsynth.diffusion import ObjectiveConfig, SegSynthPipeline, diffusion_loss, make_train_scheduler
from segsynth.models import ModelConfig, SegSynthModel

SIZE, REFS = 16, 2


def make_layouts(b: int, g: torch.Generator) -> torch.Tensor:
    """``(B, H, W)`` int64 discs of random centre and radius."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centre = torch.randint(4, SIZE - 4, (b, 2), generator=g)
    radius = torch.randint(3, 6, (b,), generator=g)
    dist2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    return (dist2 <= radius[:, None, None] ** 2).long()


def render(layouts: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Images ``(B, 1, H, W)`` in [0, 1] for ``layouts`` and ``style`` ``(B, 4)``."""
    bg, fg, amp, vertical = (style[:, i, None, None] for i in range(4))
    coords = torch.arange(SIZE).float()
    stripes_h = torch.sin(coords * math.pi / 2)[None, :, None].expand(-1, SIZE, SIZE)
    stripes = torch.where(vertical > 0.5, stripes_h.transpose(1, 2), stripes_h)
    image = bg + (fg - bg) * layouts.float() + amp * stripes
    return image.clamp(0, 1).unsqueeze(1)


def make_batch(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch with its style vector, the target image and N references of the same style."""
    style = torch.stack(
        [torch.rand(b, generator=g) * 0.8 + 0.1, torch.rand(b, generator=g) * 0.8 + 0.1,
         torch.rand(b, generator=g) * 0.1, (torch.rand(b, generator=g) > 0.5).float()], dim=1)
    layouts = make_layouts(b, g)
    refs = torch.stack([render(make_layouts(b, g), style) for _ in range(REFS)], dim=1)
    return {"image": render(layouts, style), "mask": layouts, "style_images": refs, "style": style}


def model_config(injection: str) -> ModelConfig:
    return ModelConfig(
        image_size=SIZE, image_channels=1, num_classes=2, block_out_channels=(16, 32),
        attention_levels=(False, True), attention_head_dim=8,
        style={"encoder_channels": (16, 32), "dim": 32, "num_refs": REFS, "aggregator": "attention", "injection": injection},
    )


@torch.no_grad()
def heldout_loss(model: SegSynthModel, scheduler, data: dict, drop_style: bool, prediction_type: str) -> float:
    b = data["image"].shape[0]
    g = torch.Generator().manual_seed(1234)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=g)
    noise = torch.randn(data["image"].shape, generator=g)
    x0 = data["image"] * 2 - 1
    noisy = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t) if prediction_type == "v_prediction" else noise
    drop = {"style": torch.full((b,), drop_style)}
    return torch.mean((model(noisy, t, data["mask"], data["style_images"], drop) - target) ** 2).item()


@torch.no_grad()
def style_mae(model: SegSynthModel, scheduler, data: dict) -> tuple[float, float]:
    """Mean absolute error of the sampled disc / background levels, and the saturated fraction."""
    pipe = SegSynthPipeline.from_model(model, scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(data["mask"], data["style_images"], num_inference_steps=10,
                  generator=torch.Generator().manual_seed(7)).images[:, 0]
    fg = data["mask"].bool()
    got_fg = (images * fg).sum((1, 2)) / fg.sum((1, 2))
    got_bg = (images * ~fg).sum((1, 2)) / (~fg).sum((1, 2))
    mae = ((got_fg - data["style"][:, 1]).abs().mean() + (got_bg - data["style"][:, 0]).abs().mean()).item() / 2
    return mae, saturated(images)


def saturated(images: torch.Tensor) -> float:
    """Fraction of pixels of ``images`` in [0, 1] sitting at exactly 0 or 1 (clipped)."""
    return ((images <= 0) | (images >= 1)).float().mean().item()


def run(injection: str, steps: int, seed: int, batch_size: int, prediction_type: str = "v_prediction") -> dict[str, float]:
    torch.manual_seed(seed)
    model = SegSynthModel.from_config(model_config(injection))
    objective = ObjectiveConfig(prediction_type=prediction_type)
    scheduler = make_train_scheduler(objective)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    data_gen, loss_gen = torch.Generator().manual_seed(100 + seed), torch.Generator().manual_seed(200 + seed)
    start = time.perf_counter()
    for _ in range(steps):
        batch = make_batch(batch_size, data_gen)
        loss = diffusion_loss(model, scheduler, batch, objective, loss_gen)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    train_s = time.perf_counter() - start
    model.eval()
    heldout = make_batch(256, torch.Generator().manual_seed(999))
    sample_set = make_batch(64, torch.Generator().manual_seed(998))
    mae, clipped = style_mae(model, scheduler, sample_set)
    return {
        "injection": injection,
        "prediction_type": prediction_type,
        "seed": seed,
        "params": count_params(model),
        "train_s": round(train_s, 1),
        "heldout_loss": heldout_loss(model, scheduler, heldout, drop_style=False, prediction_type=prediction_type),
        "heldout_loss_no_style": heldout_loss(model, scheduler, heldout, drop_style=True, prediction_type=prediction_type),
        "style_mae": mae,
        "saturated": clipped,
        "real_saturated": saturated(sample_set["image"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--injections", nargs="+", default=["time", "cross_attention", "both"])
    parser.add_argument("--prediction-types", nargs="+", default=["v_prediction"], choices=["v_prediction", "epsilon"])
    parser.add_argument("--out", type=Path, default=None, help="optional JSON file for the rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        for prediction_type in args.prediction_types:
            for injection in args.injections:
                rows.append(run(injection, args.steps, seed, args.batch_size, prediction_type))
                print(json.dumps(rows[-1]), flush=True)
    keys = ("heldout_loss", "heldout_loss_no_style", "style_mae", "saturated")
    for prediction_type in args.prediction_types:
        for injection in args.injections:
            mine = [r for r in rows if r["injection"] == injection and r["prediction_type"] == prediction_type]
            mean = {k: sum(r[k] for r in mine) / len(mine) for k in keys}
            print(f"{injection:16s} {prediction_type:12s} heldout {mean['heldout_loss']:.4f}  "
                  f"no-style {mean['heldout_loss_no_style']:.4f}  style MAE {mean['style_mae']:.4f}  "
                  f"saturated {mean['saturated']:.1%}  (n={len(mine)} seeds)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
