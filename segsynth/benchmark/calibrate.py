"""One step budget that lets the slowest setting stop rising (``calibration.enabled``).

A shared budget is only fair if it is long enough for every row: a baseline still learning when
it stops makes any extra data look useful, and a setting cut short looks worse than it is. The
planned budget (:mod:`segsynth.benchmark.sizing`) is a floor measured on the built-in datasets;
calibration measures it on the data at hand. On one fold and one seed, every row (baseline,
controls, synthetic settings) trains with early stopping (``train.patience`` validations without
a smoothed validation gain of ``train.min_delta``) up to ``max_factor`` times the planned budget;
the budget of every run of the benchmark is then the largest step at which one of them stopped,
never less than the planned one. Only validation cases decide: calibration runs are never scored
on test cases. ``calibration.json`` records every row's stop and the budget, and is reused when
the benchmark continues.

Caveat: a calibration run's cosine schedule spans its cap, not the budget it finds, so the step at
which it stops is an estimate of when the real run stops rising (``still_rising`` in each run's
``training.json`` and in the table checks the outcome).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from segsynth.artifacts.names import CALIBRATION_DIR, CALIBRATION_JSON, CONFIG_YAML, TRAINING_JSON
from segsynth.artifacts.schemas import TrainingSummary, read_record
from segsynth.benchmark.config import BenchmarkConfig
from segsynth.benchmark.recipes import (
    BASELINE,
    CONTROL_NAMES,
    all_labelled_ids,
    segmentation_recipe,
    setting_names,
)
from segsynth.benchmark.selftrain import pseudo_labelled_set
from segsynth.data.loader import index_dataset
from segsynth.io.atomic import atomic_write_json
from segsynth.seg.splits import Split
from segsynth.seg.train import train_seg


def calibration_run_dir(out: Path, setting: str) -> Path:
    """The calibration run of ``setting`` in the benchmark folder ``out``."""
    return out / CALIBRATION_DIR / setting.replace(":", "_").replace("+", "_")


def budget_from_stops(stops: dict[str, int], planned: int, val_every: int) -> int:
    """The shared budget: the latest stop of any row, never below ``planned``, in whole validation intervals."""
    latest = max([planned, *stops.values()])
    return math.ceil(latest / val_every) * val_every


def calibrated_budget(
    data: Path, out: Path, splits: Sequence[Split], config: BenchmarkConfig, planned: int,
    sets: tuple[Path, Path | None], console: Console,
) -> dict[str, Any]:
    """Calibrate (or read back) the benchmark's budget; see the module docstring.

    Args:
        planned: the budget planned from the data (the floor, and the unit of the cap).
        sets: the calibration fold's ``(synthetic set, variants set or None)``.

    Returns:
        The contents of ``calibration.json``: ``budget``, ``planned``, ``cap``, ``patience``,
        ``fold``, ``seed`` and per row its ``stopped_at``, ``stopped_early`` and ``best_step``.
    """
    path = out / CALIBRATION_JSON
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    section = config.calibration
    fold, seed = section.fold, config.seeds[0]
    if fold >= len(splits):
        raise ValueError(f"calibration.fold {fold} is not among the {len(splits)} folds")
    split = splits[fold]
    cap = section.max_factor * planned
    synth, variants = sets
    ids = [r.id for r in index_dataset(data)]
    rows: dict[str, dict[str, Any]] = {}
    console.print(f"[bold]calibration[/] on fold {fold}, seed {seed}: every row up to {cap} steps, "
                  f"stopping after {section.patience} validations without gain")
    for setting in setting_names(config):
        recipe = segmentation_recipe(config, setting, seed, cap)
        # the cap and the patience replace whatever budget the config names (the very thing calibrated)
        train = recipe.train.model_copy(update={"steps": cap, "patience": section.patience})
        recipe = recipe.model_copy(update={"train": train})
        run = calibration_run_dir(out, setting)
        pseudo = ()
        if setting == CONTROL_NAMES["self_training"]:  # taught by the calibration baseline (it ran first)
            pseudo = [pseudo_labelled_set(data, out / CALIBRATION_DIR / "pseudo", calibration_run_dir(out, BASELINE),
                                          split, fold, seed, config)]
        strategy = recipe.mix.strategy
        synthetic = [] if strategy == "none" or pseudo else [variants if strategy == "merge" else synth]
        train_ids = all_labelled_ids(ids, split) if setting == CONTROL_NAMES["all_labelled"] else split.train_ids
        if not (run / TRAINING_JSON).is_file():
            train_seg(data, recipe, run, synthetic=synthetic, train_ids=train_ids, val_ids=split.val_ids,
                      resume=(run / CONFIG_YAML).is_file(), console=console, pseudo_labelled=pseudo)
        summary = read_record(run / TRAINING_JSON, TrainingSummary)
        rows[setting] = {"stopped_at": summary.steps, "stopped_early": summary.stopped_early,
                         "best_step": summary.best_step}
    val_every = segmentation_recipe(config, BASELINE, seed, planned).train.val_every
    budget = budget_from_stops({k: v["stopped_at"] for k, v in rows.items()}, planned, val_every)
    record = {"budget": budget, "planned": planned, "cap": cap, "patience": section.patience, "fold": fold,
              "seed": seed, "rows": rows,
              "never_stopped": sorted(k for k, v in rows.items() if not v["stopped_early"])}
    atomic_write_json(path, record)
    return record
