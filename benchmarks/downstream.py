"""Downstream benchmark: does synthetic data raise segmentation Dice at equal cost?

Runs ``segsynth benchmark`` (the library call behind it) on built-in real datasets with
the ``benchmark-cpu`` recipe (``segsynth/recipes/``): every fold in the low-label regime, 3 seeds, the baseline, the
controls "baseline + heavy augmentation", "self-training" and "all labelled cases", and ratio /
concat / merge settings (each also with heavy augmentation), all at one planned step budget, with
the real test case as the statistical unit; the headline column is each setting's gain over the
fold's better free control, chosen on validation cases.

Run (about an hour per dataset on one CPU core; datasets can run as parallel processes)::

    .venv/bin/python benchmarks/downstream.py --dataset nuclei-fluo --work runs/downstream

writes ``benchmarks/results/downstream-<dataset>.json`` (the benchmark's ``results.json`` plus the
command, the machine and the wall time) and ``downstream-<dataset>.md`` (its table). Re-running the
same command continues a killed run.

Another generator on the same experiment (``--config`` with other diffusion or generation
settings): ``--name`` keeps its folder and results apart (``<dataset>-<name>``), and ``--reuse``
copies in the earlier benchmark's runs the generator cannot change (the real-only rows, and the
fold generators when only the sampling differs), each checked against this config first::

    .venv/bin/python benchmarks/downstream.py --dataset nuclei-fluo --work runs/downstream \
        --config segsynth/recipes/benchmark-cpu-consistency.yaml --name consistency --reuse runs/downstream/nuclei-fluo

``--profile screening`` runs fold 0 with two seeds at the planned budget (a cheap first look,
written as ``<dataset>-screening``); ``--profile full`` every fold with three seeds. Both tables
lead with the gain over the best free control.

``--set`` changes one value of the config, e.g. only the sampler
(``--set generation.sampler=unipc --set generation.steps=5 --name unipc5``).

A generator that also trains on pseudo-labelled unlabelled images (``generator.pseudo_labels``; the
real-only rows are reused, the generator and the synthetic rows are made again). Its pool is split by
case, so each fold needs unlabelled images of two usable cases: in the recipe's low-label folds only
histo-he has them (brain-mri and nuclei-fluo are refused before anything trains, naming the folder)::

    .venv/bin/python benchmarks/downstream.py --dataset histo-he --work runs/downstream --profile screening \
        --set generator.pseudo_labels=true --name pseudogen --reuse runs/downstream/histo-he-screening
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from common import command_line, seconds_since
from rich.console import Console

from segsynth.benchmark import BenchmarkConfig, markdown_table, profile_overrides, rich_table, run_benchmark
from segsynth.cli.options import parse_overrides
from segsynth.config import load_config
from segsynth.data.builtin import BUILTIN_DATASETS, build_builtin
from segsynth.io.atomic import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(BUILTIN_DATASETS), required=True)
    parser.add_argument("--work", type=Path, required=True, help="folder for the data and the benchmark runs")
    parser.add_argument("--config", type=Path, default=ROOT / "segsynth" / "recipes" / "benchmark-cpu.yaml")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--run-folds", type=int, nargs="+", default=None,
                        help="only these folds (default all); finished runs of a larger benchmark are reused")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of --config (YAML), e.g. generation.steps=5 (repeatable)")
    parser.add_argument("--profile", choices=["screening", "full"], default=None,
                        help="screening: fold 0 with 2 seeds (results named <dataset>-screening); full: every fold, "
                             "3 seeds (default: as the config says)")
    parser.add_argument("--name", default=None,
                        help="suffix of the benchmark folder and results files: <dataset>-<name> (another generator)")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier benchmark folder of this dataset: copy in the runs this config leaves unchanged")
    args = parser.parse_args(argv)
    label = args.dataset if args.name is None else f"{args.dataset}-{args.name}"
    if args.profile == "screening":
        label += "-screening"  # other seeds than a full run: its own folder and results
    console = Console(width=160)
    data = args.work / "data" / args.dataset
    if not (data / "dataset.json").is_file():
        build_builtin(args.dataset, data)
    overrides = (profile_overrides(args.profile) if args.profile else {}) | parse_overrides(args.overrides)
    overrides |= {"run_folds": args.run_folds} if args.run_folds else {}
    cfg = load_config(BenchmarkConfig, args.config, overrides)
    tick = time.perf_counter()
    results = run_benchmark(data, cfg, args.work / label, console=console, reuse=args.reuse)
    results["benchmark"] = "downstream"
    results["command"] = command_line("downstream", argv, prefix=["python"])
    results["machine"] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "platform": platform.platform()}
    results["wall_time_s"] = seconds_since(tick)
    console.print(rich_table(results))
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / f"downstream-{label}.json", results)
    atomic_write_text(args.results / f"downstream-{label}.md",
                      f"`{results['command']}` ({results['wall_time_s'] / 60:.0f} min on {os.cpu_count()} CPU cores, "
                      f"{torch.get_num_threads()} torch threads)\n\n" + markdown_table(results))
    console.print(f"wrote {args.results / f'downstream-{label}.json'}")


if __name__ == "__main__":
    main()
