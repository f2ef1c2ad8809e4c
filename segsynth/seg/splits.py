"""Splits by case (patient, slide, volume), fixed by seed and saved to JSON.

Every split of real data is made over *case ids*, never over images, so slices or tiles of one
patient can never sit on both sides of a train/validation/test boundary. Synthetic images never
enter a split: they are added to training only (see :mod:`segsynth.seg.train`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from segsynth.artifacts.schemas import Split, validate_record
from segsynth.data.loader import SampleRef
from segsynth.io.atomic import atomic_write_json


def _cases_of(refs: Sequence[SampleRef], ids: Iterable[str], what: str) -> list[str]:
    by_id = {r.id: r.case_id for r in refs}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{what}: unknown sample ids {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return sorted({by_id[i] for i in ids})


def ids_of_cases(refs: Sequence[SampleRef], cases: Iterable[str]) -> list[str]:
    """Sample ids (sorted) of every image that belongs to one of ``cases``."""
    wanted = set(cases)
    return sorted(r.id for r in refs if r.case_id in wanted)


def make_split(
    refs: Sequence[SampleRef], train_ids: Sequence[str], val_ids: Sequence[str], test_ids: Sequence[str] = ()
) -> Split:
    """Build a :class:`Split` from explicit ids, filling in their cases and checking that no case
    is shared between two parts.

    Raises:
        ValueError: an unknown id, an empty train/val part, or a case on two sides.
    """
    fields = {
        "train_ids": sorted(train_ids),
        "val_ids": sorted(val_ids),
        "test_ids": sorted(test_ids),
        "train_cases": _cases_of(refs, train_ids, "train"),
        "val_cases": _cases_of(refs, val_ids, "validation"),
        "test_cases": _cases_of(refs, test_ids, "test"),
    }
    try:
        return Split.model_validate(fields)
    except ValidationError as exc:
        raise ValueError("; ".join(str(e["ctx"]["error"]) if "ctx" in e else e["msg"] for e in exc.errors())) from None


def _shuffled(cases: Iterable[str], seed: int) -> list[str]:
    ordered = sorted(set(cases))
    return [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]


def hold_out_cases(cases: Sequence[str], fraction: float, seed: int, what: str = "held-out") -> tuple[list[str], list[str]]:
    """Split ``cases`` into ``(kept, held)`` with ``max(1, round(fraction * n))`` held cases.

    Raises:
        ValueError: ``fraction`` outside (0, 1) or fewer than 2 cases (nothing would be kept).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{what} fraction must be in (0, 1), got {fraction}")
    order = _shuffled(cases, seed)
    if len(order) < 2:
        raise ValueError(f"need at least 2 cases to hold out a {what} case, got {len(order)}")
    n_held = min(len(order) - 1, max(1, round(fraction * len(order))))
    return sorted(order[n_held:]), sorted(order[:n_held])


def low_label_cases(cases: Sequence[str], amount: float | int, seed: int) -> list[str]:
    """Keep a seeded subset of ``cases``: a fraction (float in (0, 1]) or a count (int >= 1).

    Simulates a study with few labelled patients; at least one case is always kept.
    """
    order = _shuffled(cases, seed)
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ValueError(f"low-label amount must be a fraction or a case count, got {amount!r}")
    if isinstance(amount, float):
        if not 0.0 < amount <= 1.0:
            raise ValueError(f"low-label fraction must be in (0, 1], got {amount}")
        count = max(1, round(amount * len(order)))
    else:
        if not 1 <= amount <= len(order):
            raise ValueError(f"low-label case count must be in 1..{len(order)}, got {amount}")
        count = amount
    return sorted(order[:count])


def stratified_order(cases: Iterable[str], seed: int, strata: Mapping[str, Hashable] | None = None) -> list[str]:
    """The distinct ``cases`` in a seeded order where each stratum's cases stand together.

    Dealing this order round-robin into k folds spreads every stratum over the folds as evenly as
    its size allows (a stratum of n cases gives each fold ``n // k`` or ``n // k + 1``), while the
    folds stay of near-equal size. Without ``strata`` (or with one stratum) it is the plain seeded
    shuffle, so folds made before stratification existed are made again unchanged.
    """
    if strata is None:
        return _shuffled(cases, seed)
    groups: dict[str, list[str]] = defaultdict(list)
    for case in sorted(set(cases)):
        groups[repr(strata.get(case))].append(case)
    return [case for key in sorted(groups) for case in _shuffled(groups[key], seed)]


def kfold_cases(
    cases: Sequence[str], k: int, seed: int, strata: Mapping[str, Hashable] | None = None
) -> list[list[str]]:
    """Partition the distinct ``cases`` into ``k`` seeded folds of near-equal size (test cases per fold).

    Args:
        strata: optional label per case (e.g. the classes present in its masks): every stratum is
            spread over the folds as evenly as its size allows (:func:`stratified_order`), so no
            fold's test cases lack a class that other folds' hold several times.

    Raises:
        ValueError: ``k < 2`` or fewer distinct cases than folds.
    """
    order = stratified_order(cases, seed, strata)
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if len(order) < k:
        raise ValueError(f"cannot make {k} folds by case from {len(order)} cases; use k <= {len(order)}")
    return [sorted(order[i::k]) for i in range(k)]


def make_folds(
    refs: Sequence[SampleRef],
    k: int,
    seed: int = 0,
    val_fraction: float = 0.2,
    low_label: float | int | None = None,
    strata: Mapping[str, Hashable] | None = None,
) -> list[Split]:
    """``k`` cross-validation splits of a labelled dataset, all by case.

    Each fold's test cases are one part of :func:`kfold_cases` (stratified by ``strata`` when
    given, e.g. the classes each case holds); from the remaining cases an
    optional low-label subset is kept (:func:`low_label_cases`), and validation cases are drawn
    from those (so validation is labelled data the study would really have).

    Raises:
        ValueError: fewer cases than folds, or too few training cases left for validation.
    """
    all_cases = sorted({r.case_id for r in refs})
    splits = []
    for fold, test_cases in enumerate(kfold_cases(all_cases, k, seed, strata)):
        pool = [c for c in all_cases if c not in set(test_cases)]
        if low_label is not None:
            pool = low_label_cases(pool, low_label, seed + fold)
        train_cases, val_cases = hold_out_cases(pool, val_fraction, seed + fold, what=f"fold {fold} validation")
        splits.append(
            make_split(refs, ids_of_cases(refs, train_cases), ids_of_cases(refs, val_cases), ids_of_cases(refs, test_cases))
        )
    return splits


def save_splits(path: str | Path, splits: Sequence[Split], seed: int) -> Path:
    """Write folds as ``{"seed": s, "folds": [...]}`` (sorted keys: same folds, same bytes)."""
    return atomic_write_json(path, {"seed": seed, "folds": [s.model_dump(mode="json") for s in splits]})


def load_splits(path: str | Path) -> list[Split]:
    """Read what :func:`save_splits` wrote.

    Raises:
        ValueError: unreadable JSON or an invalid fold, naming the file and the fold.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        folds = data["folds"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a splits file ({exc})") from None
    return [validate_record(Split, fold, f"{path}: folds.{i}") for i, fold in enumerate(folds)]
