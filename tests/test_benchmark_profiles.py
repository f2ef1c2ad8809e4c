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

    def prepare(data: Path, cfg: BenchmarkConfig, out: Path, console: object = None, reuse: object = None) -> None:
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


def test_screening_looks_at_one_fold_with_two_seeds_and_full_at_every_fold(tmp_path: Path, plan_only: None) -> None:
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3", "p4", "p5", "p6"), per_case=1)
    config = tmp_path / "bench.yaml"
    config.write_text("folds: 2\nrun_folds: [1]\nseeds: [4]\n", encoding="utf-8")
    screening = tmp_path / "screening"
    result = CliRunner().invoke(app, ["benchmark", str(data), "-o", str(screening), "-c", str(config),
                                      "--profile", "screening"])
    assert result.exit_code == 0, result.output
    assert _saved(screening)["run_folds"] == [0] and _saved(screening)["seeds"] == [0, 1]
    full = tmp_path / "full"
    result = CliRunner().invoke(app, ["benchmark", str(data), "-o", str(full), "-c", str(config), "--profile", "full"])
    assert result.exit_code == 0, result.output
    assert _saved(full)["run_folds"] is None and _saved(full)["seeds"] == [0, 1, 2] and _saved(full)["folds"] == 2
    # --set has the last word over a profile, as over every named option
    result = CliRunner().invoke(app, ["benchmark", str(data), "-o", str(tmp_path / "set"), "-c", str(config),
                                      "--profile", "full", "--set", "run_folds=[1]"])
    assert result.exit_code == 0, result.output
    assert _saved(tmp_path / "set")["run_folds"] == [1]
    bad = CliRunner().invoke(app, ["benchmark", str(data), "-o", str(tmp_path / "bad"), "--profile", "huge"])
    assert bad.exit_code == 2 and "screening" in bad.output


def test_calibration_gives_every_row_the_latest_stop(tmp_path: Path) -> None:
    """Each row trains with early stopping once; the shared budget is the latest stop (never below
    the planned budget), and every run of the benchmark then trains exactly that many steps."""
    import json

    import torch
    from test_train_diffusion import TINY

    from segsynth.benchmark import run_benchmark
    from segsynth.benchmark.calibrate import budget_from_stops
    from segsynth.config import parse_config

    assert budget_from_stops({"baseline": 40, "ratio:0.5": 90}, 50, 25) == 100
    assert budget_from_stops({"baseline": 20}, 50, 25) == 50
    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3", "p4", "p5", "p6"), per_case=2, unlabeled=2)
    cfg = parse_config(BenchmarkConfig, {
        "folds": 2, "run_folds": [0], "seeds": [0], "settings": ["ratio:0.5"], "controls": ["heavy_augmentation"],
        "low_label": 2, "val_fraction": 0.5, "calibration": {"enabled": True, "patience": 1, "max_factor": 3},
        "diffusion_overrides": {**TINY, "train.steps": 2},
        "segmentation_overrides": {"train.steps": 2, "train.val_every": 2, "train.batch_size": 2, "train.smoothing": 1,
                                   "train.min_delta": 0.5, "network.channels": [8, 16], "network.strides": [2]},
        "generation": {"n": 4, "steps": 2, "batch_size": 4, "per_mask": 2},
    })
    out = tmp_path / "bench"
    results = run_benchmark(data, cfg, out)
    calibration = json.loads((out / "calibration.json").read_text())
    assert set(calibration["rows"]) == {"baseline", "baseline+heavy-aug", "ratio:0.5"}
    assert calibration["cap"] == 6 and calibration["planned"] == 2
    # a gain of 0.5 never comes: every row stops after its second validation (step 4), past the planned 2
    assert all(row["stopped_early"] and row["stopped_at"] == 4 for row in calibration["rows"].values())
    assert results["budget"]["steps"] == calibration["budget"] == 4 and results["budget"]["calibrated"]
    assert {r["steps"] for r in results["runs"]} == {4}
    assert not any("test" in p.name for p in (out / "calibration").rglob("metrics.json"))
