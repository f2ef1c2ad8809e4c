"""``segsynth train-seg`` and ``segsynth evaluate-seg``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from segsynth.artifacts.names import BEST_DIR, CONFIG_YAML
from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors
from segsynth.cli.options import ConfigOption, ResumeOption, SetOption, TrainSeedOption, command_config


@app.command("train-seg")
def train_seg_command(
    data: Path = typer.Argument(..., help="Real labelled dataset folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder."),
    synthetic: list[Path] = typer.Option([], "--synthetic", help="Synthetic set folder (repeatable)."),
    mix: str | None = typer.Option(None, "--mix", help="none | concat | ratio[:synthetic_fraction] | merge[:alpha] (default: the config's, or ratio when --synthetic is given)."),
    layouts_independent: bool | None = typer.Option(
        None, "--layouts-independent/--no-layouts-independent", metavar="",
        help="Declare that the synthetic sets' layouts do not come from this data (allows sets without a manifest).",
    ),
    config: ConfigOption = None,
    overrides: SetOption = [],
    seed: TrainSeedOption = None,
    resume: ResumeOption = False,
) -> None:
    """Train a MONAI segmentation network, optionally mixing in synthetic sets."""
    with user_errors(resumable=True):
        from segsynth.seg.config import SegTrainConfig, parse_mix
        from segsynth.io.guard import check_continuable, check_out_apart
        from segsynth.seg.train import train_seg

        check_out_apart(out, [data, *synthetic])
        check_continuable(out, "seg_run")
        saved = out / CONFIG_YAML
        base = config if config is not None else (saved if resume and saved.is_file() else None)
        named = {**(parse_mix(mix) if mix else {}), "train.seed": seed, "mix.layouts_independent": layouts_independent}
        cfg = command_config(SegTrainConfig, base, overrides, named)
        if synthetic and cfg.mix.strategy == "none":
            cfg.mix.strategy = "ratio"
        run = train_seg(data, cfg, out, synthetic=synthetic, resume=resume, console=console)
        console.print(f"[green]done[/]: {run}  (best network: {run / BEST_DIR})")


@app.command("evaluate-seg")
def evaluate_seg_command(
    run: Path = typer.Argument(..., help="A train-seg run folder."),
    data: Path = typer.Argument(..., help="Labelled dataset folder to score."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write every metric (per image, per case) as JSON."),
) -> None:
    """Score a run's best network: Dice, IoU, precision, recall, HD95, ASSD per class and per case."""
    with user_errors():
        from segsynth.io.atomic import atomic_write_json
        from segsynth.io.guard import check_out_apart
        from segsynth.seg.evaluate import evaluate_seg

        if out is not None:
            check_out_apart(out, [run, data])
        result = evaluate_seg(run, data)
        if out is not None:
            atomic_write_json(out, result)
        table = Table(title=f"{result['num_images']} images, {result['num_cases']} cases ({result['selection']})")
        table.add_column("class")
        table.add_column("metric")
        table.add_column("mean ± std (images)", justify="right")
        table.add_column("mean of cases", justify="right")
        table.add_column("case spread (std of case means)", justify="right")
        # With one structure, the mean over foreground classes repeats it.
        shown = result["classes"] if len(result["classes"]) == 1 else [*result["classes"], "mean_fg"]
        for cls in shown:
            for name, per_class in result["summary"].items():
                stats = per_class[cls]
                table.add_row(
                    cls, name, f"{stats['mean']:.4f} ± {stats['std']:.4f}", f"{stats['case_mean']:.4f}", f"{stats['case_std']:.4f}"
                )
        console.print(table)
        console.print(f"distances in {result['units']}; empty masks: {result['empty_mask_convention']}")
        if out is not None:
            console.print(f"[green]wrote[/] {out}")


@app.command("predict")
def predict_command(
    model: Path = typer.Argument(..., help="A train-seg run folder, a segsynth run's RUN/final, or a saved network folder."),
    images: Path = typer.Argument(..., help="Folder of images (PNG, TIFF, JPEG, NIfTI), or a dataset folder (its images/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Masks folder: new, empty or an earlier predict's (outside IMAGES and MODEL); re-run the same command to continue."),
    overlap: float = typer.Option(0.25, "--overlap", help="Overlap of neighbouring sliding windows, in [0, 1)."),
    window: int | None = typer.Option(None, "--window", help="Sliding-window side (default: the network's training patch)."),
    tta: bool = typer.Option(False, "--tta/--no-tta", metavar="", help="Average over the image and its flips (4 passes)."),
    probabilities: bool = typer.Option(
        False, "--probabilities/--no-probabilities", metavar="", help="Also write per-class probability maps (float32)."
    ),
) -> None:
    """Segment new images with a trained network: one mask per image, in the image's format and geometry."""
    with user_errors():
        from segsynth.config import parse_config
        from segsynth.seg.predict import PredictConfig, predict

        cfg = parse_config(PredictConfig, {"overlap": overlap, "window": window, "tta": tta,
                                           "probabilities": probabilities}, "predict options")
        result = predict(model, images, out, cfg, console=console)
        if result["not_images"]:
            console.print(f"left alone (not images): {', '.join(result['not_images'][:5])}"
                          + (" ..." if len(result["not_images"]) > 5 else ""))
        console.print(f"[green]done[/]: {result['predicted']} masks predicted, {result['skipped']} already there, "
                      f"in {result['out']}")
