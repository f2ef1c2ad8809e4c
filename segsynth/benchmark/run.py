"""``segsynth benchmark``: does synthetic data help, and does it make patients more even?

For each fold (split by case): a diffusion model is trained on that fold's labelled training cases
only, a synthetic set is generated from those cases' masks with styles from the unlabelled pool,
and a segmentation network is trained for the baseline (real only) and for each synthetic setting
with the same seeds, then scored on the fold's test cases. Every sub-run is an ordinary run folder
and is skipped (or resumed) when the benchmark is run again, so a killed benchmark continues.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from segsynth.benchmark.config import BenchmarkConfig
from segsynth.benchmark.summary import markdown_table, summarise
from segsynth.config import load_config, parse_config, save_resolved_config
from segsynth.data.format import load_spec
from segsynth.data.loader import SegDataset, index_dataset
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.train import train_diffusion
from segsynth.io.atomic import atomic_write_json, atomic_write_text
from segsynth.seg.config import SegTrainConfig, parse_mix
from segsynth.seg.evaluate import evaluate_seg
from segsynth.seg.splits import Split, load_splits, make_folds, save_splits
from segsynth.seg.train import train_seg
from segsynth.synth.generate import generate

BASELINE = "baseline"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
METRICS_JSON = "metrics.json"


def _setting_dir(setting: str) -> str:
    return setting.replace(":", "_")


def _folds(data: Path, out: Path, cfg: BenchmarkConfig) -> list[Split]:
    """Make the folds once and reuse ``splits.json`` afterwards (same folds for every setting)."""
    path = out / "splits.json"
    if path.is_file():
        return load_splits(path)
    try:
        splits = make_folds(index_dataset(data), cfg.folds, cfg.fold_seed, cfg.val_fraction, cfg.low_label)
    except ValueError as exc:
        raise ValueError(f"{data / 'dataset.json'}: {exc}") from None
    save_splits(path, splits, cfg.fold_seed)
    return splits


def _diffusion(data: Path, fold_dir: Path, split: Split, cfg: BenchmarkConfig, console: Console) -> Path:
    run = fold_dir / "diffusion"
    if (run / "pipeline" / "model_index.json").is_file():
        return run
    dcfg = load_config(DiffusionTrainConfig, cfg.diffusion_config, cfg.diffusion_overrides)
    resume = (run / "checkpoints").is_dir()
    # Validation cases are labelled data the study has, so the generator may learn from them too;
    # test cases never reach it.
    return train_diffusion(data, dcfg, run, resume=resume, train_ids=split.train_ids + split.val_ids, console=console)


def _synthetic(run: Path, fold_dir: Path, cfg: BenchmarkConfig, console: Console) -> Path:
    out = fold_dir / "synth"
    if (out / "manifest.jsonl").is_file() and (out / "dataset.json").is_file():
        return out
    g = cfg.generation
    generate(
        run,
        out,
        g.n,
        layouts=g.layouts,
        per_mask=g.per_mask,
        sampler=g.sampler,
        steps=g.steps,
        style_guidance=g.style_guidance,
        guidance_rescale=g.guidance_rescale,
        batch_size=g.batch_size,
        resume=out.exists(),
        console=console,
    )
    return out


def _segmentation(
    data: Path, run: Path, split: Split, setting: str, seed: int, synth: Path | None, cfg: BenchmarkConfig, console: Console
) -> dict[str, Any]:
    metrics_path = run / METRICS_JSON
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text(encoding="utf-8"))
    overrides = {**cfg.segmentation_overrides, "train.seed": seed}
    if setting != BASELINE:
        overrides.update(parse_mix(setting))
    seg_cfg = load_config(SegTrainConfig, cfg.segmentation_config, overrides)
    resume = (run / "config.yaml").is_file()
    train_seg(
        data,
        run,
        seg_cfg,
        synthetic=[synth] if synth is not None else (),
        train_ids=split.train_ids,
        val_ids=split.val_ids,
        resume=resume,
        console=console,
    )
    result = evaluate_seg(run, data, ids=split.test_ids)
    atomic_write_json(metrics_path, result)
    return result


def check_inputs(data: Path, config: BenchmarkConfig) -> None:
    """Everything that would otherwise fail hours in: every stage's config (each key named), the
    folds, every labelled and unlabelled file, and a non-empty style pool.

    Raises:
        ConfigError / DataReadError / ValueError: the first problem, naming its key or file.
    """
    load_config(DiffusionTrainConfig, config.diffusion_config, config.diffusion_overrides)
    for seed in config.seeds:
        for setting in [BASELINE, *config.settings]:
            overrides = {**config.segmentation_overrides, "train.seed": seed}
            if setting != BASELINE:
                overrides.update(parse_mix(setting))
            load_config(SegTrainConfig, config.segmentation_config, overrides)
    spec = load_spec(data)
    labelled = index_dataset(data, "labeled", spec)
    if not labelled:
        raise ValueError(f"{data / 'images'}: no labelled images")
    try:
        make_folds(labelled, config.folds, config.fold_seed, config.val_fraction, config.low_label)
    except ValueError as exc:
        raise ValueError(f"{data / 'dataset.json'}: {exc}") from None
    unlabeled = index_dataset(data, "unlabeled", spec)
    if not unlabeled:
        raise ValueError(f"{data / 'unlabeled'}: no unlabelled images; the benchmark draws its style references from them")
    SegDataset(data, refs=labelled, spec=spec).verify()
    SegDataset(data, "unlabeled", refs=unlabeled, spec=spec).verify()


def prepare_benchmark(data: str | Path, out: str | Path, config: BenchmarkConfig, check: bool = True) -> list[Split]:
    """Create (or re-open) the benchmark folder: its config and its folds.

    Raises:
        ValueError: ``out`` holds a benchmark made with another config.
    """
    data, out = Path(data), Path(out)
    if check:
        check_inputs(data, config)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "benchmark.yaml"
    if config_path.is_file():
        saved = parse_config(BenchmarkConfig, yaml.safe_load(config_path.read_text(encoding="utf-8")), str(config_path))
        if saved != config:
            raise ValueError(f"{config_path}: this folder holds a benchmark with another config; use a new --out")
    else:
        save_resolved_config(config, config_path)
    return _folds(data, out, config)


def fold_generator(
    data: str | Path, out: str | Path, config: BenchmarkConfig, fold: int, console: Console | None = None,
    check: bool = True,
) -> tuple[Path, Path]:
    """Train (or reuse) fold ``fold``'s diffusion model and synthetic set; return both folders.

    The diffusion model sees only that fold's labelled training and validation cases.
    """
    console = console or Console(stderr=True)
    splits = prepare_benchmark(data, out, config, check=check)
    if not 0 <= fold < len(splits):
        raise ValueError(f"fold {fold} is not among the {len(splits)} folds of {Path(out) / 'splits.json'}")
    fold_dir = Path(out) / f"fold_{fold}"
    run = _diffusion(Path(data), fold_dir, splits[fold], config, console)
    return run, _synthetic(run, fold_dir, config, console)


def run_benchmark(data: str | Path, out: str | Path, config: BenchmarkConfig, console: Console | None = None) -> dict[str, Any]:
    """Run (or continue) the whole benchmark and write ``results.json`` and ``results.md``.

    Returns:
        The contents of ``results.json`` (see :func:`segsynth.benchmark.summary.summarise`).
    """
    console = console or Console(stderr=True)
    data, out = Path(data), Path(out)
    splits = prepare_benchmark(data, out, config)
    folds = config.run_folds if config.run_folds is not None else list(range(len(splits)))
    if max(folds) >= len(splits):
        raise ValueError(f"run_folds {folds} names a fold beyond the {len(splits)} folds of {out / 'splits.json'}")
    runs: list[dict[str, Any]] = []
    for fold in folds:
        split = splits[fold]
        console.print(f"[bold]fold {fold}[/]: {len(split.train_cases)} train, {len(split.val_cases)} val, {len(split.test_cases)} test cases")
        _, synth = fold_generator(data, out, config, fold, console, check=False)
        fold_dir = out / f"fold_{fold}"
        for seed in config.seeds:
            for setting in [BASELINE, *config.settings]:
                run = fold_dir / "seg" / _setting_dir(setting) / f"seed_{seed}"
                result = _segmentation(
                    data, run, split, setting, seed, None if setting == BASELINE else synth, config, console
                )
                runs.append({"fold": fold, "seed": seed, "setting": setting, "run": str(run), "metrics": result})
    results = summarise(runs, [BASELINE, *config.settings], baseline=BASELINE)
    results["data"] = str(data.resolve())
    results["config"] = config.model_dump(mode="json")
    atomic_write_json(out / RESULTS_JSON, results)
    atomic_write_text(out / RESULTS_MD, markdown_table(results))
    return results
