"""``segsynth evaluate-synth``: layout fidelity, style retrieval, FID/KID and diversity of a synthetic set.

What is sampled is an :class:`~segsynth.evaluation.config.EvaluationConfig`: ``-c eval.yaml`` (or
its defaults), then the named options below, then ``--set``. The options name no default of their
own: an option left out keeps the config's value (importing the config here would load torch
through the evaluation package before ``--help`` could print).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors
from segsynth.cli.options import ConfigOption, SetOption, command_config, config_options


@app.command("evaluate-synth")
def evaluate_synth_command(
    synth: Path = typer.Argument(..., help="Synthetic set folder (from segsynth generate)."),
    real: Path = typer.Option(..., "--real", help="The real labelled dataset folder."),
    seg_run: Path | None = typer.Option(None, "--seg-run", help="A train-seg run trained on real data only (default: train a small one into OUT/seg_real)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder for metrics.json (default: SYNTH/evaluation)."),
    config: ConfigOption = None,
    overrides: SetOption = [],
    real_split: str | None = typer.Option(None, "--real-split", help="Real images for FID/KID and diversity: all, labeled or unlabeled (sets real_split)."),
    max_samples: int | None = typer.Option(None, "--max-samples", help="Synthetic samples evaluated, a seeded subset of larger sets (sets max_samples)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of subsets and of the random style/texture network (sets seed)."),
) -> None:
    """Measure a synthetic set: layout fidelity, zero-shot style retrieval, FID/KID, diversity."""
    options = dict(locals())  # the parameters, each option named as its EvaluationConfig field
    with user_errors():
        from segsynth.artifacts.names import EVALUATION_DIR, METRICS_JSON
        from segsynth.evaluation.config import EvaluationConfig
        from segsynth.evaluation.evaluate_synth import evaluate_synth
        from segsynth.evaluation.table import metrics_table

        cfg = command_config(EvaluationConfig, config, overrides, config_options(EvaluationConfig, options))

        result = evaluate_synth(synth, real, seg_run, config=cfg, out=out, console=console)
        console.print(metrics_table(result))
        if "skipped" not in result["distribution"]:
            for key, entry in result["distribution"].items():
                console.print(f"[bold]{key}[/]: {escape(entry['extractor'])}")
        console.print(f"[green]wrote[/] {(out or synth / EVALUATION_DIR) / METRICS_JSON}")
