"""Start a benchmark from a finished one: copy in the runs a changed generator cannot affect.

Comparing two generators (a new training recipe, another sampler) on the fair benchmark changes
only the generator, so the folds, the real-only rows (baseline and controls) and, when only the
sampling changed, each fold's diffusion model stay exactly what they were. Training them again
would cost most of a benchmark's time to reproduce the same numbers. Reuse copies them from the
earlier benchmark folder, each only after checking that it is what this benchmark would make:

- the fold split (``folds``, ``fold_seed``, ``low_label``, ``val_fraction`` equal);
- a real-only segmentation run: finished, trained on the same data folder with no synthetic set,
  and its saved recipe equal to the one this benchmark plans for that row and seed;
- a fold's diffusion run: released, trained on the same data folder and samples, and its saved
  recipe equal to this benchmark's; never one trained on pseudo-labels, nor any for a benchmark
  with ``generator.pseudo_labels`` (its pairs, teacher and style references are made in the new
  folder).

Runs that used synthetic data are never copied: they depend on the generator being compared.
Copies are atomic, so a killed reuse is repeated safely by the same command.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from segsynth.artifacts.names import (
    BENCHMARK_YAML,
    CHECKPOINTS_DIR,
    CONFIG_YAML,
    DIFFUSION_DIR,
    METRICS_JSON,
    PIPELINE_DIR,
    REUSED_JSON,
    SPLIT_JSON,
    SPLITS_JSON,
    TRAINING_DATA_JSON,
)
from segsynth.benchmark.config import BenchmarkConfig
from segsynth.benchmark.recipes import (
    BASELINE,
    CONTROL_NAMES,
    diffusion_recipe,
    fold_dir,
    seg_run_dir,
    segmentation_budget,
    segmentation_recipe,
    setting_names,
)
from segsynth.artifacts.schemas import SegRunSplit, TrainingData, read_record
from segsynth.config import load_config
from segsynth.data.format import load_spec
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.train import fit_config_to_data
from segsynth.io.atomic import atomic_directory, atomic_write_bytes, atomic_write_json
from segsynth.seg.config import SegTrainConfig
from segsynth.seg.splits import Split, load_splits

#: Benchmark keys that decide the folds: they must match for any run to be comparable.
FOLD_KEYS = ("folds", "fold_seed", "low_label", "val_fraction")


def previous_splits(previous: Path, config: BenchmarkConfig) -> list[Split]:
    """The folds of the benchmark in ``previous``, after checking it split the data as ``config`` does.

    Raises:
        ValueError: ``previous`` is not a benchmark folder, or its fold keys differ (named).
    """
    saved_path = previous / BENCHMARK_YAML
    if not saved_path.is_file() or not (previous / SPLITS_JSON).is_file():
        raise ValueError(f"{previous}: not a benchmark folder to reuse (no {BENCHMARK_YAML} and {SPLITS_JSON})")
    saved = load_config(BenchmarkConfig, saved_path)
    differ = [k for k in FOLD_KEYS if getattr(saved, k) != getattr(config, k)]
    if differ:
        raise ValueError(f"{saved_path}: its folds differ from this benchmark's ({', '.join(differ)}); nothing can be reused")
    return load_splits(previous / SPLITS_JSON)


def real_only_run_matches(run: Path, data: Path, wanted: SegTrainConfig) -> bool:
    """Is ``run`` a finished segmentation run on ``data``, without synthetic data, with recipe ``wanted``?"""
    if not all((run / name).is_file() for name in (METRICS_JSON, CONFIG_YAML, SPLIT_JSON)):
        return False
    record = read_record(run / SPLIT_JSON, SegRunSplit)
    if record.data_root != str(data.resolve()) or record.synthetic or record.pseudo_labelled:
        return False  # self-training runs are made again with their pseudo-labels in this folder
    return load_config(SegTrainConfig, run / CONFIG_YAML) == wanted


def diffusion_run_matches(run: Path, data: Path, split: Split, wanted: DiffusionTrainConfig) -> bool:
    """Is ``run`` a released diffusion model trained on ``data``'s fold samples, and on them only
    (no pseudo-labelled pairs), with recipe ``wanted``?"""
    if not (run / PIPELINE_DIR / "model_index.json").is_file() or not (run / TRAINING_DATA_JSON).is_file():
        return False
    record = read_record(run / TRAINING_DATA_JSON, TrainingData)
    if record.data_root != str(data.resolve()) or record.pseudo_labelled is not None:
        return False
    if sorted(record.train_ids or []) != sorted(split.train_ids + split.val_ids):
        return False
    return load_config(DiffusionTrainConfig, run / CONFIG_YAML) == wanted


def copy_run(source: Path, target: Path) -> None:
    """Copy a finished run folder into place atomically (its checkpoints are left behind: a
    finished run is never resumed, and its released weights are what the benchmark reads)."""
    with atomic_directory(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CHECKPOINTS_DIR))


def reuse_unchanged_runs(previous: Path, data: Path, out: Path, config: BenchmarkConfig) -> list[str]:
    """Copy into ``out`` every run of ``previous`` that this benchmark would make unchanged.

    Args:
        previous: the earlier benchmark folder.
        data: the dataset folder; reused runs must have been trained on this very folder.
        out: the new benchmark folder (runs already there are kept).
        config: the new benchmark's config.

    Returns:
        The reused runs, as paths relative to ``out`` (the results record them).

    Raises:
        ValueError: ``previous`` is not a benchmark folder, or it (or ``out``) split the data otherwise.
    """
    splits = previous_splits(previous, config)
    folds = (previous / SPLITS_JSON).read_bytes()
    if not (out / SPLITS_JSON).is_file():
        atomic_write_bytes(out / SPLITS_JSON, folds)
    elif (out / SPLITS_JSON).read_bytes() != folds:
        raise ValueError(f"{out / SPLITS_JSON}: this benchmark's folds differ from {previous / SPLITS_JSON}; "
                         "reuse into a new folder")
    steps = segmentation_budget(data, splits, config)
    real_only = [name for name in setting_names(config) if name == BASELINE or name in CONTROL_NAMES.values()]
    # what train_diffusion saves: the recipe with the data's channels and classes filled in
    generator = fit_config_to_data(diffusion_recipe(data, config), load_spec(data), data)
    candidates: list[tuple[Path, Path, bool]] = []
    for fold, split in enumerate(splits):
        old, new = fold_dir(previous, fold) / DIFFUSION_DIR, fold_dir(out, fold) / DIFFUSION_DIR
        lend = not config.generator.pseudo_labels and diffusion_run_matches(old, data, split, generator)
        candidates.append((old, new, lend))
        for seed in config.seeds:
            for setting in real_only:
                old, new = seg_run_dir(previous, fold, setting, seed), seg_run_dir(out, fold, setting, seed)
                wanted = segmentation_recipe(config, setting, seed, steps)
                candidates.append((old, new, real_only_run_matches(old, data, wanted)))
    reused = []
    for old, new, matches in candidates:
        if matches and not new.exists():
            copy_run(old, new)
        if matches:
            reused.append(str(new.relative_to(out)))
    atomic_write_json(out / REUSED_JSON, {"from": str(previous.resolve()), "runs": reused})
    return reused
