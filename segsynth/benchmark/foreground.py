"""How much of each class every labelled case holds: for stratified folds and for honest warnings.

A fold whose test cases happen to hold none of a class cannot measure that class, and a
validation case without it cannot select a network for it. The benchmark therefore counts the
pixels of every class per case once, stratifies the folds by the classes each case holds
(:func:`segsynth.seg.splits.kfold_cases`) and warns, naming the cases, where a test or validation
case still holds (almost) none of a class. Such a case is left out of that class's mean Dice
(:mod:`segsynth.benchmark.summary`), never scored 0 or 1 for it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segsynth.artifacts.names import DATASET_JSON
from segsynth.benchmark.config import BenchmarkConfig
from segsynth.data.loader import SampleRef, SegDataset
from segsynth.seg.splits import Split, make_folds

#: A case holds "almost none" of a class when the class's share of its pixels is below this
#: fraction of the median share over the cases that hold the class.
SCARCE_SHARE = 0.1


def case_class_pixels(data: Path, refs: Sequence[SampleRef]) -> dict[str, dict[str, int]]:
    """``{case: {class: pixels, ..., "_total": pixels}}`` over the labelled images ``refs`` of ``data``."""
    dataset = SegDataset(data, refs=list(refs))
    names = dataset.spec.class_names
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {name: 0 for name in [*names[1:], "_total"]})
    for index, ref in enumerate(dataset.refs):
        _, mask = dataset.load_arrays(index)
        per_label = np.bincount(mask.ravel(), minlength=len(names))
        row = counts[ref.case_id]
        for label, name in enumerate(names[1:], start=1):
            row[name] += int(per_label[label])
        row["_total"] += int(mask.size)
    return dict(sorted(counts.items()))


def class_strata(pixels: Mapping[str, Mapping[str, int]]) -> dict[str, tuple[str, ...]]:
    """Each case's stratum: the foreground classes its masks hold (sorted names)."""
    return {case: tuple(sorted(c for c, n in row.items() if c != "_total" and n > 0)) for case, row in pixels.items()}


def benchmark_folds(data: Path, refs: Sequence[SampleRef], config: BenchmarkConfig) -> list[Split]:
    """The benchmark's folds of ``data``: by case, stratified by the classes each case holds (the
    one place they are made, so a planned budget and the benchmark see the same folds).

    Raises:
        ValueError: too few cases for the folds or for validation, naming ``dataset.json``.
    """
    strata = class_strata(case_class_pixels(data, refs))
    try:
        return make_folds(refs, config.folds, config.fold_seed, config.val_fraction, config.low_label, strata)
    except ValueError as exc:
        raise ValueError(f"{data / DATASET_JSON}: {exc}") from None


def scarce_classes(pixels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, str]]:
    """``{case: {class: why}}`` for every case that holds none, or almost none, of a class."""
    classes = sorted({c for row in pixels.values() for c in row if c != "_total"})
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for name in classes:
        shares = {case: row[name] / max(1, row["_total"]) for case, row in pixels.items()}
        held = [s for s in shares.values() if s > 0]
        typical = float(np.median(held)) if held else 0.0
        for case, share in shares.items():
            if share == 0:
                out[case][name] = f"no {name!r} pixel"
            elif share < SCARCE_SHARE * typical:
                out[case][name] = (f"almost no {name!r} ({pixels[case][name]} px, {100 * share:.2f}% of its pixels; "
                                   f"median case {100 * typical:.2f}%)")
    return dict(out)


def fold_warnings(split: Split, fold: int, pixels: Mapping[str, Mapping[str, int]]) -> list[str]:
    """One line per test or validation case of ``fold`` that holds (almost) none of a class."""
    scarce = scarce_classes(pixels)
    lines = []
    for part, cases in (("test", split.test_cases), ("validation", split.val_cases)):
        for case in cases:
            for name, why in sorted(scarce.get(case, {}).items()):
                empty = pixels[case][name] == 0
                effect = ""
                if empty:
                    effect = (" (left out of that class's mean Dice)" if part == "test"
                              else " (model selection cannot see that class there)")
                lines.append(f"fold {fold}: {part} case {case} holds {why}{effect}")
    return lines
