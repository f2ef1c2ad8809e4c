"""Before/after table of two generators on the downstream benchmark, per built-in dataset.

Reads the committed ``downstream-<dataset>.json`` (the earlier generator; ``--base NAME``:
``downstream-<dataset>-NAME.json``, e.g. a canonical benchmark kept under its own name after the
recipe changed) and, per new generator,
``downstream-<dataset>-<name>.json`` (run with ``benchmarks/downstream.py --name <name> --reuse``),
checks they are the same experiment (same folds, seeds, budget and baseline scores) and writes, per
synthetic setting, ΔDice vs baseline before and after and the case-paired difference after − before
(:func:`segsynth.benchmark.compare.compare_generators`)::

    .venv/bin/python benchmarks/generator_comparison.py --names unipc5 consistency

A generator run on some datasets only is compared on those (the table lists them).

writes ``benchmarks/results/downstream-before-after.json`` and ``.md``. With ``--profile screening``
it compares the screening runs instead (``downstream-<dataset>-screening.json`` against
``downstream-<dataset>-<name>-screening.json``, from ``downstream.py --profile screening --name <name>``)
and writes ``downstream-before-after-screening.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import command_line

from segsynth.benchmark.compare import compare_generators
from segsynth.data.builtin import BUILTIN_DATASETS
from segsynth.io.atomic import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
#: What a generator is in a benchmark's config: its training overrides, its training data and its sampling.
GENERATOR_KEYS = ("diffusion_overrides", "generator", "generation")


def _fmt(d: dict[str, float]) -> str:
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def markdown(table: dict[str, dict[str, dict]], command: str) -> str:
    lines = [f"`{command}`", "",
             "ΔDice vs the real-only baseline with the earlier generator (before) and with each new one (after), "
             "and after − before paired by test case (seeds averaged within a case; percentile-bootstrap 95% CI "
             "over cases, Wilcoxon p). The baselines are the same runs in every benchmark.", "",
             "| generator | dataset | cases | setting | ΔDice before | ΔDice after | after − before | p |",
             "|---|---|---|---|---|---|---|---|"]
    for name, datasets in table.items():
        for dataset, result in datasets.items():
            for setting, row in result["settings"].items():
                diff = row["after_minus_before"]
                lines.append(f"| {name} | {dataset} | {result['cases']} | {setting} | {_fmt(row['before'])} | "
                             f"{_fmt(row['after'])} | {_fmt(diff)} | {diff['p_wilcoxon']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", required=True, help="the new generators' --name in benchmarks/downstream.py")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--datasets", nargs="+", choices=list(BUILTIN_DATASETS), default=list(BUILTIN_DATASETS))
    parser.add_argument("--profile", choices=["screening"], default=None,
                        help="compare the screening runs of downstream.py --profile screening")
    parser.add_argument("--base", default=None,
                        help="the earlier benchmark's --name (default: the canonical downstream-<dataset>.json)")
    args = parser.parse_args(argv)
    suffix = f"-{args.profile}" if args.profile else ""
    command = command_line("generator_comparison", argv, prefix=[".venv/bin/python"], quote=True)
    table: dict[str, dict[str, dict]] = {}
    for name in args.names:
        ran = [d for d in args.datasets if (args.results / f"downstream-{d}-{name}{suffix}.json").is_file()]
        if not ran:
            raise SystemExit(f"no downstream-<dataset>-{name}{suffix}.json in {args.results}")
        if len(ran) < len(args.datasets):
            print(f"{name}: run on {', '.join(ran)} only")
        for dataset in ran:
            base = dataset if args.base is None else f"{dataset}-{args.base}"
            before = json.loads((args.results / f"downstream-{base}{suffix}.json").read_text(encoding="utf-8"))
            after = json.loads((args.results / f"downstream-{dataset}-{name}{suffix}.json").read_text(encoding="utf-8"))
            table.setdefault(name, {})[dataset] = compare_generators(before, after) | {
                "before_generator": {k: before["config"].get(k) for k in GENERATOR_KEYS},
                "after_generator": {k: after["config"].get(k) for k in GENERATOR_KEYS},
            }
    label = f"downstream-before-after{suffix}"
    atomic_write_json(args.results / f"{label}.json", {"benchmark": label, "command": command, "generators": table})
    text = markdown(table, command)
    atomic_write_text(args.results / f"{label}.md", text)
    print(text)


if __name__ == "__main__":
    main()
