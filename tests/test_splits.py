"""Case-level splits: k folds, low-label subsets, validation inside training, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest

from segsynth.data.loader import SampleRef
from segsynth.seg.splits import (
    hold_out_cases,
    kfold_cases,
    load_splits,
    low_label_cases,
    make_folds,
    make_split,
    save_splits,
)


def refs(cases: int, per_case: int = 3) -> list[SampleRef]:
    return [
        SampleRef(f"p{c:02d}_{i}", f"p{c:02d}", Path(f"p{c:02d}_{i}.png"), Path(f"p{c:02d}_{i}.png"))
        for c in range(cases)
        for i in range(per_case)
    ]


def test_kfold_partitions_cases_reproducibly() -> None:
    cases = [f"p{c}" for c in range(10)]
    folds = kfold_cases(cases, 3, seed=7)
    flat = [c for fold in folds for c in fold]
    assert sorted(flat) == sorted(cases) and len(flat) == len(set(flat))
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert folds == kfold_cases(list(reversed(cases)), 3, seed=7)  # input order does not matter
    assert folds != kfold_cases(cases, 3, seed=8)


def test_fewer_cases_than_folds_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cannot make 5 folds by case from 3 cases"):
        kfold_cases(["a", "b", "c", "a"], 5, seed=0)
    with pytest.raises(ValueError, match="k must be >= 2"):
        kfold_cases(["a", "b"], 1, seed=0)


def test_make_folds_keeps_every_case_on_one_side() -> None:
    data = refs(9)
    folds = make_folds(data, k=3, seed=1, val_fraction=0.2)
    case_of = {r.id: r.case_id for r in data}
    tested = []
    for split in folds:
        assert {case_of[i] for i in split.train_ids} == set(split.train_cases)
        assert {case_of[i] for i in split.val_ids} == set(split.val_cases)
        sides = [set(split.train_cases), set(split.val_cases), set(split.test_cases)]
        assert sum(len(s) for s in sides) == len(set().union(*sides)) == 9
        assert len(split.val_cases) == 1  # round(0.2 * 6)
        tested += split.test_cases
    assert sorted(tested) == sorted(set(case_of.values()))


def test_low_label_fraction_and_count() -> None:
    cases = [f"p{c}" for c in range(10)]
    assert len(low_label_cases(cases, 0.3, seed=0)) == 3
    assert len(low_label_cases(cases, 4, seed=0)) == 4
    assert set(low_label_cases(cases, 0.3, seed=0)) <= set(cases)
    for bad in (0.0, 1.5, 0, 11, True):
        with pytest.raises(ValueError):
            low_label_cases(cases, bad, seed=0)
    folds = make_folds(refs(10), k=2, seed=0, val_fraction=0.3, low_label=4)
    for split in folds:
        assert len(split.train_cases) + len(split.val_cases) == 4 and len(split.test_cases) == 5


def test_validation_needs_two_cases_and_disjoint_parts() -> None:
    with pytest.raises(ValueError, match="need at least 2 cases"):
        hold_out_cases(["only"], 0.2, seed=0, what="validation")
    kept, held = hold_out_cases(["a", "b"], 0.9, seed=0)
    assert len(kept) == 1 and len(held) == 1
    data = refs(3)
    with pytest.raises(ValueError, match="both the val and the test split"):
        make_split(data, ["p00_0"], ["p01_0"], ["p01_1"])
    with pytest.raises(ValueError, match="unknown sample ids"):
        make_split(data, ["nope"], ["p01_0"])


def test_splits_round_trip_through_json(tmp_path: Path) -> None:
    folds = make_folds(refs(6), k=3, seed=2)
    path = save_splits(tmp_path / "splits.json", folds, seed=2)
    assert load_splits(path) == folds
    first = path.read_bytes()
    save_splits(path, make_folds(refs(6), k=3, seed=2), seed=2)
    assert path.read_bytes() == first
    path.write_text('{"folds": [{"train_ids": []}]}')
    with pytest.raises(ValueError, match="splits.json: folds.0"):
        load_splits(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="not a splits file"):
        load_splits(path)
