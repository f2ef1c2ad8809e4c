"""``segsynth evaluate-synth``: layout fidelity, style retrieval, FID/KID and diversity of a synthetic set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"


def metrics_table(result: dict[str, Any]) -> Table:
    """The headline numbers of an ``evaluate_synth`` result, each beside its reference value."""
    table = Table(title=f"synthetic set vs real data ({result['num_synthetic']} samples, {result['image_size'][0]} px)")
    for column in ("measure", "synthetic", "reference", "reference is"):
        table.add_column(column, justify="left" if column in ("measure", "reference is") else "right")
    fidelity = result["layout_fidelity"]
    ceiling = fidelity.get("real_held_out", {})
    for metric in ("dice", "iou"):
        per_class = fidelity["synthetic"]["summary"][metric]
        # With one structure, the mean over foreground classes repeats it.
        shown = [c for c in per_class if c != "mean_fg"] if len(per_class) == 2 else list(per_class)
        for cls in shown:
            stats = per_class[cls]
            real = ceiling.get("summary", {}).get(metric, {}).get(cls, {}).get("mean")
            table.add_row(f"layout {metric} {cls}", _num(stats["mean"]), _num(real), "real held-out images (ceiling)")
    style = result["style_retrieval"]
    if "skipped" in style:
        table.add_row("style retrieval", "skipped", "", escape(style["skipped"]))
    else:
        table.add_row("style retrieval top-1", _num(style["top1_accuracy"]), _num(style["top1_chance"]), "chance")
        table.add_row("style retrieval pairwise", _num(style["pairwise_accuracy"]), _num(style["pairwise_chance"]), "chance")
    distribution = result["distribution"]
    if "skipped" in distribution:
        table.add_row("FID / KID", "skipped", "", escape(distribution["skipped"]))
    else:
        for key, entry in distribution.items():
            baseline = entry["real_vs_real"]
            for name in ("fid", "kid_mean"):
                table.add_row(
                    f"{name.replace('_mean', '')} ({key})", _num(entry["synthetic_vs_real"][name]),
                    _num(baseline.get(name)), "real vs real, split by case",
                )
    diversity = result["diversity"]
    for name in ("pixel_rmse", "stain_texture"):
        table.add_row(
            f"diversity {name}", _num(diversity["synthetic_same_layout"][name]),
            _num(diversity["real_different_images"][name]), "real tiles of different images",
        )
    return table


@app.command("evaluate-synth")
def evaluate_synth_command(
    synth: Path = typer.Argument(..., help="Synthetic set folder (from segsynth generate)."),
    real: Path = typer.Option(..., "--real", help="The real labelled dataset folder."),
    seg_run: Path | None = typer.Option(None, "--seg-run", help="A train-seg run trained on real data only (default: train a small one into OUT/seg_real)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder for metrics.json (default: SYNTH/evaluation)."),
    real_split: str = typer.Option("all", "--real-split", help="Real images for FID/KID and diversity: all, labeled or unlabeled."),
    max_samples: int = typer.Option(2000, "--max-samples", help="Synthetic samples evaluated (seeded subset of larger sets)."),
    seed: int = typer.Option(0, "--seed", help="Seed of subsets and of the random style/texture network."),
) -> None:
    """Measure a synthetic set: layout fidelity, zero-shot style retrieval, FID/KID, diversity."""
    with user_errors():
        from segsynth.evaluation.evaluate_synth import EVALUATION_DIR, METRICS_JSON, evaluate_synth

        result = evaluate_synth(
            synth, real, seg_run, out=out, real_split=real_split, max_samples=max_samples, seed=seed, console=console
        )
        console.print(metrics_table(result))
        if "skipped" not in result["distribution"]:
            for key, entry in result["distribution"].items():
                console.print(f"[bold]{key}[/]: {escape(entry['extractor'])}")
        console.print(f"[green]wrote[/] {(out or synth / EVALUATION_DIR) / METRICS_JSON}")
