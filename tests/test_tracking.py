"""`train.log_with`: training curves through accelerate's trackers (csv needs no package)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import segsynth.tracking as tracking
from segsynth.config import ConfigError
from segsynth.diffusion.train import train_diffusion
from segsynth.autoencoder import AutoencoderTrainConfig, train_autoencoder
from segsynth.tracking import CSVTracker, flat_config, make_trackers
from conftest import write_tiny_dataset
from test_latent import TINY_AE_TRAIN
from test_train_diffusion import blobs, tiny_config  # noqa: F401  (blobs is a fixture)


def _rows(path: Path) -> list[tuple[int, str, float]]:
    with path.open(newline="") as handle:
        return [(int(s), n, float(v)) for s, n, v in list(csv.reader(handle))[1:]]


def assert_csv_matches_train_log(run: Path, name: str) -> set[str]:
    """``RUN/tracking/metrics.csv`` holds the ``name`` curve of ``train_log.jsonl``, step for step;
    returns every name it logged."""
    rows = _rows(run / "tracking" / "metrics.csv")
    logged = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert logged and [(s, v) for s, n, v in rows if n == name] == [(r["step"], pytest.approx(r[name])) for r in logged]
    return {n for _, n, _ in rows}


def test_csv_tracker_writes_rows_and_a_resume_drops_the_killed_runs_tail(tmp_path: Path) -> None:
    first = CSVTracker("segsynth", tmp_path)
    for step in (1, 2, 3):
        first.log({"loss": 1.0 / step, "note": "text is skipped"}, step=step)
    resumed = CSVTracker("segsynth", tmp_path)  # a run killed after step 3, resumed from a checkpoint at 1
    resumed.log({"loss": 0.9}, step=2)
    assert _rows(tmp_path / "metrics.csv") == [(1, "loss", 1.0), (2, "loss", 0.9)]


def test_missing_tracker_package_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "is_tensorboard_available", lambda: False)
    with pytest.raises(ConfigError, match="train.log_with: tensorboard is not installed"):
        make_trackers("tensorboard", tmp_path)
    assert make_trackers("none", tmp_path) == []


def test_train_diffusion_logs_its_curve_to_csv(blobs: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = tiny_config(**{"train.steps": 3, "train.log_with": "csv"})
    run = train_diffusion(blobs, cfg, tmp_path / "run")
    assert {"lr", "epoch"} <= assert_csv_matches_train_log(run, "loss")
    assert flat_config(cfg)["train.log_with"] == "csv" and flat_config(cfg)["model.image_size"] == 16


def test_train_autoencoder_logs_its_curve_to_csv(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", size=32, cases=("p1", "p2", "p3", "p4"))
    cfg = AutoencoderTrainConfig.model_validate({**TINY_AE_TRAIN, "log_with": "csv"})
    assert_csv_matches_train_log(train_autoencoder(data, cfg, tmp_path / "ae"), "l1")


def test_train_seg_logs_its_curve_to_csv(tmp_path: Path) -> None:
    from test_seg_train import QUIET, make_toy_dataset, tiny_config as seg_config

    from segsynth.seg.train import train_seg

    data = make_toy_dataset(tmp_path / "data", cases=4, per_case=2, size=16)
    run = train_seg(data, seg_config(steps=4, val_every=2, log_with="csv"), tmp_path / "run", console=QUIET)
    assert {"val_dice", "val_dice_smoothed"} <= assert_csv_matches_train_log(run, "loss")
