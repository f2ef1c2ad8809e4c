"""Folds a reviewer can trust: stratified by the classes each case holds, warnings that name the
cases without a class, and empty references left out of a class's mean instead of scored."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_dataset

from segsynth.artifacts.names import MASKS_DIR
from segsynth.benchmark import summarise
from segsynth.benchmark.foreground import case_class_pixels, class_strata, fold_warnings
from segsynth.data.io import write_image
from segsynth.data.loader import index_dataset
from segsynth.seg.metrics import MetricAccumulator
from segsynth.seg.splits import kfold_cases, make_folds

import torch


def test_folds_spread_a_rare_class_over_the_folds() -> None:
    """Two of eight cases hold class b: a plain shuffle puts both in one fold for some seeds,
    the stratified split never does, and without strata the folds are the old ones."""
    cases = [f"p{i}" for i in range(8)]
    strata = {c: ("a", "b") if c in ("p3", "p6") else ("a",) for c in cases}
    plain_together = 0
    for seed in range(20):
        plain = kfold_cases(cases, 2, seed)
        plain_together += any({"p3", "p6"} <= set(fold) for fold in plain)
        folds = kfold_cases(cases, 2, seed, strata)
        assert [len({"p3", "p6"} & set(fold)) for fold in folds] == [1, 1]
        assert sorted(len(f) for f in folds) == [4, 4]
        assert kfold_cases(cases, 2, seed, {c: () for c in cases}) == plain
    assert plain_together > 0  # the unstratified split does fail here, so the check above can fail


def _empty_case_dataset(root: Path) -> Path:
    data = write_tiny_dataset(root, cases=("p1", "p2", "p3", "p4"), per_case=1, size=16)
    write_image(data / MASKS_DIR / "p2_0.png", np.zeros((16, 16), dtype=np.uint8))
    return data


def test_cases_without_a_class_are_named_and_stratified(tmp_path: Path) -> None:
    data = _empty_case_dataset(tmp_path / "data")
    refs = index_dataset(data)
    pixels = case_class_pixels(data, refs)
    assert pixels["p2"]["lesion"] == 0 and pixels["p1"]["lesion"] > 0 and pixels["p2"]["_total"] == 256
    assert class_strata(pixels)["p2"] == () and class_strata(pixels)["p1"] == ("lesion",)
    # a case with a sliver of the class is "almost none"
    pixels["p3"]["lesion"] = 1
    splits = make_folds(refs, 2, 0, 0.5, None, class_strata(pixels))
    lines = [line for fold, split in enumerate(splits) for line in fold_warnings(split, fold, pixels)]
    held = {c: (f, part) for f, s in enumerate(splits) for part, cs in (("test", s.test_cases), ("validation", s.val_cases))
            for c in cs}
    fold, part = held["p2"]
    assert any(line.startswith(f"fold {fold}: {part} case p2 holds no 'lesion' pixel") for line in lines), lines
    assert any(f"case p3 holds almost no 'lesion' (1 px" in line for line in lines), lines
    assert not any("case p1" in line or "case p4" in line for line in lines)


def _run(fold: int, seed: int, setting: str, dice: dict[str, float], reference: dict[str, int]) -> dict:
    per_case = {c: {"dice": {"fg": d}, "iou": {"fg": d}, "hd95": {"fg": 1.0}} for c, d in dice.items()}
    return {"fold": fold, "seed": seed, "setting": setting, "run": "r",
            "metrics": {"classes": ["fg"], "per_case": per_case,
                        "case_reference_pixels": {c: {"fg": n} for c, n in reference.items()},
                        "training": {"steps": 4, "still_rising": False}}}


def test_an_empty_reference_is_left_out_of_the_mean_and_counted() -> None:
    """Case c3's reference holds no fg: scoring it 1 (both empty) would lift the baseline to 0.7."""
    reference = {"c1": 50, "c2": 40, "c3": 0}
    runs = [_run(0, 0, "baseline", {"c1": 0.5, "c2": 0.6, "c3": 1.0}, reference),
            _run(0, 0, "ratio:0.5", {"c1": 0.6, "c2": 0.7, "c3": 0.0}, reference)]
    results = summarise(runs, ["baseline", "ratio:0.5"], baseline="baseline")
    base = results["settings"]["baseline"]
    assert base["dice"]["mean"] == pytest.approx(0.55) and base["cases"] == 2 and base["empty_reference"] == 1
    assert results["paired"]["ratio:0.5"]["dice"]["mean"] == pytest.approx(0.1)
    assert results["paired"]["ratio:0.5"]["dice"]["n"] == 2
    assert base["per_class_dice"]["fg"] == pytest.approx(0.55)
    assert math.isnan(results["runs"][0]["case_dice"]["c3"])


def test_the_evaluation_records_each_cases_reference_pixels() -> None:
    acc = MetricAccumulator(["background", "a", "b"])
    target = torch.zeros(8, 8, dtype=torch.long)
    target[:2, :3] = 1
    acc.add("x_0", "x", target, target)
    acc.add("x_1", "x", target, target)
    acc.add("y_0", "y", torch.zeros(8, 8, dtype=torch.long), torch.zeros(8, 8, dtype=torch.long))
    assert acc.result()["case_reference_pixels"] == {"x": {"a": 12, "b": 0}, "y": {"a": 0, "b": 0}}
