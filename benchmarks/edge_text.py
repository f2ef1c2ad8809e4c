"""Edge and text conditions on the built-in datasets: layout fidelity with / without edges, and
prompt -> modality accuracy of one model trained on several modalities.

1. **Edge** (``nuclei-fluo``): the same tiny model trained with and without ``model.edge``; each
   generates one image per real training mask (``--layouts variants``); a small segmenter trained
   on the real images segments every synthetic image, scored against its layout (mean foreground
   Dice, as in :mod:`segsynth.evaluation.layout_fidelity`). Edge runs are scored with edges from the
   layout alone (no real image) and from the real image (variants mode), each paired per layout
   with the no-edge model (mean difference, bootstrap 95 % CI, Wilcoxon p).
2. **Text** (``nuclei-fluo`` + ``brain-mri`` + ``histo-he``): one ``model.text`` model on all three
   (grey repeated to RGB). Samples are drawn for each prompt with the *null style* and layouts
   cycled over all three datasets; a small classifier trained on real tiles of the three datasets
   names the modality of each sample -> accuracy per prompt. Control: the same samples with the
   null prompt (chance is 1/3). A layout is not modality-free (the datasets label different
   structures: nuclei, brain tissue classes, tissue + nuclei), so accuracy is also split by the
   dataset the layout came from: on its own modality's layouts the prompt agrees with the layout,
   on the others it must override it. On its own layouts each prompt's samples are also scored
   for layout fidelity (a small segmenter per dataset, trained on its real tiles; the same
   segmenter on those real tiles is the ceiling), so a training choice that helps the prompt can
   be seen to cost the layout or not.

Everything is CPU-sized (32 px tiles, a few hundred steps): the numbers say whether the conditions
steer the model at all, not what a full-size run reaches.

Run (what ``benchmarks/results/edge_text.json`` holds, with the command inside it)::

    .venv/bin/python benchmarks/edge_text.py --out /tmp/edge_text --steps 300 --text-runs 300:1,1500:1,1500:3

Part 2 needs the ``[text]`` extra; ``--skip-text`` / ``--skip-edge`` run one part. Every model trained
once is reused from ``--out`` by a later call (its ``train_s`` is then null, ``reused`` true): the
1500-step text model serves both of its guidance scales. ``--json`` names the results file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import command_line, seconds_since, train_unless_done, write_json
from torch import nn

from segsynth.config import load_config
from segsynth.benchmark.stats import paired_difference
from segsynth.data.builtin import build_builtin
from segsynth.data.loader import SegDataset
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.evaluation.layout_fidelity import score_layouts
from segsynth.models.text import encode_prompts
from segsynth.synth.config import GenerationConfig
from segsynth.synth.generate import generate
from segsynth.synth.layouts import fit_mask

DATASETS = ("nuclei-fluo", "brain-mri", "histo-he")
ROOT = Path(__file__).resolve().parents[1]


def model_overrides(size: int, steps: int) -> dict[str, object]:
    return {
        "model.image_size": size, "model.block_out_channels": [32, 64], "model.attention_levels": [False, True],
        "model.attention_head_dim": 16, "model.style.encoder_channels": [16, 32], "model.style.dim": 32,
        "model.style.num_refs": 2, "train.steps": steps, "train.batch_size": 8, "train.lr": 1e-3,
        "train.warmup": 20, "train.ema_decay": 0.99, "train.checkpoint_every": steps, "train.sample_every": 0,
        "train.log_every": 50, "sampling.steps": 10,
    }


def real_arrays(root: Path, size: int, channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    ds = SegDataset(root)
    images, masks = [], []
    for i in range(len(ds)):
        image, mask = ds.load_arrays(i)
        images.append(np.stack([_crop(c, size) for c in image]))
        masks.append(fit_mask(mask, size))
    x = np.stack(images).astype(np.float32)
    if channels is not None and x.shape[1] != channels:
        x = np.repeat(x, channels // x.shape[1], axis=1)
    return x, np.stack(masks)


def _crop(channel: np.ndarray, size: int) -> np.ndarray:
    h, w = channel.shape
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return channel[top: top + size, left: left + size]


def small_net(in_ch: int, out_ch: int, classify: bool) -> nn.Module:
    layers: list[nn.Module] = []
    c = in_ch
    for width, dilation in ((32, 1), (32, 2), (32, 4), (32, 1)):
        layers += [nn.Conv2d(c, width, 3, padding=dilation, dilation=dilation), nn.GroupNorm(8, width), nn.SiLU()]
        c = width
    if classify:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, out_ch)]
    else:
        layers += [nn.Conv2d(c, out_ch, 1)]
    return nn.Sequential(*layers)


def fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (16,), generator=g)
        xb, yb = x[idx], y[idx]
        if torch.rand((), generator=g) < 0.5:
            xb, yb = xb.flip(-1), yb.flip(-1) if yb.ndim > 1 else yb
        loss = nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def edge_experiment(data: Path, work: Path, size: int, steps: int, n: int) -> dict[str, object]:
    x, y = real_arrays(data, size)
    k = SegDataset(data).spec.num_classes
    seg = fit(small_net(x.shape[1], k, classify=False), torch.from_numpy(x), torch.from_numpy(y), steps=400)
    names = SegDataset(data).spec.class_names

    def predict(images: torch.Tensor) -> torch.Tensor:
        return seg(images).argmax(1)

    rows: dict[str, object] = {"steps": steps,
                               "real_ceiling": score_layouts(x, y, predict, names)["summary"]["dice"]["mean_fg"]["mean"]}
    per_image: dict[str, list[float]] = {}
    for edge in (False, True):
        cfg = load_config(DiffusionTrainConfig, None, {**model_overrides(size, steps), "model.edge": edge})
        run = work / f"run_edge_{edge}_{steps}"
        train_s = _rounded(train_unless_done(data, cfg, run))
        rows.setdefault("train_s", {})[f"edge={edge}"] = train_s
        for source in (["layout", "image"] if edge else [None]):
            out = work / f"synth_edge_{edge}_{source}_{steps}_{n}"
            if not (out / "manifest.jsonl").is_file():
                generate(run, out, GenerationConfig(n=n, layouts="variants", per_mask=1, sampler="dpmpp", steps=10,
                                                    edges=source, batch_size=16))
            sx, sy = real_arrays(out, size)
            scores = score_layouts(sx, sy, predict, names)
            dice = scores["summary"]["dice"]["mean_fg"]["mean"]
            per_image[f"edge={edge},edges_from={source}"] = scores["per_image_dice"]
            rows[f"edge={edge},edges_from={source}"] = {"dice_mean_fg": dice}
            if edge:  # the same layouts (variants, one per real mask) as the no-edge model: paired per image
                rows[f"edge={edge},edges_from={source}"]["vs_no_edge"] = paired_difference(
                    per_image[f"edge={edge},edges_from={source}"], per_image["edge=False,edges_from=None"])
            print(json.dumps({f"edge={edge},edges_from={source}": rows[f"edge={edge},edges_from={source}"]}), flush=True)
    return rows


def _rounded(seconds: float | None) -> float | None:
    """Training seconds to a tenth; None (a reused model) stays None."""
    return None if seconds is None else round(seconds, 1)


def text_experiment(roots: list[Path], work: Path, size: int, steps: int, per_prompt: int,
                    guidance: float = 1.0, layout_drop: float = 0.0, layout_guidance: float = 1.0) -> dict[str, object]:
    """One text model (trained once per ``steps`` and ``layout_drop``) sampled at text ``guidance``.

    ``layout_drop`` > 0 trains with the layout replaced by its null embedding that often, so the
    prompt is sometimes the only condition that tells the modality; such a model can also be
    sampled with ``layout_guidance`` > 1 (classifier-free guidance towards the layout).
    """
    cfg = load_config(DiffusionTrainConfig, None, {**model_overrides(size, steps), "model.text": True,
                                                   "objective.cond_drop.layout": layout_drop})
    run = work / (f"run_text_{steps}" if layout_drop == 0 else f"run_text_{steps}_layoutdrop{layout_drop:g}")
    train_s = _rounded(train_unless_done(roots, cfg, run))
    pipe = SegSynthPipeline.from_pretrained(run / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    channels = pipe.unet.config.image_channels
    real = [real_arrays(r, size, channels) for r in roots]
    xs = torch.from_numpy(np.concatenate([x for x, _ in real]))
    ys = torch.cat([torch.full((len(x),), i) for i, (x, _) in enumerate(real)])
    clf = fit(small_net(channels, len(roots), classify=True), xs, ys, steps=300)
    prompts = [SegDataset(r).spec.prompt for r in roots]
    texts = encode_prompts(prompts)
    layouts = torch.from_numpy(np.stack([real[i % len(real)][1][(i // len(real)) % len(real[i % len(real)][1])]
                                         for i in range(per_prompt)]))
    sources = torch.arange(per_prompt) % len(real)  # the dataset each layout comes from
    unit = torch.nn.functional.normalize(texts.float(), dim=1)
    rows: dict[str, object] = {"steps": steps, "text_guidance": guidance, "layout_drop": layout_drop,
                               "layout_guidance": layout_guidance,
                               "train_s": train_s, "reused": train_s is None,
                               "prompts": prompts, "prompt_cosine": (unit @ unit.T).tolist(),
                               }
    with torch.no_grad():
        rows["classifier_real_accuracy"] = float((clf(xs).argmax(1) == ys).float().mean())
    # Layout fidelity on each prompt's own layouts: a small segmenter per dataset, trained on its real tiles.
    specs = [SegDataset(r).spec for r in roots]
    segs = [fit(small_net(channels, spec.num_classes, classify=False), torch.from_numpy(x), torch.from_numpy(y), steps=400)
            for spec, (x, y) in zip(specs, real)]

    def fidelity(k: int, images: np.ndarray, masks: np.ndarray) -> float:
        with torch.no_grad():
            scores = score_layouts(images, masks, lambda batch: segs[k](batch).argmax(1), specs[k].class_names)
        return scores["summary"]["dice"]["mean_fg"]["mean"]

    rows["fidelity_real_ceiling"] = {prompts[k]: fidelity(k, *real[k]) for k in range(len(roots))}
    for name, embeds in [*((p, texts[i:i + 1]) for i, p in enumerate(prompts)), ("<null prompt>", None)]:
        with torch.no_grad():
            images = pipe(layouts, None, num_inference_steps=10, style_guidance_scale=1.0,
                          layout_guidance_scale=layout_guidance,
                          text_guidance_scale=guidance if embeds is not None else 1.0,
                          prompt_embeds=None if embeds is None else embeds.expand(per_prompt, -1),
                          generator=[torch.Generator().manual_seed(i) for i in range(per_prompt)]).images
            predicted = clf(images).argmax(1)
        counts = torch.bincount(predicted, minlength=len(roots)).tolist()
        target = prompts.index(name) if name in prompts else None
        row: dict[str, object] = {"predicted_counts": dict(zip(prompts, counts)), "by_layout_source": {
            prompts[k]: dict(zip(prompts, torch.bincount(predicted[sources == k], minlength=len(roots)).tolist()))
            for k in range(len(roots))}}
        if target is not None:
            row["accuracy"] = counts[target] / per_prompt
            row["accuracy_own_layouts"] = float((predicted[sources == target] == target).float().mean())
            row["accuracy_other_layouts"] = float((predicted[sources != target] == target).float().mean())
            own = sources == target
            row["fidelity_own_layouts"] = fidelity(target, images[own].numpy(), layouts[own].numpy())
        rows[name] = row
        print(json.dumps({name: row}), flush=True)
    rows["mean_accuracy"] = float(np.mean([rows[p]["accuracy"] for p in prompts]))
    rows["mean_accuracy_own_layouts"] = float(np.mean([rows[p]["accuracy_own_layouts"] for p in prompts]))
    rows["mean_accuracy_other_layouts"] = float(np.mean([rows[p]["accuracy_other_layouts"] for p in prompts]))
    rows["mean_fidelity_fraction"] = float(np.mean([rows[p]["fidelity_own_layouts"] / rows["fidelity_real_ceiling"][p]
                                                    for p in prompts]))
    return rows


def _text_runs(text: str) -> list[tuple[int, float, float, float]]:
    """``"300:1,1500:3:0.5:2"`` -> ``[(300, 1.0, 0.0, 1.0), (1500, 3.0, 0.5, 2.0)]`` (training steps :
    text guidance [: layout drop in training [: layout guidance]])."""
    runs = []
    for item in text.split(","):
        steps, guidance, layout_drop, layout_guidance = (item.split(":") + ["", "", ""])[:4]
        runs.append((int(steps), float(guidance or 1.0), float(layout_drop or 0.0), float(layout_guidance or 1.0)))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (datasets, runs, synthetic sets)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "edge_text.json",
                        help="results file (default: the one the docs cite)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300, help="training steps of the edge / no-edge models")
    parser.add_argument("--text-runs", type=_text_runs, default=_text_runs("300:1,1500:1,1500:3"),
                        help="text models as STEPS:GUIDANCE[:LAYOUT_DROP[:LAYOUT_GUIDANCE]],...; one model per STEPS "
                             "and LAYOUT_DROP, sampled at each GUIDANCE (and LAYOUT_GUIDANCE)")
    parser.add_argument("--samples", type=int, default=48, help="synthetic images per setting / prompt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-text", action="store_true")
    parser.add_argument("--skip-edge", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    data = args.out / "data"
    for name in DATASETS:
        if not (data / name).is_dir():
            build_builtin(name, data / name, tile_size=args.size)
    command = command_line("edge_text", argv, prefix=[".venv/bin/python"], quote=True)
    results: dict[str, object] = {"benchmark": "edge_text", "command": command, "size": args.size,
                                  "samples": args.samples, "threads": args.threads}
    if not args.skip_edge:
        results["edge"] = edge_experiment(data / "nuclei-fluo", args.out, args.size, args.steps, args.samples)
    if not args.skip_text:
        results["text"] = [text_experiment([data / n for n in DATASETS], args.out, args.size, steps, args.samples,
                                           *sampling) for steps, *sampling in args.text_runs]
    results["seconds"] = seconds_since(started)
    write_json(args.json, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
