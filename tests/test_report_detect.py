"""Folder detection: every kind from the files its stage writes, and the kinds that share names.

An autoencoder run and a segmentation run both write ``config.yaml`` and ``train_log.jsonl``, and
autoencoder runs written before the image split had a name of its own hold it as ``split.json``,
the segmentation split's name; so detection must tell them apart by what else each writes and by
what the split holds. The minimal folders here are built from :mod:`segsynth.artifacts.names`
(what a folder must hold to be recognised); the real runs are made by the training functions,
and their records are read back through the schemas, so writers and readers agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_dataset

from segsynth.artifacts.detect import KINDS, detect, discover
from segsynth.artifacts.names import (
    BACKBONE_JSON,
    BENCHMARK_YAML,
    BEST_DIR,
    CONFIG_YAML,
    DATASET_JSON,
    GENERATION_JSON,
    IMAGE_SPLIT_JSON,
    MANIFEST_JSONL,
    METRICS_JSON,
    PLAN_JSON,
    RECONSTRUCTION_JSON,
    SPLIT_JSON,
    TRAIN_LOG,
    TRAINING_DATA_JSON,
    TRAINING_JSON,
)
from segsynth.artifacts.schemas import (
    EVALUATION_KIND,
    Reconstruction,
    SegRunSplit,
    TrainingSummary,
    read_image_split,
    read_record,
)
from segsynth.evaluation import default_seg_config
from segsynth.autoencoder import AutoencoderTrainConfig
from segsynth.autoencoder.train import train_autoencoder
from segsynth.report import build_report
from segsynth.seg.train import train_seg

TINY_AE_TRAIN = {"model": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8}, "tile_size": 16, "steps": 2,
                 "batch_size": 2, "lr": 1e-3, "eval_tiles": 2, "checkpoint_every": 1, "log_every": 1,
                 "mixed_precision": "no"}
SEG_SPLIT = {"data_root": "/data", "train_ids": ["a"], "val_ids": ["b"], "test_ids": [], "train_cases": ["p1"],
             "val_cases": ["p2"], "test_cases": [], "synthetic": []}
IMAGE_SPLIT = {"data": ["/data"], "train": ["a", "b"], "held_out": ["c"]}


def _folder(root: Path, files: dict[str, object], dirs: tuple[str, ...] = ()) -> Path:
    """``root`` holding ``files`` (JSON for dicts, the text otherwise) and empty ``dirs``."""
    root.mkdir(parents=True)
    for name, content in files.items():
        (root / name).write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    for name in dirs:
        (root / name).mkdir()
    return root


#: kind -> what its stage leaves behind, at the least (each a minimal folder of that kind).
MINIMAL: dict[str, Callable[[Path], Path]] = {
    "run": lambda p: _folder(p, {PLAN_JSON: {"data": "/data", "device": "cpu", "fingerprint": {}, "choices": {}}}),
    "benchmark": lambda p: _folder(p, {BENCHMARK_YAML: "folds: 2\n"}),
    "controlnet_run": lambda p: _folder(p, {TRAINING_DATA_JSON: {"data_root": "/data"}, BACKBONE_JSON: {"path": "/sd", "sha256": "0"}}),
    "diffusion_run": lambda p: _folder(p, {TRAINING_DATA_JSON: {"data_root": "/data"}, CONFIG_YAML: "{}\n"}),
    "autoencoder_run": lambda p: _folder(p, {CONFIG_YAML: "{}\n", IMAGE_SPLIT_JSON: IMAGE_SPLIT, TRAIN_LOG: ""}),
    "seg_run": lambda p: _folder(p, {CONFIG_YAML: "{}\n", SPLIT_JSON: SEG_SPLIT, TRAIN_LOG: ""}, (BEST_DIR,)),
    "synthetic_set": lambda p: _folder(p, {DATASET_JSON: {}, MANIFEST_JSONL: ""}),
    "evaluation": lambda p: _folder(p, {METRICS_JSON: {"kind": EVALUATION_KIND}}),
    "dataset": lambda p: _folder(p, {DATASET_JSON: {}}),
}


def test_the_minimal_folders_cover_every_kind() -> None:
    assert set(MINIMAL) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_every_kind_is_detected_from_the_files_its_stage_writes(kind: str, tmp_path: Path) -> None:
    folder = MINIMAL[kind](tmp_path / kind)
    assert detect(folder) == kind
    assert [(f.kind, f.path) for f in discover([tmp_path])] == [(kind, folder)]


def test_a_synthetic_set_is_recognised_by_its_recipe_alone(tmp_path: Path) -> None:
    """``generation.json`` is written first, so a set being generated is a set before any sample lands."""
    assert detect(_folder(tmp_path / "synth", {GENERATION_JSON: {"config": {}, "dataset": {}}})) == "synthetic_set"


def test_a_metrics_file_of_evaluate_synth_is_an_evaluation_and_another_is_not(tmp_path: Path) -> None:
    folder = MINIMAL["evaluation"](tmp_path / "evaluation")
    assert detect(folder / METRICS_JSON) == "evaluation"
    scores = _folder(tmp_path / "seed_0", {METRICS_JSON: {"per_case": {}}})  # a benchmark run's scores
    assert detect(scores / METRICS_JSON) is None and detect(scores) is None


@pytest.mark.parametrize("split_name", [IMAGE_SPLIT_JSON, SPLIT_JSON], ids=["image_split.json", "legacy split.json"])
def test_an_autoencoder_folder_is_never_taken_for_a_segmentation_run(split_name: str, tmp_path: Path) -> None:
    """Mid-training (no reconstruction.json or autoencoder/ yet) the image split alone decides,
    under its own name or the name older runs wrote it under."""
    ae = _folder(tmp_path / "ae", {CONFIG_YAML: "{}\n", split_name: IMAGE_SPLIT, TRAIN_LOG: ""})
    assert detect(ae) == "autoencoder_run"
    assert read_image_split(ae).held_out == ["c"]
    assert [f.kind for f in discover([tmp_path])] == ["autoencoder_run"]


def test_a_segmentation_run_is_never_taken_for_an_autoencoder_run(tmp_path: Path) -> None:
    seg = MINIMAL["seg_run"](tmp_path / "seg")
    (seg / TRAINING_JSON).write_text("{}", encoding="utf-8")
    assert detect(seg) == "seg_run"
    # Before best/ exists, config.yaml next to the segmentation split is enough.
    (seg / BEST_DIR).rmdir()
    assert detect(seg) == "seg_run"


def test_a_bad_record_is_refused_naming_the_file_and_the_key(tmp_path: Path) -> None:
    seg = _folder(tmp_path / "seg", {SPLIT_JSON: {**SEG_SPLIT, "train_ids": "a"}})
    with pytest.raises(ValueError, match=rf"{SPLIT_JSON}: train_ids: "):
        read_record(seg / SPLIT_JSON, SegRunSplit)


def test_the_report_of_a_segsynth_run_shows_its_plan(tmp_path: Path) -> None:
    run = MINIMAL["run"](tmp_path / "run")
    html = build_report([run], tmp_path / "report.html").read_text(encoding="utf-8")
    assert "segsynth run" in html and f"run: {PLAN_JSON}" in html and "could not be read" not in html


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A data folder, a finished 2-step autoencoder run and a 2-step segmentation run on it."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("detect")
    data = write_tiny_dataset(tmp / "data", cases=("p1", "p2", "p3", "p4"), size=16)
    ae = train_autoencoder(data, AutoencoderTrainConfig.model_validate(TINY_AE_TRAIN), tmp / "ae")
    seg = train_seg(data, default_seg_config(16, steps=2), tmp / "seg")
    return data, Path(ae), Path(seg)


def test_real_autoencoder_and_segmentation_runs_are_told_apart(runs, tmp_path: Path) -> None:
    data, ae, seg = runs
    assert detect(ae) == "autoencoder_run" and detect(seg) == "seg_run"
    # What the trainers write is what the schemas read.
    assert read_image_split(ae).train and Path(read_image_split(ae).data[0]).resolve() == data.resolve()
    read_record(ae / RECONSTRUCTION_JSON, Reconstruction)
    assert read_record(seg / SPLIT_JSON, SegRunSplit).data_root == str(data.resolve())
    assert read_record(seg / TRAINING_JSON, TrainingSummary).steps == 2
    # Mid-training, before reconstruction.json and autoencoder/ exist, the split decides.
    partial = tmp_path / "ae_partial"
    partial.mkdir()
    for name in (CONFIG_YAML, IMAGE_SPLIT_JSON, SPLIT_JSON, TRAIN_LOG):
        if (ae / name).is_file():
            (partial / name).write_bytes((ae / name).read_bytes())
    assert detect(partial) == "autoencoder_run"
    found = {(f.kind, f.path.name) for f in discover([ae.parent])}
    assert {("autoencoder_run", "ae"), ("seg_run", "seg"), ("dataset", "data")} <= found
    assert not any(kind == "seg_run" and name != "seg" for kind, name in found)
    # The report of an autoencoder run lists it as one and shows its held-out quality.
    html = build_report([ae], tmp_path / "report.html").read_text(encoding="utf-8")
    quality = json.loads((ae / RECONSTRUCTION_JSON).read_text())
    assert "autoencoder run" in html and "segmentation run" not in html and "could not be read" not in html
    assert RECONSTRUCTION_JSON in html and f"{quality['autoencoder']['psnr']}" in html
