"""What each run of a benchmark is: its folder, its training samples and its recipe.

One home for the benchmark's layout and recipes, so the runner that trains the runs and the reuse
of an earlier benchmark's runs (:mod:`segsynth.benchmark.reuse`) cannot disagree on either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segsynth.artifacts.names import FOLD_DIR, PSEUDO_DIR, SEED_DIR, SEG_RUNS_DIR
from segsynth.benchmark.config import FREE_CONTROLS, BenchmarkConfig, split_setting
from segsynth.benchmark.sizing import fit_generator, image_side, segmentation_steps
from segsynth.config import load_config
from segsynth.data.format import load_spec
from segsynth.data.loader import index_dataset
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.train import fit_config_to_data
from segsynth.seg.config import SegTrainConfig, parse_mix
from segsynth.seg.splits import Split

BASELINE = "baseline"
#: Table names of the control rows (see :data:`segsynth.benchmark.config.CONTROLS`).
CONTROL_NAMES = {"heavy_augmentation": "baseline+heavy-aug", "self_training": "self-training",
                 "all_labelled": "all-labelled"}


def fold_dir(out: Path, fold: int) -> Path:
    """Fold ``fold``'s folder of the benchmark in ``out`` (its generator, synthetic sets, segmentation runs)."""
    return out / FOLD_DIR.format(fold=fold)


def seg_run_dir(out: Path, fold: int, setting: str, seed: int) -> Path:
    """The segmentation run of ``setting`` and ``seed`` in fold ``fold`` of the benchmark in ``out``."""
    return fold_dir(out, fold) / SEG_RUNS_DIR / setting.replace(":", "_").replace("+", "_") / SEED_DIR.format(seed=seed)


def setting_names(config: BenchmarkConfig) -> list[str]:
    """Row order of the table: the baseline, the controls, then the synthetic settings."""
    return [BASELINE, *(CONTROL_NAMES[c] for c in config.controls), *config.settings]


def free_control_names(config: BenchmarkConfig) -> list[str]:
    """Table names of the free controls this benchmark runs (what synthetic data must beat)."""
    return [CONTROL_NAMES[c] for c in config.controls if c in FREE_CONTROLS]


def pseudo_dir(out: Path, fold: int, seed: int) -> Path:
    """The pseudo-labelled set that the baseline of ``seed`` in fold ``fold`` made (self-training)."""
    return fold_dir(out, fold) / PSEUDO_DIR / SEED_DIR.format(seed=seed)


def all_labelled_ids(refs_ids: Sequence[str], split: Split) -> list[str]:
    """Every labelled sample of the fold outside its validation and test cases (the ``all_labelled``
    control: what the study would train on with every case labelled)."""
    held = set(split.val_ids) | set(split.test_ids)
    return sorted(i for i in refs_ids if i not in held)


def diffusion_recipe(data: Path, cfg: BenchmarkConfig) -> DiffusionTrainConfig:
    """Every fold generator's recipe: the diffusion config with its overrides, fitted to the data
    (its size, channels and classes unless the config names them; a named value that contradicts
    the data is refused here, before any training) and to the segmentation crop."""
    dcfg = load_config(DiffusionTrainConfig, cfg.diffusion_config, cfg.diffusion_overrides)
    seg = load_config(SegTrainConfig, cfg.segmentation_config, cfg.segmentation_overrides)
    dcfg = fit_generator(dcfg, image_side(data), seg, cfg.diffusion_config or "diffusion config")
    return fit_config_to_data(dcfg, load_spec(data), data)


def segmentation_recipe(cfg: BenchmarkConfig, setting: str, seed: int, steps: int) -> SegTrainConfig:
    """One setting's recipe: the shared recipe and budget, with exactly one factor changed."""
    # the benchmark's budget wins (it is the override when one is given, or the calibrated budget)
    overrides: dict[str, Any] = {**cfg.segmentation_overrides, "train.steps": steps, "train.seed": seed}
    if setting == CONTROL_NAMES["heavy_augmentation"]:
        overrides["train.augment"] = "heavy"
    elif setting == CONTROL_NAMES["self_training"]:
        overrides.update(parse_mix(cfg.self_training.mix))
    elif setting not in (BASELINE, CONTROL_NAMES["all_labelled"]):
        mix, heavy = split_setting(setting)
        overrides.update(parse_mix(mix))
        if heavy:
            overrides["train.augment"] = "heavy"
    return load_config(SegTrainConfig, cfg.segmentation_config, overrides)


def segmentation_budget(data: Path, splits: Sequence[Split], cfg: BenchmarkConfig) -> int:
    """Optimiser steps of every segmentation run: the override, else planned from the data."""
    base = load_config(SegTrainConfig, cfg.segmentation_config, cfg.segmentation_overrides)
    if "train.steps" in cfg.segmentation_overrides or (cfg.segmentation_config and "steps" in base.train.model_fields_set):
        return base.train.steps
    ids = [r.id for r in index_dataset(data)]
    largest = max(
        len(all_labelled_ids(ids, s)) if "all_labelled" in cfg.controls else len(s.train_ids) for s in splits
    )
    return segmentation_steps(largest, base.train.batch_size, base.train.val_every)
