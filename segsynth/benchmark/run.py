"""``segsynth benchmark``: does synthetic data help, at equal cost, and does it make patients more even?

For each fold (split by case): a diffusion model is trained on that fold's labelled training and
validation cases only, synthetic sets are generated from those cases' masks with styles from the
unlabelled pool, and a segmentation network is trained for the baseline (real only), the control
rows and each synthetic setting with the same seeds, then scored on the fold's test cases.

Fairness is built in: every segmentation run trains the same number of optimiser steps (planned
from the data unless set) with the same batch, schedule, augmentation, validation cases and
validation schedule, and is scored at its best-validation step; one factor changes per row (the
mixed-in synthetic data, heavy augmentation, the baseline's own confident pseudo-labels of the
unlabelled pool, or all labelled cases). ``merge`` settings get their own set of same-mask
variants. The table leads with each synthetic setting's gain over the better free control (heavy
augmentation or self-training) of its fold, chosen on the fold's validation cases. Every sub-run is an ordinary run folder and is skipped (or resumed)
when the benchmark is run again, so a killed benchmark continues.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from segsynth.artifacts.names import (
    BENCHMARK_YAML,
    CONFIG_YAML,
    DATASET_JSON,
    DIFFUSION_DIR,
    IMAGES_DIR,
    MANIFEST_JSONL,
    METRICS_JSON,
    PIPELINE_DIR,
    RESULTS_JSON,
    RESULTS_MD,
    REUSED_JSON,
    SPLITS_JSON,
    SYNTH_DIR,
    TRAINING_JSON,
    UNLABELED_DIR,
    VARIANTS_DIR,
)
from segsynth.artifacts.schemas import TrainingSummary, read_record
from segsynth.benchmark.calibrate import calibrated_budget
from segsynth.benchmark.config import BenchmarkConfig, split_setting
from segsynth.benchmark.foreground import benchmark_folds, case_class_pixels, fold_warnings
from segsynth.benchmark.recipes import (
    BASELINE,
    CONTROL_NAMES,
    all_labelled_ids,
    diffusion_recipe,
    fold_dir,
    free_control_names,
    pseudo_dir,
    seg_run_dir,
    segmentation_budget,
    segmentation_recipe,
    setting_names,
)
from segsynth.benchmark.generator_data import check_generator_data, generator_data
from segsynth.benchmark.reuse import reuse_unchanged_runs
from segsynth.benchmark.selftrain import pseudo_labelled_set, pseudo_pool
from segsynth.benchmark.summary import markdown_table, summarise
from segsynth.config import ConfigError, parse_config, save_resolved_config
from segsynth.data.format import load_spec
from segsynth.data.loader import SegDataset, index_dataset
from segsynth.diffusion.samples import PseudoPairs
from segsynth.diffusion.train import train_diffusion
from segsynth.io.atomic import atomic_write_json, atomic_write_text
from segsynth.io.lock import owns_folder
from segsynth.renamed import former_out_config_order
from segsynth.io.yaml_file import read_yaml
from segsynth.seg.config import SegTrainConfig, parse_mix
from segsynth.seg.evaluate import evaluate_seg
from segsynth.seg.splits import Split, load_splits, save_splits
from segsynth.seg.train import train_seg
from segsynth.synth.config import GenerationConfig
from segsynth.synth.generate import generate


def _folds(data: Path, out: Path, cfg: BenchmarkConfig) -> list[Split]:
    """Make the folds once and reuse ``splits.json`` afterwards (same folds for every setting)."""
    path = out / SPLITS_JSON
    if path.is_file():
        return load_splits(path)
    splits = benchmark_folds(data, index_dataset(data), cfg)
    save_splits(path, splits, cfg.fold_seed)
    return splits


def train_generator(data: Path, run: Path, cfg: BenchmarkConfig, train_ids: list[str], console: Console,
                    pseudo_pairs: PseudoPairs | None = None) -> Path:
    """The benchmark's generator in ``run``, trained on ``train_ids`` (and ``pseudo_pairs``): found
    finished, continued from where a kill left it (even before its first checkpoint), or trained
    from the start."""
    if (run / PIPELINE_DIR / "model_index.json").is_file():
        return run
    return train_diffusion(data, diffusion_recipe(data, cfg), run, resume=(run / CONFIG_YAML).is_file(),
                           train_ids=train_ids, console=console, pseudo_pairs=pseudo_pairs)


def _synthetic(run: Path, out: Path, n: int, layouts: str, cfg: BenchmarkConfig, console: Console,
               judge: Path | None = None, styles: Path | None = None) -> Path:
    if (out / MANIFEST_JSONL).is_file() and (out / DATASET_JSON).is_file():
        return out
    # The section names its settings as GenerationConfig does; n and layouts are this set's own.
    settings = cfg.generation.model_dump()
    if settings["filter"] is not None:
        settings["filter"]["judge"] = judge
    gen = GenerationConfig.model_validate({**settings, "n": n, "layouts": layouts, "styles": styles})
    generate(run, out, gen, resume=out.exists(), console=console)
    return out


def fold_teacher(data: Path, out: Path, config: BenchmarkConfig, splits: list[Split], fold: int,
                 console: Console) -> Path:
    """The fold's baseline run of the first seed, trained (or found) here before anything is
    generated: the judge of filtered synthetic sets and the teacher of the generator's pseudo-labels.

    It is the very run of the baseline row (same folder and recipe, so it is trained once): fitted
    on the fold's labelled training cases and selected on its validation cases. The test cases are
    never trained on; they are only scored, as for every row.
    """
    split, seed = splits[fold], config.seeds[0]
    run = seg_run_dir(out, fold, BASELINE, seed)
    recipe = segmentation_recipe(config, BASELINE, seed, segmentation_budget(data, splits, config))
    _segmentation(data, run, split.train_ids, split, recipe, None, console)
    return run


def fold_judge(data: Path, out: Path, config: BenchmarkConfig, splits: list[Split], fold: int,
               console: Console) -> Path | None:
    """The judge of the fold's filtered synthetic sets: :func:`fold_teacher` (None without ``generation.filter``)."""
    return fold_teacher(data, out, config, splits, fold, console) if config.generation.filter is not None else None


def _needs_variants(cfg: BenchmarkConfig) -> bool:
    return any(parse_mix(split_setting(s)[0])["mix.strategy"] == "merge" for s in cfg.settings)


def _segmentation(
    data: Path, run: Path, train_ids: list[str], split: Split, seg_cfg: SegTrainConfig, synth: Path | None,
    console: Console, pseudo: Path | None = None,
) -> dict[str, Any]:
    metrics_path = run / METRICS_JSON
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text(encoding="utf-8"))
    resume = (run / CONFIG_YAML).is_file()
    train_seg(
        data,
        seg_cfg,
        run,
        synthetic=[synth] if synth is not None else (),
        train_ids=train_ids,
        val_ids=split.val_ids,
        resume=resume,
        console=console,
        pseudo_labelled=[pseudo] if pseudo is not None else (),
    )
    result = evaluate_seg(run, data, ids=split.test_ids)
    result["training"] = read_record(run / TRAINING_JSON, TrainingSummary).model_dump()
    atomic_write_json(metrics_path, result)
    return result


def check_inputs(data: Path, config: BenchmarkConfig) -> None:
    """Everything that would otherwise fail hours in: every stage's config (each key named), the
    folds, every labelled and unlabelled file, and a non-empty style pool.

    Raises:
        ConfigError / DataReadError / ValueError: the first problem, naming its key or file.
    """
    spec = load_spec(data)
    diffusion = diffusion_recipe(data, config)
    for seed in config.seeds:
        for setting in setting_names(config):
            segmentation_recipe(config, setting, seed, 1)
    labelled = index_dataset(data, "labeled", spec)
    if not labelled:
        raise ValueError(f"{data / IMAGES_DIR}: no labelled images")
    SegDataset(data, refs=labelled, spec=spec).verify()  # before the masks are read for the folds
    splits = benchmark_folds(data, labelled, config)
    unlabeled = index_dataset(data, "unlabeled", spec)
    if not unlabeled:
        raise ValueError(f"{data / UNLABELED_DIR}: no unlabelled images; the benchmark draws its style references from them")
    if "self_training" in config.controls:
        for fold, split in enumerate(splits):
            if not pseudo_pool(unlabeled, split, {r.case_id for r in labelled})[0]:
                raise ValueError(f"{data / UNLABELED_DIR}: every unlabelled image belongs to a validation, test or "
                                 f"left-out labelled case of fold {fold}, so the self_training control has nothing to "
                                 "pseudo-label; "
                                 "remove self_training from controls or add unlabelled images of other cases")
    check_generator_data(data, diffusion, labelled, unlabeled, splits, config)
    SegDataset(data, "unlabeled", refs=unlabeled, spec=spec).verify()


def prepare_benchmark(
    data: str | Path, out: str | Path, config: BenchmarkConfig, check: bool = True, reuse: str | Path | None = None,
) -> list[Split]:
    """Create (or re-open) the benchmark folder: its config and its folds, and with ``reuse`` the
    unchanged runs of an earlier benchmark (:func:`segsynth.benchmark.reuse.reuse_unchanged_runs`).

    Raises:
        ValueError: ``out`` holds a benchmark made with another config, or ``reuse`` split the data otherwise.
    """
    data, out = Path(data), Path(out)
    if check:
        check_inputs(data, config)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / BENCHMARK_YAML
    if config_path.is_file():
        saved = parse_config(BenchmarkConfig, read_yaml(config_path, ConfigError), str(config_path))
        # run_folds only picks which of the saved folds to run (and summarise): any selection may continue
        if saved.model_copy(update={"run_folds": None}) != config.model_copy(update={"run_folds": None}):
            raise ValueError(f"{config_path}: this folder holds a benchmark with another config; use a new --out")
    if reuse is not None:  # before the config is saved: a refused reuse leaves no benchmark behind
        reuse_unchanged_runs(Path(reuse), data, out, config)
    if not config_path.is_file():
        save_resolved_config(config, config_path)
    return _folds(data, out, config)


def fold_generator(
    data: str | Path, out: str | Path, config: BenchmarkConfig, fold: int, console: Console | None = None,
    check: bool = True,
) -> tuple[Path, Path, Path | None]:
    """Train (or reuse) fold ``fold``'s diffusion model and its synthetic sets.

    The diffusion model sees only that fold's labelled training and validation cases and, with
    ``generator.pseudo_labels``, the fold's baseline network's pseudo-labels of the generator half
    of its unlabelled pool; its sets then draw style references from the other half only
    (:mod:`segsynth.benchmark.generator_data`), otherwise from the whole ``unlabeled/`` folder
    (references are never trained on, but may be images of test cases). With ``generation.filter``
    the fold's baseline network judges the samples (:func:`fold_judge`).

    Returns:
        ``(diffusion run, synthetic set, variants set or None)``: the set of ``generation.n``
        samples for ``ratio``/``concat`` and, when a ``merge`` setting is listed, the set of
        ``generation.per_mask`` unchanged-mask variants of each labelled image the generator saw.
    """
    console = console or Console(stderr=True)
    splits = prepare_benchmark(data, out, config, check=check)
    if not 0 <= fold < len(splits):
        raise ValueError(f"fold {fold} is not among the {len(splits)} folds of {Path(out) / SPLITS_JSON}")
    folder = fold_dir(Path(out), fold)
    split = splits[fold]
    # Validation cases are labelled data the study has, so the generator may learn from them too;
    # test cases never reach it.
    extra = None
    if config.generator.pseudo_labels:
        teacher = fold_teacher(Path(data), Path(out), config, splits, fold, console)
        extra = generator_data(Path(data), folder, split, fold, config, teacher)
    run = train_generator(Path(data), folder / DIFFUSION_DIR, config, split.train_ids + split.val_ids, console,
                          extra.pairs if extra is not None else None)
    judge = fold_judge(Path(data), Path(out), config, splits, fold, console)
    styles = extra.references if extra is not None else None
    synth = _synthetic(run, folder / SYNTH_DIR, config.generation.n, config.generation.layouts, config, console,
                       judge, styles)
    variants = None
    if _needs_variants(config):
        n = config.generation.per_mask * (len(split.train_ids) + len(split.val_ids))
        variants = _synthetic(run, folder / VARIANTS_DIR, n, "variants", config, console, judge, styles)
    return run, synth, variants


@former_out_config_order
@owns_folder("out")
def run_benchmark(
    data: str | Path, config: BenchmarkConfig, out: str | Path, console: Console | None = None,
    reuse: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or continue) the whole benchmark and write ``results.json`` and ``results.md``.

    One function on purpose: it is the benchmark's schedule (budget, then folds x seeds x settings
    in row order, then the summary); the self-training row relies on its seed's baseline having
    run first, which this one loop makes visible.

    Args:
        data: the real dataset folder.
        config: the benchmark's config.
        out: the benchmark folder. ``(data, config, out)`` is every stage's order; the former
            ``(data, out, config)`` still works for one release, with a DeprecationWarning.
        reuse: an earlier benchmark folder on the same data: its runs that this config would make
            unchanged (real-only rows, and the fold generators when only the sampling differs) are
            copied in first (:mod:`segsynth.benchmark.reuse`) and listed in the results.

    Returns:
        The contents of ``results.json`` (see :func:`segsynth.benchmark.summary.summarise`).
    """
    console = console or Console(stderr=True)
    data, out = Path(data), Path(out)
    started = time.perf_counter()
    splits = prepare_benchmark(data, out, config, reuse=reuse)
    reused = json.loads((out / REUSED_JSON).read_text(encoding="utf-8")) if (out / REUSED_JSON).is_file() else None
    if reused is not None:
        console.print(f"reused {len(reused['runs'])} runs from {reused['from']}")
    folds = config.run_folds if config.run_folds is not None else list(range(len(splits)))
    if max(folds) >= len(splits):
        raise ValueError(f"run_folds {folds} names a fold beyond the {len(splits)} folds of {out / SPLITS_JSON}")
    steps = segmentation_budget(data, splits, config)
    calibration = None
    if config.calibration.enabled:
        sets = fold_generator(data, out, config, config.calibration.fold, console, check=False)[1:]
        calibration = calibrated_budget(data, out, splits, config, steps, sets, console)
        steps = calibration["budget"]
        console.print(f"calibrated budget: {steps} steps (planned {calibration['planned']}; rows that never stopped "
                      f"rising within {calibration['cap']} steps: {', '.join(calibration['never_stopped']) or 'none'})")
    refs = index_dataset(data)
    ids = [r.id for r in refs]
    pixels = case_class_pixels(data, refs)
    names = setting_names(config)
    runs: list[dict[str, Any]] = []
    warnings: list[str] = []
    for fold in folds:
        split = splits[fold]
        console.print(
            f"[bold]fold {fold}[/]: {len(split.train_cases)} train, {len(split.val_cases)} val, "
            f"{len(split.test_cases)} test cases; {steps} segmentation steps per run"
        )
        for line in fold_warnings(split, fold, pixels):
            console.print(f"[yellow]warning:[/] {line}", highlight=False)
            warnings.append(line)
        _, synth, variants = fold_generator(data, out, config, fold, console, check=False)
        for seed in config.seeds:
            for setting in names:
                seg_cfg = segmentation_recipe(config, setting, seed, steps)
                train_ids = all_labelled_ids(ids, split) if setting == CONTROL_NAMES["all_labelled"] else split.train_ids
                strategy = seg_cfg.mix.strategy
                pseudo = None
                if setting == CONTROL_NAMES["self_training"]:  # the baseline of this seed ran first (row order)
                    teacher = seg_run_dir(out, fold, BASELINE, seed)
                    pseudo = pseudo_labelled_set(data, pseudo_dir(out, fold, seed), teacher, split, fold, seed, config)
                    synthetic = None
                else:
                    synthetic = None if strategy == "none" else variants if strategy == "merge" else synth
                run = seg_run_dir(out, fold, setting, seed)
                result = _segmentation(data, run, train_ids, split, seg_cfg, synthetic, console, pseudo)
                runs.append({"fold": fold, "seed": seed, "setting": setting, "run": str(run.resolve()), "metrics": result})
    results = summarise(
        runs, names, baseline=BASELINE,
        reference=CONTROL_NAMES["all_labelled"] if "all_labelled" in config.controls else None,
        controls=free_control_names(config),
    )
    seg = segmentation_recipe(config, BASELINE, config.seeds[0], steps)
    results["budget"] = {
        "steps": steps, "batch_size": seg.train.batch_size, "val_every": seg.train.val_every,
        "lr": seg.optim.lr, "schedule": seg.optim.schedule, "augment": seg.train.augment,
        "network": seg.network.name, "selection": "best validation Dice (validation cases of the fold)",
    }
    if calibration is not None:  # (only then: budgets of earlier results stay comparable key for key)
        results["budget"]["calibrated"] = True
        results["calibration"] = calibration
    results["data"] = str(data.resolve())
    results["fold_warnings"] = warnings
    if reused is not None:
        results["reused"] = reused
    results["config"] = config.model_dump(mode="json")
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / RESULTS_JSON, results)
    atomic_write_text(out / RESULTS_MD, markdown_table(results))
    return results
