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


def _set_keys(overrides: list[str]) -> set[str]:
    return {item.partition("=")[0].strip() for item in overrides}


@app.command()
def benchmark(
    data: Path = typer.Argument(..., help="Labelled dataset folder (with unlabeled/ for zero-shot styles)."),
    out: Path = typer.Option(..., "--out", "-o", help="Benchmark folder (re-run the same command to continue)."),
    config: ConfigOption = None,
    overrides: SetOption = [],
    folds: int | None = typer.Option(None, help="k of the k-fold split by case."),
    seeds: str | None = typer.Option(None, help="Segmentation seeds, e.g. 0,1,2."),
    settings: str | None = typer.Option(None, help="Synthetic settings, e.g. ratio:0.8,merge:0.6,concat; NAME+heavy-aug adds heavy augmentation."),
    low_label: str | None = typer.Option(None, help="Labelled training cases kept per fold: a fraction (0.5) or a count (2)."),
    run_folds: str | None = typer.Option(None, help="Run only these folds, e.g. 0."),
    diffusion_config: Path | None = typer.Option(None, help="YAML for the per-fold diffusion models."),
    quick: bool = typer.Option(False, "--quick/--no-quick", metavar="", help="CI-sized profile: 2 folds, short trainings, small synthetic sets (= --profile quick)."),
    profile: str | None = typer.Option(None, help="Option profile applied in full (flags given explicitly win): quick; "
                                                  "screening (fold 0, 2 seeds); full (every fold, 3 seeds)."),
    reuse: Path | None = typer.Option(None, help="An earlier benchmark folder on the same data: copy in its runs this "
                                                 "config leaves unchanged (real-only rows; generators if only sampling differs)."),
) -> None:
    """Train diffusion per fold, generate, train segmentation with and without synthetic data, compare."""
    with user_errors():
        from segsynth.benchmark import BenchmarkConfig, rich_table, run_benchmark
        from segsynth.benchmark.config import profile_overrides
        from segsynth.io.guard import check_continuable, check_out_apart

        if quick and profile not in (None, "quick"):
            raise ValueError(f"--quick is --profile quick; it cannot be combined with --profile {profile}")
        profile = "quick" if quick else profile

        # The profile applies in full; a flag given explicitly (not None) replaces its one value.
        given = {
            "folds": folds,
            "seeds": _int_list(seeds),
            "settings": [s for s in settings.split(",") if s] if settings else None,
            "low_label": _low_label(low_label),
            "run_folds": _int_list(run_folds),
            "diffusion_config": str(diffusion_config) if diffusion_config else None,
        }
        named: dict[str, Any] = profile_overrides(profile) if profile else {}
        named |= {key: value for key, value in given.items() if value is not None}
        cfg = command_config(BenchmarkConfig, config, overrides, named)
        # command_config reads None as "not given": a profile's None (full: every fold) is applied here,
        # unless --set names the key
        cleared = {key: None for key, value in named.items() if value is None and key not in _set_keys(overrides)}
        if cleared:
            cfg = BenchmarkConfig.model_validate({**cfg.model_dump(), **cleared})
        # a stage config given as a file is an input too (a shipped recipe named by name is not a path)
        configs = [c for c in (cfg.diffusion_config, cfg.segmentation_config) if c and Path(c).exists()]
        check_out_apart(out, [data, reuse, *configs])
        check_continuable(out, "benchmark")
        results = run_benchmark(data, cfg, out, console=console, reuse=reuse)
        console.print(rich_table(results))
        console.print(f"results: {out / RESULTS_JSON} and {out / RESULTS_MD}")
