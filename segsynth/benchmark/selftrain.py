"""The ``self_training`` control's data: which unlabelled images a fold may pseudo-label, and the set.

Kept apart from the runner so the benchmark's runs and its budget calibration
(:mod:`segsynth.benchmark.calibrate`) make pseudo-labelled sets the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from segsynth.artifacts.names import PSEUDO_JSON, UNLABELED_DIR
from segsynth.benchmark.config import BenchmarkConfig
from segsynth.data.loader import SampleRef, index_dataset
from segsynth.seg.pseudo import pseudo_label
from segsynth.seg.splits import Split


def pseudo_pool(unlabeled: Iterable[SampleRef], split: Split, labelled_cases: Iterable[str] = ()
                ) -> tuple[list[str], dict[str, str]]:
    """The unlabelled images self-training may label in a fold, and those it may not (with why).

    An image of a validation or test case is never labelled, so it never trains; nor is an image
    of a labelled case the fold leaves out (``low_label``), which the segmentation run counts
    among its held-out cases.
    """
    unlabeled = list(unlabeled)
    held = {c: "labelled case outside the fold's training cases" for c in labelled_cases}
    held |= {**{c: "validation case" for c in split.val_cases}, **{c: "test case" for c in split.test_cases}}
    for case in split.train_cases:
        held.pop(case, None)
    pool = [r.id for r in unlabeled if r.case_id not in held]
    excluded = {r.id: f"image of {held[r.case_id]} {r.case_id}" for r in unlabeled if r.case_id in held}
    return pool, excluded


def pseudo_labelled_set(data: Path, folder: Path, teacher: Path, split: Split, fold: int, seed: int,
                        cfg: BenchmarkConfig) -> Path:
    """The fold's pseudo-labelled set in ``folder``, labelled by the run ``teacher`` (made once, then reused).

    Raises:
        ValueError: the fold has no unlabelled image it may label.
    """
    if (folder / PSEUDO_JSON).is_file():
        return folder
    labelled_cases = {r.case_id for r in index_dataset(data)}
    pool, excluded = pseudo_pool(index_dataset(data, "unlabeled"), split, labelled_cases)
    if not pool:
        raise ValueError(f"{data / UNLABELED_DIR}: fold {fold} has no unlabelled image outside its validation, test "
                         "and left-out labelled cases to pseudo-label (self_training control)")
    return pseudo_label(teacher, data, pool, folder, cfg.self_training.threshold,
                        extra={"fold": fold, "seed": seed, "excluded": excluded})
