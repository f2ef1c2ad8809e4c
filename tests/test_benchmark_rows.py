"""The rows users need: synthetic data with heavy augmentation, self-training on the unlabelled
pool, and the headline gain over each fold's best free control, chosen on validation cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY_SEG_OVERRIDES, write_tiny_dataset
from monai.losses import DiceCELoss
from test_train_diffusion import TINY

from segsynth.benchmark import BenchmarkConfig, markdown_table, run_benchmark, summarise
from segsynth.benchmark.selftrain import pseudo_pool
from segsynth.config import ConfigError, parse_config
from segsynth.data.format import load_spec, save_spec
from segsynth.seg.loss import IGNORE_LABEL, IgnoringDiceCELoss
from segsynth.seg.splits import make_split
from segsynth.data.loader import index_dataset

CASES = ("p1", "p2", "p3", "p4", "p5", "p6")


def _data(root: Path) -> Path:
    """Six labelled cases and seven unlabelled images: one of each labelled case, one of case u1."""
    data = write_tiny_dataset(root, cases=CASES, per_case=2, size=16, unlabeled=7)
    spec = load_spec(data)
    save_spec(data, spec.model_copy(update={"unlabeled_cases": {f"u1_{i}": c for i, c in enumerate([*CASES, "u1"])}}))
    return data


def test_synthetic_with_heavy_aug_and_self_training_train_the_baselines_budget(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = _data(tmp_path / "data")
    cfg = parse_config(BenchmarkConfig, {
        "folds": 2, "run_folds": [0], "seeds": [0], "settings": ["ratio:0.5", "ratio:0.5+heavy-aug"],
        "controls": ["heavy_augmentation", "self_training"], "low_label": 2, "val_fraction": 0.5,
        "self_training": {"threshold": 0.55, "mix": "concat"},
        "diffusion_overrides": {**TINY, "train.steps": 2},
        "segmentation_overrides": TINY_SEG_OVERRIDES,
        "generation": {"n": 4, "steps": 2, "batch_size": 4, "per_mask": 2},
    })
    out = tmp_path / "bench"
    results = run_benchmark(data, cfg, out)
    names = ["baseline", "baseline+heavy-aug", "self-training", "ratio:0.5", "ratio:0.5+heavy-aug"]
    assert results["order"] == names
    runs = {p.parent.parent.name: p.parent for p in out.glob("fold_0/seg/*/seed_0/train_log.jsonl")}
    assert set(runs) == {"baseline", "baseline_heavy-aug", "self-training", "ratio_0.5", "ratio_0.5_heavy-aug"}
    # the same steps of the same batch, validated at the same steps, for every row
    for name, run in runs.items():
        rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [2, 4, 6], name
        assert all(r["real_examples"] + r["synthetic_examples"] == 4 for r in rows), name
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["train"]["steps"] == 6 and saved["train"]["batch_size"] == 2, name
    # one factor each: heavy augmentation is all that separates ratio:0.5+heavy-aug from ratio:0.5
    heavy = yaml.safe_load((runs["ratio_0.5_heavy-aug"] / "config.yaml").read_text())
    plain = yaml.safe_load((runs["ratio_0.5"] / "config.yaml").read_text())
    assert heavy["train"]["augment"] == "heavy" and heavy["mix"] == plain["mix"] == {**plain["mix"], "strategy": "ratio"}
    assert {**heavy, "train": {**heavy["train"], "augment": "light"}} == plain
    # self-training learnt from the pseudo-labels its own seed's baseline made, of images of no held-out case
    split = json.loads((out / "splits.json").read_text())["folds"][0]
    held = set(split["val_cases"]) | set(split["test_cases"])
    record = json.loads((out / "fold_0/pseudo/seed_0/pseudo_labels.json").read_text())
    assert record["teacher"] == str((out / "fold_0/seg/baseline/seed_0").resolve())
    assert record["ids"] and not {record["cases"][i] for i in record["ids"]} & held
    # every image of a labelled case other than the fold's training case is left out, and named
    assert sorted(record["excluded"]) == sorted(f"u1_{i}" for i, c in enumerate(CASES) if c not in split["train_cases"])
    assert sorted(record["ids"]) == sorted(["u1_6", *(f"u1_{i}" for i, c in enumerate(CASES) if c in split["train_cases"])])
    used = json.loads((runs["self-training"] / "split.json").read_text())["pseudo_labelled"]
    assert used[0]["used"] == len(record["ids"]) and used[0]["threshold"] == 0.55
    # the headline: each synthetic row against the fold's better free control
    assert results["best_control"]["0"]["chosen"] in ("baseline+heavy-aug", "self-training")
    assert "vs_best_control" in results["paired"]["ratio:0.5+heavy-aug"]
    assert "vs_best_control" not in results["paired"]["self-training"]
    assert all("val_dice" in r for r in results["runs"])
    assert "Δ vs best control" in markdown_table(results)


def test_the_pool_never_holds_an_image_of_a_validation_or_test_case(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    refs = index_dataset(data)
    split = make_split(refs, [r.id for r in refs if r.case_id == "p1"], [r.id for r in refs if r.case_id == "p2"],
                       [r.id for r in refs if r.case_id in ("p3", "p4")])
    pool, excluded = pseudo_pool(index_dataset(data, "unlabeled"), split, CASES)
    assert pool == ["u1_0", "u1_6"]
    assert excluded == {"u1_1": "image of validation case p2", "u1_2": "image of test case p3",
                        "u1_3": "image of test case p4", "u1_4": "image of labelled case outside the fold's training "
                        "cases p5", "u1_5": "image of labelled case outside the fold's training cases p6"}


def test_ignored_pixels_add_nothing_to_the_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    loss = IgnoringDiceCELoss()
    plain = DiceCELoss(to_onehot_y=True, softmax=True)
    assert loss(logits, target).item() == pytest.approx(plain(logits, target).item())
    assert loss.masked(logits, target).item() == pytest.approx(plain(logits, target).item(), rel=1e-5)
    ignored = target.clone()
    ignored[0, 0, :4] = IGNORE_LABEL
    value = loss(logits, ignored)
    value.backward()
    assert torch.all(logits.grad[0, :, :4] == 0) and logits.grad[0, :, 4:].abs().sum() > 0
    other = logits.detach().clone()
    other[0, :, :4] = 100 * torch.randn(3, 4, 8)
    assert loss(other, ignored).item() == pytest.approx(value.item())


def _run(fold: int, seed: int, setting: str, test: dict[str, float], val: float) -> dict[str, Any]:
    per_case = {c: {"dice": {"fg": d}, "iou": {"fg": d}, "hd95": {"fg": 1.0}} for c, d in test.items()}
    return {"fold": fold, "seed": seed, "setting": setting, "run": "r",
            "metrics": {"classes": ["fg"], "per_case": per_case, "model": {"step": 4, "val_dice": val},
                        "training": {"steps": 4, "still_rising": False}}}


def test_the_best_control_is_chosen_on_validation_cases_only() -> None:
    """Fold 0: heavy-aug validates better but tests worse; fold 1 the other way round. The
    headline compares with the validation choice (a test-set choice would give +0.0 here)."""
    runs = []
    for seed in (0, 1):
        runs += [
            _run(0, seed, "baseline", {"a": 0.4, "b": 0.4}, 0.5),
            _run(0, seed, "baseline+heavy-aug", {"a": 0.5, "b": 0.5}, 0.8),
            _run(0, seed, "self-training", {"a": 0.7, "b": 0.7}, 0.6),
            _run(0, seed, "ratio:0.5", {"a": 0.7, "b": 0.7}, 0.7),
            _run(1, seed, "baseline", {"c": 0.4, "d": 0.4}, 0.5),
            _run(1, seed, "baseline+heavy-aug", {"c": 0.6, "d": 0.6}, 0.55),
            _run(1, seed, "self-training", {"c": 0.5, "d": 0.5}, 0.65),
            _run(1, seed, "ratio:0.5", {"c": 0.6, "d": 0.6}, 0.7),
        ]
    names = ["baseline", "baseline+heavy-aug", "self-training", "ratio:0.5"]
    results = summarise(runs, names, baseline="baseline", controls=["baseline+heavy-aug", "self-training"])
    assert results["best_control"]["0"]["chosen"] == "baseline+heavy-aug"
    assert results["best_control"]["1"]["chosen"] == "self-training"
    assert results["best_control"]["0"]["val_dice"] == {"baseline+heavy-aug": 0.8, "self-training": 0.6}
    best = results["paired"]["ratio:0.5"]["vs_best_control"]
    assert best["n"] == 4 and best["mean"] == pytest.approx(0.15)  # (0.2, 0.2, 0.1, 0.1)
    table = markdown_table(results)
    assert "fold 0: baseline+heavy-aug, fold 1: self-training" in table
    assert "| ratio:0.5 | 4 | 4 | 0.650 ± 0.058 | +0.150 |" in table


def test_config_reads_heavy_aug_settings_and_the_self_training_recipe() -> None:
    cfg = parse_config(BenchmarkConfig, {"settings": ["ratio:0.5+heavy-aug", "merge:0.6+heavy-aug"]})
    assert cfg.settings == ["ratio:0.5+heavy-aug", "merge:0.6+heavy-aug"]
    with pytest.raises(ConfigError, match="baseline"):
        parse_config(BenchmarkConfig, {"settings": ["none+heavy-aug"]})
    with pytest.raises(ConfigError, match="self_training.mix"):
        parse_config(BenchmarkConfig, {"self_training": {"mix": "merge:0.6"}})


def test_a_fold_with_nothing_to_pseudo_label_is_refused_before_any_work(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", cases=CASES, per_case=1, size=16, unlabeled=2)
    spec = load_spec(data)
    save_spec(data, spec.model_copy(update={"unlabeled_cases": {"u1_0": "p1", "u1_1": "p1"}}))
    cfg = parse_config(BenchmarkConfig, {"folds": 2, "low_label": 2, "val_fraction": 0.5})
    with pytest.raises(ValueError, match="self_training control has nothing to pseudo-label"):
        run_benchmark(data, cfg, tmp_path / "bench")
    assert not (tmp_path / "bench").exists()
    # without the control the same data is fine up to training (the styles still come from unlabeled/)
    from segsynth.benchmark.run import check_inputs

    check_inputs(data, cfg.model_copy(update={"controls": ["heavy_augmentation"]}))
