"""Report parts of single runs and sets: diffusion, ControlNet and autoencoder runs, synthetic sets,
segmentation runs and the plan of a ``segsynth run`` (sample grids, curves, configs, data used)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from segsynth.artifacts.names import (
    CONFIG_YAML,
    GENERATION_JSON,
    PLAN_JSON,
    RECONSTRUCTION_JSON,
    SAMPLES_DIR,
    SEED_DIR,
    SPLIT_JSON,
    TRAIN_LOG,
    TRAINING_DATA_JSON,
)
from segsynth.artifacts.schemas import (
    GenerationRecord,
    Reconstruction,
    SegRunSplit,
    TrainingData,
    read_image_split,
    read_record,
)
from segsynth.data.format import load_spec
from segsynth.evaluation.sets import load_synthetic
from segsynth.report import figures
from segsynth.report.context import ReportContext, read_jsonl
from segsynth.report.grids import synthetic_grids
from segsynth.report.html import gallery, heading, image, paragraph, preformatted


def diffusion_run(report: ReportContext, run: Path, label: str = "diffusion run") -> None:
    """Preview grids, loss curves, config and training data of a diffusion (or ControlNet) run."""
    samples, curves, configs = report.sections["samples"], report.sections["curves"], report.sections["configs"]
    grids = sorted((run / SAMPLES_DIR).glob("step_*.png"))
    if grids:
        samples.add(heading(f"{label} {report.rel(run)}"))
        shown = [grids[0], grids[-1]] if len(grids) > 1 else grids
        figures_shown = []
        for grid in shown:
            step = grid.stem.removeprefix("step_").lstrip("0") or "0"
            figures_shown.append(image(grid.read_bytes(), f"preview grid at step {step}",
                                       f"step {step}{' (latest)' if grid == grids[-1] else ''}: layout | style references | sample (EMA weights)"))
        samples.add(gallery(figures_shown))
    log = read_jsonl(run / TRAIN_LOG)
    if log:
        curves.add(heading(f"{label} {report.rel(run)}"),
                   image(figures.diffusion_curves(log, report.rel(run)), f"{label} training curves",
                         f"{len(log)} log records, last step {log[-1].get('step')}"))
    if (run / CONFIG_YAML).is_file():
        configs.add(preformatted((run / CONFIG_YAML).read_text(encoding="utf-8"), f"{label} {report.rel(run)}: {CONFIG_YAML}"))
    if (run / TRAINING_DATA_JSON).is_file():
        info = read_record(run / TRAINING_DATA_JSON, TrainingData)
        report.dataset(info.data_root, "diffusion training data")
        for extra in info.datasets or []:
            report.dataset(extra.data_root, "diffusion training data")
        summary = info.model_dump(mode="json", exclude_unset=True, exclude={"train_ids", "datasets"})
        summary["train_ids"] = f"{len(info.train_ids or [])} samples"
        configs.add(preformatted(yaml.safe_dump(summary, sort_keys=True), f"{label} {report.rel(run)}: {TRAINING_DATA_JSON}"))


def autoencoder_run(report: ReportContext, run: Path) -> None:
    """Loss curves, config and held-out reconstruction quality of a ``train-autoencoder`` run."""
    log = read_jsonl(run / TRAIN_LOG)
    if log:
        report.sections["curves"].add(heading(f"autoencoder run {report.rel(run)}"),
                                    image(figures.diffusion_curves(log, report.rel(run)), "autoencoder training curves",
                                          f"{len(log)} log records, last step {log[-1].get('step')}"))
    if (run / CONFIG_YAML).is_file():
        report.sections["configs"].add(preformatted((run / CONFIG_YAML).read_text(encoding="utf-8"),
                                                  f"autoencoder run {report.rel(run)}: {CONFIG_YAML}"))
    split = read_image_split(run)
    for root in split.data if split is not None else []:
        report.dataset(root, "autoencoder training data")
    if (run / RECONSTRUCTION_JSON).is_file():
        quality = read_record(run / RECONSTRUCTION_JSON, Reconstruction).model_dump(mode="json", exclude_unset=True)
        report.sections["configs"].add(preformatted(yaml.safe_dump(quality, sort_keys=True),
                                                  f"autoencoder run {report.rel(run)}: {RECONSTRUCTION_JSON}"))


def synthetic_set(report: ReportContext, root: Path) -> None:
    report.dataset(root, "synthetic set")
    synthetic = load_synthetic(root, report.max_synthetic)
    grids, note = synthetic_grids(synthetic, report.rows_per_grid)
    section = report.sections["samples"]
    section.add(heading(f"synthetic set {report.rel(root)}"))
    total = len(load_spec(root).cases)
    section.add(paragraph(f"{total} samples; rows picked from {len(synthetic.ids)} of them"
                          if total > len(synthetic.ids) else f"{total} samples"))
    if note:
        section.add(paragraph(note))
    section.add(gallery([image(figures.array_png(g.pixels), g.title, f"{g.title}: {g.caption}") for g in grids]))
    if (root / GENERATION_JSON).is_file():
        config = read_record(root / GENERATION_JSON, GenerationRecord).config
        report.dataset(config.get("layout_data"), "layout source of a synthetic set")
        report.sections["configs"].add(
            preformatted(yaml.safe_dump(config, sort_keys=True), f"synthetic set {report.rel(root)}: {GENERATION_JSON}")
        )


def seg_runs(report: ReportContext, runs: list[Path]) -> None:
    groups: dict[str, list[list[dict[str, Any]]]] = {}
    configs: dict[str, list[str]] = {}
    for run in runs:
        log = read_jsonl(run / TRAIN_LOG)
        group = report.setting_of.get(run.resolve(), run.parent.name if run.name.startswith(SEED_DIR.format(seed="")) else run.name)
        if log:
            groups.setdefault(group, []).append(log)
        if (run / CONFIG_YAML).is_file():
            configs.setdefault((run / CONFIG_YAML).read_text(encoding="utf-8"), []).append(report.rel(run))
        if (run / SPLIT_JSON).is_file():
            split = read_record(run / SPLIT_JSON, SegRunSplit)
            report.dataset(split.data_root, "segmentation training data (real)")
            for synthetic in split.synthetic:
                report.dataset(synthetic.root, "synthetic data mixed into segmentation training")
    if groups:
        count = sum(len(v) for v in groups.values())
        report.sections["curves"].add(
            heading(f"segmentation runs ({count})"),
            image(figures.segmentation_curves(groups), "segmentation training curves",
                  "one line per run, one colour per setting / run; validation Dice picks each run's best network"),
        )
    for text, where in configs.items():
        label = where[0] if len(where) == 1 else f"{where[0]} and {len(where) - 1} more with the same config"
        report.sections["configs"].add(preformatted(text, f"segmentation run {label}: {CONFIG_YAML}"))


def run_plan(report: ReportContext, run: Path) -> None:
    """The plan a ``segsynth run`` followed: every choice and why (its stages are reported as found)."""
    report.sections["configs"].add(
        preformatted((run / PLAN_JSON).read_text(encoding="utf-8"), f"segsynth run {report.rel(run)}: {PLAN_JSON}")
    )
