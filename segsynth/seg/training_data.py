"""The data a segmentation run trains and validates on, and the checks that keep it honest.

The real labelled samples are split by case (:func:`resolve_split`); synthetic sets lose the samples
drawn from validation or test layouts and are refused if they could still leak
(:func:`check_no_leakage`), as are pseudo-labelled images of held-out cases
(:func:`check_pseudo_leakage`). :func:`load_training_data` does all of it for ``train_seg``, and
:func:`split_record` is what the run folder's ``split.json`` records of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segsynth.artifacts.names import DATASET_JSON
from segsynth.data.format import DatasetFormatError
from segsynth.data.loader import SampleRef, SegDataset, index_dataset
from segsynth.io.hashing import data_hash
from segsynth.seg.config import SegTrainConfig
from segsynth.seg.pseudo import PseudoLabelledSet, load_pseudo_set
from segsynth.seg.splits import Split, hold_out_cases, ids_of_cases, low_label_cases, make_split
from segsynth.seg.synthetic_sets import SyntheticTrainingSet, load_synthetic_set


def resolve_split(
    refs: Sequence[SampleRef],
    cfg: SegTrainConfig,
    train_ids: Sequence[str] | None = None,
    val_ids: Sequence[str] | None = None,
) -> Split:
    """Train/validation/test split of the real labelled samples, always by case.

    * no ids: ``split.test_fraction`` of the cases become test, an optional ``split.low_label``
      subset of the rest is kept, and ``split.val_fraction`` of that becomes validation (cases
      dropped by ``low_label`` are used nowhere);
    * ``train_ids`` only: validation cases are drawn from the cases of ``train_ids``; test is every
      sample of a case that is neither train nor validation;
    * ``val_ids`` too: used as given (their cases must not meet the training cases).

    Raises:
        ValueError: unknown ids, a case on two sides, or too few cases for a validation split.
    """
    seed = cfg.split.seed
    all_cases = sorted({r.case_id for r in refs})
    if train_ids is None and val_ids is None:
        pool, test_cases = all_cases, []
        if cfg.split.test_fraction > 0:
            pool, test_cases = hold_out_cases(all_cases, cfg.split.test_fraction, seed, what="test")
        if cfg.split.low_label is not None:
            pool = low_label_cases(pool, cfg.split.low_label, seed + 2)
        train_cases, val_cases = hold_out_cases(pool, cfg.split.val_fraction, seed + 1, what="validation")
        return make_split(
            refs, ids_of_cases(refs, train_cases), ids_of_cases(refs, val_cases), ids_of_cases(refs, test_cases)
        )
    case_of = {r.id: r.case_id for r in refs}
    if val_ids is None:
        unknown = [i for i in train_ids or () if i not in case_of]
        if unknown:
            raise ValueError(f"train: unknown sample ids {unknown[:5]}")
        pool = sorted({case_of[i] for i in train_ids or ()})
        kept, val_cases = hold_out_cases(pool, cfg.split.val_fraction, seed + 1, what="validation")
        train = sorted(i for i in train_ids or () if case_of[i] in set(kept))
        val = ids_of_cases(refs, val_cases)
    else:
        val = sorted(val_ids)
        unknown = [i for i in val if i not in case_of]
        if unknown:
            raise ValueError(f"validation: unknown sample ids {unknown[:5]}")
        val_cases = {case_of[i] for i in val}
        train = sorted(train_ids) if train_ids is not None else sorted(i for i in case_of if case_of[i] not in val_cases)
    used = {case_of[i] for i in [*train, *val] if i in case_of}
    test = sorted(i for i, c in case_of.items() if c not in used)
    return make_split(refs, train, val, test)


def check_no_leakage(split: Split, refs: Sequence[SampleRef], synthetic: Sequence[SyntheticTrainingSet]) -> None:
    """Refuse a run whose validation could see a test case or a synthetic image.

    Raises:
        ValueError: a validation case that is also a test case, or a synthetic set that contains a
            validation or test image file, or a synthetic sample made from a held-out layout.
    """
    shared = set(split.val_cases) & set(split.test_cases)
    if shared:
        raise ValueError(f"validation and test share cases {sorted(shared)[:5]}")
    by_id = {r.id: r for r in refs}
    held_out = {by_id[i].image_path.resolve() for i in [*split.val_ids, *split.test_ids]}
    held_ids = set(split.val_ids) | set(split.test_ids)
    for s in synthetic:
        paths = {r.image_path.resolve() for r in s.dataset.refs}
        if paths & held_out:
            example = sorted(paths & held_out)[0]
            raise ValueError(f"{s.root}: synthetic set contains real validation/test image {example}")
        leaked = [r.id for r, lid in zip(s.dataset.refs, s.layout_ids, strict=True) if lid in held_ids]
        if leaked:
            raise ValueError(f"{s.root}: samples {leaked[:5]} use validation/test layouts")


def check_pseudo_leakage(split: Split, pseudo: Sequence[PseudoLabelledSet]) -> None:
    """Refuse a pseudo-labelled set holding an image of a validation or test case: self-training
    must never have looked at the images it is scored or selected on.

    Raises:
        ValueError: naming the set and the cases.
    """
    held = set(split.val_cases) | set(split.test_cases)
    for s in pseudo:
        leaked = sorted({case for case in s.record["cases"].values() if case in held})
        if leaked:
            raise ValueError(f"{s.root}: pseudo-labelled images of validation/test cases {leaked[:5]}")


def check_sizes(real: SegDataset, synthetic: Sequence[SyntheticTrainingSet], patch_size: int | None) -> None:
    """Without ``patch_size`` a batch stacks whole images: refuse a synthetic set of another size
    up front instead of failing at the first mixed batch."""
    if patch_size is not None or not synthetic or not len(real):
        return
    shape = real.load_arrays(0)[0].shape
    for s in synthetic:
        other = s.dataset.load_arrays(0)[0].shape
        if other != shape:
            raise DatasetFormatError(
                f"{s.dataset.refs[0].image_path}: shape {other} differs from the real training images {shape}; "
                "generate the set at the real image size or set train.patch_size"
            )


@dataclass
class TrainingData:
    """What one segmentation run trains and validates on, checked.

    Attributes:
        data: the real dataset folder.
        refs: all its labelled samples.
        split: the split of ``refs`` by case.
        real: the real training samples.
        val: the validation samples.
        synthetic_sets: the synthetic sets, without the samples drawn from held-out layouts.
        pseudo_sets: the pseudo-labelled sets.
    """

    data: Path
    refs: list[SampleRef]
    split: Split
    real: SegDataset
    val: SegDataset
    synthetic_sets: list[SyntheticTrainingSet]
    pseudo_sets: list[PseudoLabelledSet]

    @property
    def extra_sets(self) -> list:
        """The sets mixed in with the real data: synthetic first, then pseudo-labelled."""
        return [*self.synthetic_sets, *self.pseudo_sets]


def load_training_data(
    data: Path,
    cfg: SegTrainConfig,
    synthetic: Sequence[str | Path],
    train_ids: Sequence[str] | None,
    val_ids: Sequence[str] | None,
    pseudo_labelled: Sequence[str | Path],
) -> TrainingData:
    """Index, verify and split ``data``, open the synthetic and pseudo-labelled sets, and refuse any
    leak of validation or test cases into training (arguments as :func:`segsynth.seg.train.train_seg`).

    Raises:
        ValueError / DatasetFormatError: no labelled pairs, a bad split, a set that leaks or has
            nothing left to train on, or pseudo-labelled sets with a strategy other than ratio or concat.
    """
    refs = index_dataset(data)
    if not refs:
        raise ValueError(f"{data}: no labelled image/mask pairs")
    SegDataset(data, refs=refs).verify()  # every labelled file, before anything is written
    try:
        split = resolve_split(refs, cfg, train_ids, val_ids)
    except ValueError as exc:
        raise ValueError(f"{data / DATASET_JSON}: {exc}") from None
    by_id = {r.id: r for r in refs}
    real = SegDataset(data, refs=[by_id[i] for i in split.train_ids])
    val = SegDataset(data, refs=[by_id[i] for i in split.val_ids])
    held = set(split.val_ids) | set(split.test_ids)
    loaded = [load_synthetic_set(root, real, layouts_independent=cfg.mix.layouts_independent) for root in synthetic]
    for s in loaded:
        s.dataset.verify()
    synthetic_sets = [s.without_layouts(held) for s in loaded]
    for whole, kept in zip(loaded, synthetic_sets):
        if len(whole) and not len(kept):
            cases = sorted({by_id[i].case_id for i in set(whole.layout_ids) & held})
            raise DatasetFormatError(
                f"{whole.root}: all {len(whole)} synthetic samples were drawn from layouts of validation or test "
                f"cases ({', '.join(cases)}), which never train; generate from the training cases' masks"
            )
    check_no_leakage(split, refs, synthetic_sets)
    pseudo_sets = [load_pseudo_set(root, data) for root in pseudo_labelled]
    check_pseudo_leakage(split, pseudo_sets)
    if pseudo_sets and cfg.mix.strategy not in ("ratio", "concat"):
        raise ValueError(f"pseudo-labelled sets mix in with mix.strategy ratio or concat, not {cfg.mix.strategy!r}")
    training = TrainingData(data, refs, split, real, val, synthetic_sets, pseudo_sets)
    check_sizes(real, training.extra_sets, cfg.train.patch_size)
    return training


def split_record(training: TrainingData) -> dict[str, Any]:
    """The run's ``split.json``: data root, split, the synthetic (and pseudo-labelled) sets used, and
    a hash of the bytes trained on."""
    data, synthetic_sets, pseudo_sets = training.data, training.synthetic_sets, training.pseudo_sets
    record = {
        "data_root": str(data.resolve()),
        **training.split.model_dump(mode="json"),
        "synthetic": [
            {"root": str(s.root.resolve()), "used": len(s), "excluded_held_out_layouts": s.excluded, "manifest": s.has_manifest}
            for s in synthetic_sets
        ],
        # the bytes, not only the ids: other files under the same names must not resume this run
        "data_sha256": data_hash([SegDataset(data, refs=training.refs), *(s.dataset for s in synthetic_sets)]),
    }
    if pseudo_sets:  # only then: split.json of every other run stays as it was
        record["pseudo_labelled"] = [
            {"root": str(s.root.resolve()), "used": len(s), "teacher": s.record["teacher"], "threshold": s.record["threshold"]}
            for s in pseudo_sets
        ]
    return record
