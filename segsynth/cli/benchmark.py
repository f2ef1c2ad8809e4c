"""``segsynth benchmark``: baseline vs synthetic settings, by case folds and seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from segsynth.artifacts.names import RESULTS_JSON, RESULTS_MD
from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors
from segsynth.cli.options import ConfigOption, SetOption, command_config


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def _low_label(text: str | None) -> float | int | None:
    if text is None:
        return None
    return float(text) if "." in text else int(text)


@app.command()
def benchmark(
    data: Path = typer.Argument(..., help="Labelled dataset folder (with unlabeled/ for zero-shot styles)."),
    out: Path = typer.Option(..., "--out", "-o", help="Benchmark folder (re-run the same command to continue)."),
    config: ConfigOption = None,
    overrides: SetOption = [],
    folds: int | None = typer.Option(None, help="k of the k-fold split by case."),
    seeds: str | None = typer.Option(None, help="Segmentation seeds, e.g. 0,1,2."),
    settings: str | None = typer.Option(None, help="Synthetic settings, e.g. ratio:0.8,merge:0.6,concat."),
    low_label: str | None = typer.Option(None, help="Labelled training cases kept per fold: a fraction (0.5) or a count (2)."),
    run_folds: str | None = typer.Option(None, help="Run only these folds, e.g. 0."),
    diffusion_config: Path | None = typer.Option(None, help="YAML for the per-fold diffusion models."),
    quick: bool = typer.Option(False, "--quick/--no-quick", metavar="", help="CI-sized profile: 2 folds, short trainings, small synthetic sets."),
    reuse: Path | None = typer.Option(None, help="An earlier benchmark folder on the same data: copy in its runs this "
                                                 "config leaves unchanged (real-only rows; generators if only sampling differs)."),
) -> None:
    """Train diffusion per fold, generate, train segmentation with and without synthetic data, compare."""
    with user_errors():
        from segsynth.benchmark import BenchmarkConfig, quick_profile, rich_table, run_benchmark
        from segsynth.io.guard import check_continuable, check_out_apart

        # The profile applies in full; a flag given explicitly (not None) replaces its one value.
        given = {
            "folds": folds,
            "seeds": _int_list(seeds),
            "settings": [s for s in settings.split(",") if s] if settings else None,
            "low_label": _low_label(low_label),
            "run_folds": _int_list(run_folds),
            "diffusion_config": str(diffusion_config) if diffusion_config else None,
        }
        named: dict[str, Any] = quick_profile() if quick else {}
        named |= {key: value for key, value in given.items() if value is not None}
        cfg = command_config(BenchmarkConfig, config, overrides, named)
        check_out_apart(out, [data, reuse, cfg.diffusion_config, cfg.segmentation_config])
        check_continuable(out, "benchmark")
        results = run_benchmark(data, out, cfg, console=console, reuse=reuse)
        console.print(rich_table(results))
        console.print(f"results: {out / RESULTS_JSON} and {out / RESULTS_MD}")
