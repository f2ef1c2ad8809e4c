"""Which choice moves zero-shot style retrieval: style guidance, a style-consistency loss, a colour transfer.

For each built-in dataset (``histo-he``, ``nuclei-fluo``) the tiny recipe (``segsynth/recipes/tiny.yaml``,
64 px) is trained, and sets are generated with style references drawn from the dataset's
``unlabeled/`` images, which the generator never trained on (``--styles DATA/unlabeled``). Every
set is scored by :func:`segsynth.evaluate_synth` with one segmentation network per dataset, trained
on the real data. Per choice the row holds:

- style retrieval (pairwise and top-1, with chance) in the measure's joint space and in its stain
  and Gram parts alone (:mod:`segsynth.evaluation.style_retrieval`: not the generator's encoder);
- the *real ceiling* of that retrieval: the same gallery, queried with a real unlabelled image of
  the references' own case that is not one of them. A generator that reproduced its references'
  slide perfectly would score about this, so it bounds what the targets can reach on this data;
- same-layout diversity against real between-image diversity (stain/texture feature, the ratio);
- layout fidelity (mean foreground Dice) against its real held-out ceiling;
- FID / KID (segmentation-encoder and stain/texture features).

Choices: the default (style guidance 1.5); higher style guidance (sampling only, same model);
``objective.style_consistency`` (a separately trained model, same steps); and a post-hoc
Reinhard colour transfer of the default set (every sample's per-channel mean / std set to its
references' pooled ones, after sampling: it changes the images' colour statistics and nothing else).

Run (what ``benchmarks/results/style_ablation.json`` holds, with the command inside it)::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/style_ablation.py --work /tmp/styleab

Every model, set and evaluation found in ``--work`` is reused (a reused model keeps the training
seconds it recorded); ``--datasets`` picks datasets. About 2 hours on 2 shared CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import command_line, seconds_since, summarise, train_keeping_seconds, write_json
from rich.console import Console
from rich.table import Table

from segsynth.config import load_config
from segsynth.data.builtin import build_builtin
from segsynth.data.io import read_image, write_image
from segsynth.data.loader import SegDataset
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.evaluation import EvaluationConfig, evaluate_synth
from segsynth.evaluation.sets import load_style_references, load_synthetic
from segsynth.evaluation.style_retrieval import style_retrieval
from segsynth.synth.config import GenerationConfig
from segsynth.synth.generate import generate
from segsynth.synth.styles import open_style_pool

ROOT = Path(__file__).resolve().parents[1]
#: The sampler the committed results were drawn with (fixed here: generate's default may change).
SAMPLING = {"sampler": "dpmpp", "steps": 20}
DATASETS = ("histo-he", "nuclei-fluo")


def train(data: Path, steps: int, consistency: float, run: Path, config: Path) -> dict[str, Any]:
    """Train ``run`` unless its pipeline exists; the training seconds it recorded and whether reused."""
    cfg = load_config(DiffusionTrainConfig, config, {
        "train.steps": steps, "train.sample_every": 0, "train.checkpoint_every": steps,
        "objective.style_consistency": consistency})
    seconds, reused = train_keeping_seconds(data, cfg, run)
    return {"run": str(run), "steps": steps, "style_consistency": consistency, "train_s": seconds, "reused": reused}


def reinhard(synth: Path, out: Path) -> Path:
    """A copy of the set ``synth`` in which each image's per-channel mean and std are its references'.

    The references' statistics pool all pixels of all of a sample's references; the result is
    clipped to [0, 1] and written in the set's own image format. Masks and manifest are copied.
    """
    if (out / "manifest.jsonl").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(synth, tmp)
    synthetic = load_synthetic(tmp, max_samples=None)
    refs = load_style_references(synthetic)
    dataset = SegDataset(tmp)
    path_of = {ref.id: ref.image_path for ref in dataset.refs}
    for sample_id, record in zip(synthetic.ids, synthetic.records):
        pixels = np.concatenate([refs[(record.style_source, i)].reshape(refs[(record.style_source, i)].shape[0], -1)
                                 for i in record.style_ids], 1)
        path = path_of[sample_id]
        raw = read_image(path)
        image = raw.astype(np.float64) / 255.0
        axis = (0, 1) if image.ndim == 3 else None
        mean, std = image.mean(axis=axis), image.std(axis=axis)
        target_mean, target_std = pixels.mean(1), pixels.std(1)
        if image.ndim == 2:
            target_mean, target_std = target_mean[0], target_std[0]
        moved = (image - mean) / np.maximum(std, 1e-6) * target_std + target_mean
        write_image(path, np.round(np.clip(moved, 0.0, 1.0) * 255.0).astype(raw.dtype))
    shutil.rmtree(tmp / "evaluation", ignore_errors=True)
    tmp.rename(out)
    return out


def real_ceiling(synth: Path, seed: int) -> dict[str, Any]:
    """Style retrieval of the set's own gallery, each query a real pool image of its references' case.

    The query image is drawn (seeded) among the pool images of the case of the sample's first
    reference that are not among its references; samples whose case has no such image are left out.
    """
    synthetic = load_synthetic(synth, max_samples=None)
    refs = load_style_references(synthetic)
    rng = np.random.default_rng(seed)
    queries, sets, pools = [], [], {}
    for record in synthetic.records:
        if record is None or not record.style_ids:
            continue
        pool = pools.setdefault(record.style_source, open_style_pool(record.style_source, synthetic.spec.channels))
        case = {ref.id: ref.case_id for ref in pool.refs}
        candidates = [i for i, ref in enumerate(pool.refs)
                      if ref.case_id == case[record.style_ids[0]] and ref.id not in record.style_ids]
        if not candidates:
            continue
        queries.append(pool.load_arrays(int(rng.choice(candidates)))[0])
        sets.append([(record.style_source, ref) for ref in record.style_ids])
    result = style_retrieval(queries, sets, refs, synthetic.spec.channels, seed)
    return {"query": "a real unlabelled image of the references' case, not one of them", **result}


def evaluate(synth: Path, data: Path, seg_run: str | None, seed: int) -> dict[str, Any]:
    """``metrics.json`` of ``synth`` (computed unless there); ``evaluate_s`` is the seconds it recorded."""
    out = synth / "evaluation"
    if not (out / "metrics.json").is_file():
        evaluate_synth(synth, data, seg_run, config=EvaluationConfig(seed=seed), out=out, console=Console(stderr=True))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"evaluate_s": metrics["seconds"], "metrics": metrics}


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every choice on one dataset, each model trained when its first choice needs it."""
    work = args.work / name
    data = args.work / "data" / name
    if not data.is_dir():
        build_builtin(name, data, tile_size=64)
    default = args.guidance[0]
    choices = [(f"guidance {g:g}", 0.0, g) for g in args.guidance]
    if name in args.consistency_on:
        choices += [(f"consistency {w:g}", w, default) for w in args.consistency]
    runs: dict[float, dict[str, Any]] = {}
    rows: dict[str, Any] = {}
    seg_run: str | None = None
    for label, w, g in choices:
        if w not in runs:
            runs[w] = train(data, args.steps, w, work / f"run_sc{w:g}_{args.steps}", args.config)
        synth = work / f"synth_sc{w:g}_g{g:g}_n{args.n}"
        tick, reused = time.perf_counter(), (synth / "manifest.jsonl").is_file()
        if not reused:
            generate(runs[w]["run"], synth, GenerationConfig(
                n=args.n, layouts="variants", per_mask=args.per_mask, styles=data / "unlabeled",
                style_guidance=g, seed=args.seed, batch_size=16, **SAMPLING))
        row = {"kind": "sampling" if w == 0 else "training", "style_guidance": g, "style_consistency": w,
               "model": runs[w], "synth": str(synth),
               "generate_s": None if reused else round(time.perf_counter() - tick, 1), "set_reused": reused}
        todo = [(label, row)]
        if label == choices[0][0]:
            todo.append((f"guidance {default:g} + Reinhard", {
                "kind": "post-hoc colour transfer of the default set", "style_guidance": default,
                "style_consistency": 0.0, "model": runs[0.0],
                "synth": str(reinhard(synth, work / f"synth_reinhard_g{default:g}_n{args.n}"))}))
        for key, entry in todo:
            entry.update(evaluate(Path(entry["synth"]), data, seg_run, args.seed))
            seg_run = seg_run or entry["metrics"]["seg_run"]["path"]
            entry["summary"] = summarise(entry["metrics"])
            rows[key] = entry
            print(json.dumps({name: {key: entry["summary"]}}), flush=True)
    return {"data": str(data), "seg_run": seg_run,
            "retrieval_real_ceiling": real_ceiling(work / f"synth_sc0_g{default:g}_n{args.n}", args.seed),
            "choices": rows}


def table(results: dict[str, Any]) -> tuple[Table, list[str]]:
    """The printed table and the same rows as Markdown."""
    columns = ["dataset", "choice", "pairwise (stain / gram)", "top-1 (chance)", "stain top-1", "gram top-1",
               "diversity ratio", "Dice / ceiling", "FID seg (real)", "KID stain (real)"]
    rich_table = Table(title="style ablation (tiny recipe, references from unlabeled/)")
    for col in columns:
        rich_table.add_column(col, justify="right")
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, block in results["datasets"].items():
        c = block["retrieval_real_ceiling"]
        lines = [("real ceiling", f"{c['pairwise_accuracy']:.3f} ({c['by_part']['stain']['pairwise_accuracy']:.3f} / "
                                  f"{c['by_part']['gram']['pairwise_accuracy']:.3f})",
                  f"{c['top1_accuracy']:.3f} ({c['top1_chance']:.3f})", f"{c['by_part']['stain']['top1_accuracy']:.3f}",
                  f"{c['by_part']['gram']['top1_accuracy']:.3f}", "", "", "", "")]
        for label, row in block["choices"].items():
            s = row["summary"]
            lines.append((label, f"{s['pairwise']:.3f} ({s['stain_pairwise']:.3f} / {s['gram_pairwise']:.3f})",
                          f"{s['top1']:.3f} ({s['top1_chance']:.3f})", f"{s['stain_top1']:.3f}", f"{s['gram_top1']:.3f}",
                          f"{s['diversity_ratio']:.2f}", f"{s['fidelity_fraction']:.3f}",
                          f"{s['fid_seg_encoder']:.3g} ({s['fid_seg_encoder_real_vs_real']:.3g})",
                          f"{s['kid_stain_texture']:.2g} ({s['kid_stain_texture_real_vs_real']:.2g})"))
        for line in lines:
            rich_table.add_row(name, *line)
            md.append("| " + " | ".join([name, *line]) + " |")
    return rich_table, md


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="work folder (datasets, runs, sets, evaluations)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--config", type=Path, default=ROOT / "segsynth" / "recipes" / "tiny.yaml")
    parser.add_argument("--steps", type=int, default=600, help="training steps of every model")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.5, 3.0, 5.0],
                        help="style guidance scales; the first is the default every other choice uses")
    parser.add_argument("--consistency", type=float, nargs="*", default=[0.5],
                        help="objective.style_consistency weights, one model each")
    parser.add_argument("--consistency-on", nargs="*", choices=DATASETS, default=list(DATASETS),
                        help="datasets that get the --consistency models (each is one more training run)")
    parser.add_argument("-n", type=int, default=64, help="samples per set")
    parser.add_argument("--per-mask", type=int, default=4, help="samples per real layout (same-layout diversity)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "style_ablation.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    command = "PYTHONPATH=$PWD OMP_NUM_THREADS=1 " + command_line("style_ablation", argv, prefix=[".venv/bin/python"],
                                                                  quote=True)
    results: dict[str, Any] = {"benchmark": "style_ablation", "command": command, "config": str(args.config),
                               "steps": args.steps, "n": args.n, "per_mask": args.per_mask, "seed": args.seed,
                               "datasets": {name: run_dataset(name, args) for name in args.datasets}}
    results["seconds_this_call"] = seconds_since(started)  # small when everything was reused
    rich_table, md = table(results)
    Console(width=200).print(rich_table)
    write_json(args.json, results)
    args.json.with_suffix(".md").write_text(
        f"# Style ablation\n\n`{command}`\n\nPairwise chance 0.5; top-1 chance in brackets. \"real ceiling\": the "
        "same retrieval queried with a real unlabelled image of the references' case. Diversity ratio: same-layout "
        "synthetic / real between-image stain-texture distance. Dice / ceiling: layout fidelity as a fraction of "
        "the real held-out Dice.\n\n" + "\n".join(md) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
