"""A second generator on the same benchmark: reuse copies only the runs it cannot change, and the
before/after comparison refuses anything but the same experiment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_dataset
from test_train_diffusion import TINY

from segsynth.artifacts.names import REUSED_JSON
from segsynth.benchmark import BenchmarkConfig, run_benchmark
from segsynth.benchmark.compare import compare_generators
from segsynth.benchmark.reuse import reuse_unchanged_runs
from segsynth.config import parse_config

REAL_ONLY = ["fold_0/seg/baseline/seed_0", "fold_0/seg/baseline_heavy-aug/seed_0"]


def _config(**changes: object) -> BenchmarkConfig:
    base = {
        "folds": 2, "run_folds": [0], "seeds": [0], "settings": ["ratio:0.5"], "controls": ["heavy_augmentation"],
        "low_label": 2, "val_fraction": 0.5,
        "diffusion_overrides": {**TINY, "train.steps": 2},
        "segmentation_overrides": {"train.steps": 4, "train.val_every": 2, "train.batch_size": 2,
                                   "network.channels": [8, 16], "network.strides": [2]},
        "generation": {"n": 4, "steps": 2, "batch_size": 4, "per_mask": 2},
    }
    return parse_config(BenchmarkConfig, base | changes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reuse")
    data = write_tiny_dataset(root / "data", cases=("p1", "p2", "p3", "p4", "p5", "p6"), per_case=2, size=16, unlabeled=2)
    out = root / "before"
    return data, out, run_benchmark(data, _config(), out)


def test_a_sampling_change_reuses_the_generator_and_the_real_only_rows(finished: tuple[Path, Path, dict],
                                                                       tmp_path: Path) -> None:
    data, before, old = finished
    sampling = _config(generation={"n": 4, "steps": 3, "batch_size": 4, "per_mask": 2})
    after = tmp_path / "after"
    new = run_benchmark(data, sampling, after, reuse=before)
    assert sorted(new["reused"]["runs"]) == sorted(["fold_0/diffusion", *REAL_ONLY])
    assert json.loads((after / REUSED_JSON).read_text())["from"] == str(before.resolve())
    for run in REAL_ONLY:  # copied, not retrained: the very same scores
        assert (after / run / "metrics.json").read_bytes() == (before / run / "metrics.json").read_bytes()
    assert not (after / "fold_0/diffusion/checkpoints").exists()
    assert (after / "fold_0/diffusion/train_log.jsonl").read_bytes() == (before / "fold_0/diffusion/train_log.jsonl").read_bytes()
    # the synthetic set and the run trained on it are new, made from this folder's generator
    generation = json.loads((after / "fold_0/synth/generation.json").read_text())
    assert generation["config"]["steps"] == 3
    ratio = json.loads((after / "fold_0/seg/ratio_0.5/seed_0/split.json").read_text())
    assert Path(ratio["synthetic"][0]["root"]).resolve() == (after / "fold_0/synth").resolve()
    # the comparison of the two generators pairs the same cases and sees identical baselines
    table = compare_generators(old, new)
    assert table["cases"] == old["settings"]["baseline"]["cases"]
    row = table["settings"]["ratio:0.5"]
    assert row["after_minus_before"]["n"] == table["cases"]
    assert row["after_minus_before"]["mean"] == pytest.approx(row["after"]["mean"] - row["before"]["mean"])
    # running the same command again continues: nothing is copied or trained twice
    stamps = {p: p.stat().st_mtime_ns for p in after.rglob("metrics.json")}
    assert run_benchmark(data, sampling, after, reuse=before)["settings"] == new["settings"]
    assert {p: p.stat().st_mtime_ns for p in after.rglob("metrics.json")} == stamps


def test_only_what_is_unchanged_is_reused(finished: tuple[Path, Path, dict], tmp_path: Path) -> None:
    data, before, _ = finished
    retrained = _config(diffusion_overrides={**TINY, "train.steps": 3})
    assert sorted(reuse_unchanged_runs(before, data, tmp_path / "a", retrained)) == sorted(REAL_ONLY)
    longer_seg = _config(segmentation_overrides={"train.steps": 6, "train.val_every": 2, "train.batch_size": 2,
                                                 "network.channels": [8, 16], "network.strides": [2]})
    assert reuse_unchanged_runs(before, data, tmp_path / "b", longer_seg) == ["fold_0/diffusion"]
    other_data = write_tiny_dataset(tmp_path / "copy", cases=("p1", "p2", "p3", "p4", "p5", "p6"), per_case=2,
                                    size=16, unlabeled=2)
    assert reuse_unchanged_runs(before, other_data, tmp_path / "c", _config()) == []
    with pytest.raises(ValueError, match="folds differ.*fold_seed"):
        reuse_unchanged_runs(before, data, tmp_path / "d", _config(fold_seed=1))
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "splits.json").write_text('{"seed": 1, "folds": []}')
    with pytest.raises(ValueError, match="folds differ from"):
        reuse_unchanged_runs(before, data, tmp_path / "f", _config())
    with pytest.raises(ValueError, match="not a benchmark folder"):
        reuse_unchanged_runs(tmp_path, data, tmp_path / "e", _config())


def test_a_generator_trained_on_other_data_is_never_lent(finished: tuple[Path, Path, dict], tmp_path: Path) -> None:
    data, before, _ = finished
    # a labelled-only generator is not what a pseudo-label benchmark trains: only the real-only rows come
    pseudo = _config(generator={"pseudo_labels": True})
    assert sorted(reuse_unchanged_runs(before, data, tmp_path / "a", pseudo)) == sorted(REAL_ONLY)
    # nor is a pseudo-label generator lent to a labelled-only benchmark
    shutil.copytree(before, tmp_path / "pseudo")
    record_path = tmp_path / "pseudo/fold_0/diffusion/training_data.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(record | {"pseudo_labelled": {"ids": ["u1_0"], "layouts": "L", "teacher": "T"}}))
    assert sorted(reuse_unchanged_runs(tmp_path / "pseudo", data, tmp_path / "b", _config())) == sorted(REAL_ONLY)


def test_comparison_refuses_different_experiments(finished: tuple[Path, Path, dict]) -> None:
    _, _, old = finished
    with pytest.raises(ValueError, match="differ in seeds"):
        compare_generators(old, old | {"config": old["config"] | {"seeds": [0, 1]}})
    shifted = [r | {"case_dice": {c: v + 0.01 for c, v in r["case_dice"].items()}} if r["setting"] == "baseline" else r
               for r in old["runs"]]
    with pytest.raises(ValueError, match="baselines score differently"):
        compare_generators(old, old | {"runs": shifted})
