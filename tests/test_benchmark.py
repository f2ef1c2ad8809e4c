"""Benchmark: paired statistics, the summary table, and a tiny end-to-end run with its guarantees."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_SEG_OVERRIDES, write_tiny_dataset
from test_train_diffusion import TINY

import yaml

from segsynth.benchmark import BenchmarkConfig, markdown_table, run_benchmark, summarise
from segsynth.benchmark.sizing import SEG_PASSES, SEG_STEP_FLOOR, fit_generator, image_side, segmentation_steps
from segsynth.benchmark.stats import mean_std, paired_difference
from segsynth.config import ConfigError, load_config, parse_config
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.seg.config import SegTrainConfig


def test_paired_difference_on_known_values() -> None:
    base = [0.5, 0.6, 0.7, 0.8, 0.4, 0.55]
    better = [b + 0.1 for b in base]
    result = paired_difference(better, base)
    assert result["mean"] == pytest.approx(0.1)
    assert result["ci_low"] == pytest.approx(0.1) and result["ci_high"] == pytest.approx(0.1)
    assert result["wins"] == 1.0 and result["n"] == 6
    # Six cases all better: the exact two-sided Wilcoxon p is 2/2^6, its floor.
    assert result["p_wilcoxon"] == pytest.approx(2 / 64) == result["p_min"]
    same = paired_difference(base, base)
    assert same["mean"] == 0.0 and math.isnan(same["p_wilcoxon"])
    mixed = paired_difference([1.0, 0.0, 1.0, 0.0, math.nan], [0.0, 1.0, 0.0, 1.0, 0.3])
    assert mixed["n"] == 4 and mixed["ci_low"] < 0 < mixed["ci_high"]
    assert paired_difference(better, base, seed=3) == paired_difference(better, base, seed=3)
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0], [1.0, 2.0])
    assert mean_std([1.0, 3.0, math.nan]) == (2.0, pytest.approx(math.sqrt(2)))


def _metrics(case_dice: dict[str, float], still_rising: bool = False) -> dict[str, Any]:
    per_case = {c: {"dice": {"fg": d}, "iou": {"fg": d / (2 - d)}, "hd95": {"fg": 10 * (1 - d)}} for c, d in case_dice.items()}
    mean = float(np.mean(list(case_dice.values())))
    return {"classes": ["fg"], "per_case": per_case, "summary": {"dice": {"fg": {"case_mean": mean}}},
            "training": {"steps": 40, "still_rising": still_rising}}


def test_summary_takes_the_test_case_as_the_unit() -> None:
    """3 seeds x 3 cases per fold, 2 folds: 6 paired observations (cases), never 18 (seed, case) pairs."""
    runs = []
    for fold in (0, 1):
        cases = {f"f{fold}c{i}": 0.5 + 0.1 * i for i in range(3)}
        for seed in (0, 1, 2):
            noise = 0.01 * (seed - 1)  # seed noise that averages out within a case
            runs.append({"fold": fold, "seed": seed, "setting": "baseline", "run": "b",
                         "metrics": _metrics({c: d + noise for c, d in cases.items()})})
            runs.append({"fold": fold, "seed": seed, "setting": "ratio:0.8", "run": "r",
                         "metrics": _metrics({c: d + 0.05 - noise for c, d in cases.items()}, still_rising=seed == 0)})
            runs.append({"fold": fold, "seed": seed, "setting": "all-labelled", "run": "a",
                         "metrics": _metrics({c: d + 0.2 for c, d in cases.items()})})
    results = summarise(runs, ["baseline", "all-labelled", "ratio:0.8"], baseline="baseline", reference="all-labelled")
    base, synth = results["settings"]["baseline"], results["settings"]["ratio:0.8"]
    assert base["runs"] == 6 and base["cases"] == 6 and base["folds"] == 2 and base["seeds"] == 3
    assert base["dice"]["mean"] == pytest.approx(0.6)
    assert base["dice"]["case_std"] == pytest.approx(np.std([0.5, 0.6, 0.7] * 2, ddof=1))
    assert base["dice"]["run_std"] == pytest.approx(np.std([0.59, 0.6, 0.61] * 2, ddof=1))
    assert synth["dice"]["mean"] == pytest.approx(0.65) and synth["still_rising"] == 2
    paired = results["paired"]["ratio:0.8"]
    assert paired["dice"]["n"] == 6 and paired["dice"]["mean"] == pytest.approx(0.05) and paired["dice"]["wins"] == 1.0
    assert paired["dice"]["p_wilcoxon"] == pytest.approx(2 / 2**6)
    assert paired["hd95"]["mean"] == pytest.approx(-0.5)
    assert paired["relative_gain"] == pytest.approx(0.05 / 0.6)
    assert paired["gap_closed"] == pytest.approx(0.25)  # 0.05 of the 0.2 to all labelled cases
    assert paired["case_std_change"] == pytest.approx(0.0)
    table = markdown_table(results)
    assert table.startswith("6 real test cases from 2 folds, 3 seeds per setting")
    assert "| ratio:0.8 | 6 | 6 | 0.650 ± 0.009 |" in table and "| +0.050 | [+0.050, +0.050] | 0.031 |" in table
    assert "| +8.3% | +0.000 | 25% | 2/6 |" in table and "Wilcoxon" in table


def test_config_refuses_baseline_as_setting_and_bad_mix() -> None:
    with pytest.raises(ConfigError, match="baseline"):
        parse_config(BenchmarkConfig, {"settings": ["none"]})
    with pytest.raises(ConfigError, match="settings"):
        parse_config(BenchmarkConfig, {"settings": ["ratio:0.8", "ratio:0.8"]})
    with pytest.raises(ConfigError, match="foldz"):
        parse_config(BenchmarkConfig, {"foldz": 3})


def test_tiny_benchmark_trains_every_setting_for_the_same_steps(tmp_path: Path) -> None:
    """Two folds by case, fold 0 only: equal budgets, the controls, merge on variants, no leakage."""
    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3", "p4", "p5", "p6"), per_case=2, size=16,
                              unlabeled=2)
    cfg = parse_config(BenchmarkConfig, {
        "folds": 2, "run_folds": [0], "seeds": [0, 1], "settings": ["ratio:0.5", "merge:0.6", "concat"],
        "low_label": 2, "val_fraction": 0.5,
        "diffusion_overrides": {**TINY, "train.steps": 2},
        "segmentation_overrides": TINY_SEG_OVERRIDES,
        "generation": {"n": 4, "steps": 2, "batch_size": 4, "per_mask": 2},
    })
    out = tmp_path / "bench"
    results = run_benchmark(data, cfg, out)
    names = ["baseline", "baseline+heavy-aug", "self-training", "all-labelled", "ratio:0.5", "merge:0.6", "concat"]
    assert list(results["settings"]) == names
    # Equal budgets: every run's own log ends at the same step, with the same batch and validation steps.
    logs = {}
    for log in sorted(out.glob("fold_0/seg/*/seed_*/train_log.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        logs[log.parent] = [r["step"] for r in rows]
        assert all(r["real_examples"] + r["synthetic_examples"] == 4 for r in rows)
    assert len(logs) == 14 and all(steps == [2, 4, 6] for steps in logs.values())
    assert results["budget"]["steps"] == 6 and results["budget"]["batch_size"] == 2
    assert all(r["steps"] == 6 for r in results["runs"])
    splits = json.loads((out / "splits.json").read_text())["folds"]
    test_ids = set(splits[0]["test_ids"])
    assert test_ids and not test_ids & set(json.loads((out / "fold_0" / "diffusion" / "training_data.json").read_text())["train_ids"])
    # Merge trains on same-mask variants of the generator's labelled images, ratio/concat on the other set.
    variants = [json.loads(line) for line in (out / "fold_0" / "synth_variants" / "manifest.jsonl").read_text().splitlines()]
    seen = splits[0]["train_ids"] + splits[0]["val_ids"]
    assert {r["layout_source"] for r in variants} == {"variants"} and len(variants) == 2 * len(seen)
    merge_split = json.loads((out / "fold_0/seg/merge_0.6/seed_0/split.json").read_text())
    assert merge_split["synthetic"][0]["root"].endswith("synth_variants")
    assert json.loads((out / "fold_0/seg/ratio_0.5/seed_0/split.json").read_text())["synthetic"][0]["root"].endswith("synth")
    # The controls change one factor each: augmentation, or the labelled cases.
    heavy = yaml.safe_load((out / "fold_0/seg/baseline_heavy-aug/seed_0/config.yaml").read_text())
    assert heavy["train"]["augment"] == "heavy" and heavy["mix"]["strategy"] == "none"
    full = json.loads((out / "fold_0/seg/all-labelled/seed_0/split.json").read_text())
    base = json.loads((out / "fold_0/seg/baseline/seed_0/split.json").read_text())
    assert set(base["train_ids"]) < set(full["train_ids"]) and full["val_ids"] == base["val_ids"]
    assert not set(full["train_ids"]) & test_ids
    tested = {case for r in results["runs"] for case in r["case_dice"]}
    assert tested == {ref.split("_")[0] for ref in test_ids}
    assert results["settings"]["baseline"]["cases"] == len(splits[0]["test_cases"])
    assert json.loads((out / "results.json").read_text())["paired"].keys() == set(names[1:])
    assert "real test cases" in (out / "results.md").read_text()
    # running again re-uses every finished sub-run and gives the same table
    before = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    again = run_benchmark(data, cfg, out)
    assert again["settings"] == results["settings"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == before
    with pytest.raises(ValueError, match="another config"):
        run_benchmark(data, cfg.model_copy(update={"seeds": [5]}), out)
    # run_folds only selects folds: all of them continues the same benchmark, fold 0 is not trained again
    both = run_benchmark(data, cfg.model_copy(update={"run_folds": None}), out)
    assert both["settings"]["baseline"]["folds"] == 2 and both["settings"]["baseline"]["runs"] == 4
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_planned_budget_grows_with_the_data_and_keeps_a_floor() -> None:
    assert segmentation_steps(10, 8, 25) == SEG_STEP_FLOOR
    big = segmentation_steps(1000, 8, 25)
    assert big == math.ceil(SEG_PASSES * 1000 / 8 / 25) * 25 and big % 25 == 0


def test_generator_takes_the_data_size_and_a_misfit_is_refused(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3"), per_case=1, size=16, unlabeled=1)
    small = {k: v for k, v in TINY.items() if k.startswith("model.") and k != "model.image_size"}
    plain = load_config(DiffusionTrainConfig, None, small)
    seg = SegTrainConfig()
    assert fit_generator(plain, image_side(data), seg, "x").model.image_size == 16
    named = load_config(DiffusionTrainConfig, None, {**small, "model.image_size": 32})
    with pytest.raises(ConfigError, match=r"model.image_size 32 differs from the data's 16 px"):
        fit_generator(named, image_side(data), seg, "x")
    seg.train.patch_size = 16
    assert fit_generator(named, image_side(data), seg, "x").model.image_size == 32
    # the benchmark refuses before any training: nothing but its own folder is written
    cfg = parse_config(BenchmarkConfig, {"diffusion_overrides": {**TINY, "model.image_size": 32}})
    with pytest.raises(ConfigError, match="differs from the data's 16 px"):
        run_benchmark(data, cfg, tmp_path / "bench")
    assert not (tmp_path / "bench").exists()


def test_a_generator_killed_before_its_first_checkpoint_is_continued(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after its config and log were written but before any checkpoint, the fold's generator
    trains again from the start when the benchmark (or ``segsynth run``) is re-run, instead of being
    refused as a foreign run."""
    from segsynth.benchmark.run import train_generator
    from segsynth.data.loader import index_dataset
    from segsynth.engine.loop import Engine

    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), per_case=2, size=16, unlabeled=2)
    cfg = parse_config(BenchmarkConfig, {"diffusion_overrides": {**TINY, "train.steps": 2}})
    run = tmp_path / "fold_0" / "diffusion"
    ids = [ref.id for ref in index_dataset(data)]

    def killed(self: Engine, task: object) -> None:
        raise KeyboardInterrupt  # stands in for the SIGKILL: nothing of the checkpoint is written

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "save_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            train_generator(data, run, cfg, ids, None)
    assert (run / "config.yaml").is_file() and not (run / "checkpoints").exists()
    assert train_generator(data, run, cfg, ids, None) == run
    assert (run / "pipeline" / "model_index.json").is_file()
    assert [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()][-1] == 2
