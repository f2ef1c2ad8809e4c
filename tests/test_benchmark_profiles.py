"""Benchmark profiles: a profile applies in full, and only a flag given explicitly replaces a value."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from conftest import write_tiny_dataset
from typer.testing import CliRunner

import segsynth.benchmark
from segsynth.benchmark import BenchmarkConfig, prepare_benchmark, quick_profile
from segsynth.cli import app


@pytest.fixture()
def plan_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's benchmark writes its folder and config (benchmark.yaml), then stops before training."""

    def prepare(data: Path, out: Path, cfg: BenchmarkConfig, console: object = None, reuse: object = None) -> None:
        prepare_benchmark(data, out, cfg, check=False)
        raise typer.Exit(0)

    monkeypatch.setattr(segsynth.benchmark, "run_benchmark", prepare)


def _saved(out: Path) -> dict:
    return yaml.safe_load((out / "benchmark.yaml").read_text(encoding="utf-8"))


def test_quick_runs_its_whole_profile_and_an_explicit_flag_wins(tmp_path: Path, plan_only: None) -> None:
    tiny_dataset = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3", "p4", "p5", "p6"), per_case=1)
    profile = quick_profile()
    quick = tmp_path / "quick"
    result = CliRunner().invoke(app, ["benchmark", str(tiny_dataset), "-o", str(quick), "--quick"])
    assert result.exit_code == 0, result.output
    saved = _saved(quick)
    for key in ("folds", "seeds", "settings", "controls"):
        if key in profile:
            assert saved[key] == profile[key], key
    assert saved["folds"] == 2 and saved["diffusion_overrides"] == profile["diffusion_overrides"]
    assert saved["generation"]["n"] == profile["generation"]["n"]
    # an explicit flag replaces its one value and leaves the rest of the profile alone
    folds = tmp_path / "folds"
    result = CliRunner().invoke(app, ["benchmark", str(tiny_dataset), "-o", str(folds), "--quick", "--folds", "3"])
    assert result.exit_code == 0, result.output
    assert _saved(folds)["folds"] == 3 and _saved(folds)["settings"] == profile["settings"]
    # without a profile the defaults apply
    plain = tmp_path / "plain"
    assert CliRunner().invoke(app, ["benchmark", str(tiny_dataset), "-o", str(plain)]).exit_code == 0
    assert _saved(plain)["folds"] == BenchmarkConfig().folds
