"""``generator.pseudo_labels``: the fold generator also trains on its baseline's pseudo-labels of one
half of the unlabelled pool, and its synthetic sets draw style references from the other half only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SEG_OVERRIDES, write_tiny_dataset
from test_train_diffusion import TINY

import segsynth.diffusion.train as diffusion_train
from segsynth.benchmark import BenchmarkConfig
from segsynth.benchmark.generator_data import fill_unconfident, split_by_case
from segsynth.benchmark.run import fold_generator
from segsynth.config import ConfigError, parse_config
from segsynth.data.format import load_spec, save_spec
from segsynth.data.loader import index_dataset
from segsynth.diffusion.samples import TrainingSamples
from segsynth.seg.pseudo import IGNORE_STORED

CASES = ("p1", "p2", "p3", "p4", "p5", "p6")
#: unlabelled images: one of each labelled case, then two of each unlabelled-only case
UNLABELED_CASES = [*CASES, "u1", "u1", "u2", "u2", "u3", "u3"]


def _config(**changes: object) -> BenchmarkConfig:
    return parse_config(BenchmarkConfig, {
        "folds": 2, "run_folds": [0], "seeds": [0], "settings": ["ratio:0.5", "merge:0.6"], "controls": [],
        "low_label": 2, "val_fraction": 0.5,
        "diffusion_overrides": {**TINY, "train.steps": 2},
        "segmentation_overrides": TINY_SEG_OVERRIDES,
        "generation": {"n": 4, "steps": 2, "batch_size": 4, "per_mask": 1},
        "generator": {"pseudo_labels": True, "threshold": 0.01},
    } | changes)


def test_off_by_default_and_the_fraction_leaves_both_halves_a_case() -> None:
    assert not BenchmarkConfig().generator.pseudo_labels
    assert BenchmarkConfig().generator.threshold == BenchmarkConfig().self_training.threshold
    for fraction in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="reference_fraction"):
            parse_config(BenchmarkConfig, {"generator": {"reference_fraction": fraction}})
    with pytest.raises(ConfigError, match="generator.pseudo_label"):
        parse_config(BenchmarkConfig, {"generator": {"pseudo_label": True}})  # strict: a typo is named


def test_the_pool_splits_by_case_the_same_way_every_time(tmp_path: Path) -> None:
    cases = {f"{c}_{i}": c for c in ("a", "b", "c", "d") for i in range(3)}
    generator, references = split_by_case(cases, 0.5, (0, 0), tmp_path)
    assert (generator, references) == split_by_case(cases, 0.5, (0, 0), tmp_path)
    assert {cases[i] for i in generator}.isdisjoint({cases[i] for i in references})
    assert sorted(generator + references) == sorted(cases) and len({cases[i] for i in references}) == 2
    # at least one case each side, whatever the fraction
    assert len({cases[i] for i in split_by_case(cases, 0.01, (0, 1), tmp_path)[1]}) == 1
    assert len({cases[i] for i in split_by_case(cases, 0.99, (0, 1), tmp_path)[0]}) == 1
    with pytest.raises(ValueError, match=str(tmp_path)):
        split_by_case({"a_0": "a", "a_1": "a"}, 0.5, (0, 0), tmp_path)


def test_unconfident_pixels_take_the_nearest_confident_label() -> None:
    stored = np.array([[0, 0, IGNORE_STORED, IGNORE_STORED, 1, 1]], dtype=np.uint8)
    assert fill_unconfident(stored).tolist() == [[0, 0, 0, 1, 1, 1]]
    assert fill_unconfident(np.full((2, 2), IGNORE_STORED, dtype=np.uint8)) is None


def test_the_generator_never_trains_on_held_out_or_reference_images(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "data", cases=CASES, per_case=2, size=16, unlabeled=len(UNLABELED_CASES))
    spec = load_spec(data)
    save_spec(data, spec.model_copy(update={"unlabeled_cases": {f"u1_{i}": c for i, c in enumerate(UNLABELED_CASES)}}))
    seen: list[Path] = []

    class Watched(TrainingSamples):  # every image the denoiser's data can hand out
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            seen.extend(r.image_path.resolve() for d in self.datasets for r in d.refs)

    monkeypatch.setattr(diffusion_train, "TrainingSamples", Watched)
    out = tmp_path / "bench"
    run, synth, variants = fold_generator(data, out, _config(), 0)

    split = json.loads((out / "splits.json").read_text())["folds"][0]
    pool = json.loads((out / "fold_0/generator_pool.json").read_text())
    unlabeled = {r.id: r for r in index_dataset(data, "unlabeled")}
    held = set(split["val_cases"]) | set(split["test_cases"])
    generator_cases = {pool["cases"][i] for i in pool["generator"]}
    reference_cases = {pool["cases"][i] for i in pool["references"]}
    assert pool["generator"] and pool["references"] and not generator_cases & reference_cases
    assert not (generator_cases | reference_cases) & held
    # training saw the fold's labelled training+validation images and the generator half, nothing else
    labelled = {r.id: r for r in index_dataset(data)}
    record = json.loads((run / "training_data.json").read_text())
    pseudo = record["pseudo_labelled"]
    assert pseudo["teacher"] == str((out / "fold_0/seg/baseline/seed_0").resolve())
    assert sorted(pseudo["ids"]) == pool["generator"]  # threshold 0.01: every image has a confident pixel
    wanted = {labelled[i].image_path.resolve() for i in record["train_ids"]}
    wanted |= {unlabeled[i].image_path.resolve() for i in pool["generator"]}
    assert set(seen) == wanted
    assert not {p for p in seen} & {r.image_path.resolve() for r in unlabeled.values() if r.case_id in held}
    assert not {p for p in seen} & {unlabeled[i].image_path.resolve() for i in pool["references"]}
    assert sorted(record["train_ids"]) == sorted(split["train_ids"] + split["val_ids"])

    # both synthetic sets drew every reference from the reference half, and only from it
    for folder in (synth, variants):
        generation = json.loads((folder / "generation.json").read_text())
        assert Path(generation["config"]["styles"]) == (out / "fold_0/style_references").resolve()
        refs = [json.loads(line)["style_ids"] for line in (folder / "manifest.jsonl").read_text().splitlines()]
        assert refs and all(refs)
        for ids in refs:
            for ref in ids:
                case, stem = ref.split("/")
                assert stem in pool["references"] and pool["cases"][stem] == case
    copied = sorted(p.stem for p in (out / "fold_0/style_references").rglob("*.png"))
    assert copied == pool["references"]

    # a generator killed before its release continues on the same pairs
    shutil.rmtree(run / "pipeline")
    assert fold_generator(data, out, _config(), 0)[0] == run
    assert (run / "pipeline/model_index.json").is_file()
    assert json.loads((run / "training_data.json").read_text()) == record
