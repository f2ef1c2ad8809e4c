"""Does training the denoiser on the unlabelled pool too (``data.include_unlabeled``) help?

For each built-in dataset the unlabelled cases are split in two halves by case (seeded). Two copies
of the dataset share every labelled image; copy A holds the first half in ``unlabeled/``, copy B
the second. Two models are trained on copy A with the same recipe and steps: the default (labelled
images only) and ``data.include_unlabeled: true`` (A's unlabelled images join every epoch with
their layout dropped). Both generate the same layouts (same-mask variants of the labelled masks,
same seed) with style references drawn from copy B's unlabelled half, which neither model ever
saw, so retrieval stays zero-shot for both; ``evaluate_synth`` scores both sets with one
segmentation network trained on the real labelled data. Rows: style retrieval (joint, stain and
Gram parts), same-layout diversity vs real between-image diversity, layout fidelity vs its real
ceiling, FID / KID, and the training time.

Run: ``PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/unlabeled_pool.py --work /tmp/pool``
(about 15 minutes per dataset on one CPU core); writes ``benchmarks/results/unlabeled_pool.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import command_line, summarise, train_keeping_seconds, write_json
from rich.console import Console
from rich.table import Table

from segsynth.artifacts.names import DATASET_JSON, IMAGES_DIR, MASKS_DIR, UNLABELED_DIR
from segsynth.config import load_config
from segsynth.data.builtin import build_builtin
from segsynth.data.format import load_spec, save_spec
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.evaluation import EvaluationConfig, evaluate_synth
from segsynth.synth.config import GenerationConfig
from segsynth.synth.generate import generate

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("histo-he", "nuclei-fluo")
CHOICES = {"labelled only (default)": False, "labelled + unlabelled pool": True}


def split_pool(data: Path, work: Path, seed: int) -> tuple[Path, Path, dict[str, list[str]]]:
    """Copies A (first half of the unlabelled cases) and B (second half) of ``data``."""
    spec = load_spec(data)
    cases = sorted(set(spec.unlabeled_cases.values()))
    order = np.random.default_rng(seed).permutation(len(cases))
    halves = {"train": sorted(cases[i] for i in order[: len(cases) // 2]),
              "references": sorted(cases[i] for i in order[len(cases) // 2:])}
    copies = []
    for name, keep in (("A", halves["train"]), ("B", halves["references"])):
        root = work / f"data_{name}"
        if not (root / DATASET_JSON).is_file():
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(data / IMAGES_DIR, root / IMAGES_DIR)
            shutil.copytree(data / MASKS_DIR, root / MASKS_DIR)
            (root / UNLABELED_DIR).mkdir()
            stems = {stem for stem, case in spec.unlabeled_cases.items() if case in keep}
            for path in (data / UNLABELED_DIR).iterdir():
                if path.name.split(".")[0] in stems:
                    shutil.copy2(path, root / UNLABELED_DIR / path.name)
            kept = {stem: case for stem, case in spec.unlabeled_cases.items() if stem in stems}
            save_spec(root, spec.model_copy(update={"unlabeled_cases": kept}))
        copies.append(root)
    return copies[0], copies[1], halves


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    data = args.work / "data" / name
    if not data.is_dir():
        build_builtin(name, data, tile_size=64)
    train_copy, reference_copy, halves = split_pool(data, work, args.seed)
    rows: dict[str, Any] = {}
    seg_run: str | None = None
    for label, pooled in CHOICES.items():
        run = work / f"run_pool{int(pooled)}_{args.steps}"
        cfg = load_config(DiffusionTrainConfig, args.config, {
            "train.steps": args.steps, "train.sample_every": 0, "train.checkpoint_every": args.steps,
            "data.include_unlabeled": pooled})
        train_s, _ = train_keeping_seconds(train_copy, cfg, run)
        synth = work / f"synth_pool{int(pooled)}_n{args.n}"
        if not (synth / "manifest.jsonl").is_file():
            shutil.rmtree(synth, ignore_errors=True)
            generate(run, synth, GenerationConfig(n=args.n, layouts="variants", per_mask=args.per_mask,
                                                  styles=reference_copy / UNLABELED_DIR, seed=args.seed, batch_size=16))
        metrics = evaluate_synth(synth, data, seg_run, config=EvaluationConfig(seed=args.seed), out=synth / "evaluation",
                                 console=Console(stderr=True))
        seg_run = seg_run or metrics["seg_run"]["path"]
        rows[label] = {"include_unlabeled": pooled, "run": str(run), "train_s": train_s, **summarise(metrics)}
        print(json.dumps({name: {label: rows[label]}}), flush=True)
    return {"data": str(data), "unlabeled_cases": halves, "seg_run": seg_run, "choices": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--config", type=Path, default=ROOT / "segsynth" / "recipes" / "tiny.yaml")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--per-mask", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "unlabeled_pool.json")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    results = {name: run_dataset(name, args) for name in args.datasets}
    command = command_line("unlabeled_pool", argv, quote=True)
    write_json(args.json, {"benchmark": "unlabeled_pool", "command": command, "steps": args.steps,
                           "n": args.n, "per_mask": args.per_mask, "torch_threads": torch.get_num_threads(),
                           "sampling": {k: GenerationConfig.model_fields[k].default
                                        for k in ("sampler", "steps", "style_guidance")},
                           "datasets": results})
    table = Table(title=f"unlabelled pool in the denoiser ({args.steps} steps, {args.n} samples, zero-shot references)")
    for column in ("dataset", "training", "pairwise (stain/gram)", "top-1 (chance)", "diversity", "Dice/ceiling",
                   "FID seg (real)", "train s"):
        table.add_column(column)
    for name, block in results.items():
        for label, r in block["choices"].items():
            table.add_row(name, label, f"{r['pairwise']:.3f} ({r['stain_pairwise']:.3f}/{r['gram_pairwise']:.3f})",
                          f"{r['top1']:.3f} ({r['top1_chance']:.3f})", f"{r['diversity_ratio']:.2f}",
                          f"{r['fidelity_fraction']:.3f}",
                          f"{r['fid_seg_encoder']:.3f} ({r['fid_seg_encoder_real_vs_real']:.3f})",
                          "-" if r["train_s"] is None else f"{r['train_s']:.0f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
