"""Benchmark: paired statistics, the summary table, and a tiny end-to-end run with its guarantees."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from test_train_diffusion import TINY

from segsynth.benchmark import BenchmarkConfig, markdown_table, run_benchmark, summarise
from segsynth.benchmark.stats import mean_std, paired_difference
from segsynth.config import ConfigError, parse_config


def test_paired_difference_on_known_values() -> None:
    base = [0.5, 0.6, 0.7, 0.8, 0.4, 0.55]
    better = [b + 0.1 for b in base]
    result = paired_difference(better, base)
    assert result["mean"] == pytest.approx(0.1)
    assert result["ci_low"] == pytest.approx(0.1) and result["ci_high"] == pytest.approx(0.1)
    assert result["wins"] == 1.0 and result["n"] == 6
    assert result["p_wilcoxon"] < 0.05
    same = paired_difference(base, base)
    assert same["mean"] == 0.0 and math.isnan(same["p_wilcoxon"])
    mixed = paired_difference([1.0, 0.0, 1.0, 0.0, math.nan], [0.0, 1.0, 0.0, 1.0, 0.3])
    assert mixed["n"] == 4 and mixed["ci_low"] < 0 < mixed["ci_high"]
    assert paired_difference(better, base, seed=3) == paired_difference(better, base, seed=3)
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0], [1.0, 2.0])
    assert mean_std([1.0, 3.0, math.nan]) == (2.0, pytest.approx(math.sqrt(2)))


def _metrics(case_dice: dict[str, float]) -> dict[str, Any]:
    per_case = {c: {"dice": {"fg": d}, "iou": {"fg": d / (2 - d)}, "hd95": {"fg": 10 * (1 - d)}} for c, d in case_dice.items()}
    mean = float(np.mean(list(case_dice.values())))
    return {"classes": ["fg"], "per_case": per_case, "summary": {"dice": {"fg": {"case_mean": mean}}}}


def test_summary_pairs_by_fold_seed_and_case() -> None:
    runs = []
    for fold in (0, 1):
        for seed in (0, 1):
            cases = {f"f{fold}c{i}": 0.5 + 0.1 * i for i in range(3)}
            runs.append({"fold": fold, "seed": seed, "setting": "baseline", "run": "b", "metrics": _metrics(cases)})
            runs.append({"fold": fold, "seed": seed, "setting": "ratio:0.8", "run": "r",
                         "metrics": _metrics({c: d + 0.05 for c, d in cases.items()})})
    results = summarise(runs, ["baseline", "ratio:0.8"], baseline="baseline")
    base, synth = results["settings"]["baseline"], results["settings"]["ratio:0.8"]
    assert base["runs"] == 4 and base["dice"]["mean"] == pytest.approx(0.6) and base["dice"]["std"] == 0.0
    assert base["dice"]["case_std"] == pytest.approx(np.std([0.5, 0.6, 0.7]))
    assert synth["dice"]["mean"] == pytest.approx(0.65)
    assert base["per_class_dice"]["fg"] == pytest.approx(0.6)
    paired = results["paired"]["ratio:0.8"]["dice"]
    assert paired["n"] == 12 and paired["mean"] == pytest.approx(0.05) and paired["wins"] == 1.0
    assert results["paired"]["ratio:0.8"]["hd95"]["mean"] == pytest.approx(-0.5)
    table = markdown_table(results)
    assert "| ratio:0.8 | 4 | 0.650 ± 0.000" in table and "Wilcoxon" in table and "| +0.050 | [+0.050, +0.050] |" in table


def test_config_refuses_baseline_as_setting_and_bad_mix() -> None:
    with pytest.raises(ConfigError, match="baseline"):
        parse_config(BenchmarkConfig, {"settings": ["none"]})
    with pytest.raises(ConfigError, match="settings"):
        parse_config(BenchmarkConfig, {"settings": ["ratio:0.8", "ratio:0.8"]})
    with pytest.raises(ConfigError, match="foldz"):
        parse_config(BenchmarkConfig, {"foldz": 3})


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path: Path) -> None:
    """Two folds by case, fold 0 only: test cases never reach the generator or the segmenter."""
    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3", "p4"), per_case=2, size=16, unlabeled=2)
    cfg = parse_config(BenchmarkConfig, {
        "folds": 2, "run_folds": [0], "seeds": [0, 1], "settings": ["ratio:0.5", "merge:0.6"], "val_fraction": 0.5,
        "diffusion_overrides": {**TINY, "train.steps": 2},
        "segmentation_overrides": {"train.epochs": 1, "train.batch_size": 2, "network.channels": [8, 16], "network.strides": [2]},
        "generation": {"n": 4, "steps": 2, "batch_size": 4},
    })
    out = tmp_path / "bench"
    results = run_benchmark(data, out, cfg)
    splits = json.loads((out / "splits.json").read_text())["folds"]
    test_ids = set(splits[0]["test_ids"])
    assert test_ids and not test_ids & set(json.loads((out / "fold_0" / "diffusion" / "training_data.json").read_text())["train_ids"])
    manifest = [json.loads(line) for line in (out / "fold_0" / "synth" / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 4
    assert set(results["settings"]) == {"baseline", "ratio:0.5", "merge:0.6"}
    assert all(row["runs"] == 2 for row in results["settings"].values())
    assert {r["setting"] for r in results["runs"]} == set(results["settings"])
    tested = {case for r in results["runs"] for case in r["case_dice"]}
    assert tested == {ref.split("_")[0] for ref in test_ids}
    assert json.loads((out / "results.json").read_text())["paired"].keys() == {"ratio:0.5", "merge:0.6"}
    assert "baseline" in (out / "results.md").read_text()
    # running again re-uses every finished sub-run and gives the same table
    before = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    again = run_benchmark(data, out, cfg)
    assert again["settings"] == results["settings"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == before
    with pytest.raises(ValueError, match="another config"):
        run_benchmark(data, out, cfg.model_copy(update={"seeds": [5]}))
