"""The layout filter of ``generate``: a frozen real-data segmenter judges each draw; draws below the
threshold are dropped and recorded, redrawn up to the cap, and the outcome is kept with the set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_generate import files_of
from test_layouts import write_toy_dataset

from segsynth.artifacts.schemas import GenerationRecord, ManifestRecord, RejectedRecord, read_record
from segsynth.data.loader import sample_seed
from segsynth.diffusion.objective import ObjectiveConfig, make_train_scheduler
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.io.guard import OutputPathError
from segsynth.models.config import ModelConfig
from segsynth.models.model import SegSynthModel
from segsynth.seg.config import NetworkConfig
from segsynth.seg.networks import build_network, save_network
from segsynth.synth.config import GenerationConfig
from segsynth.synth.generate import generate
from segsynth.synth.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: With this seeded untrained judge the toy draws score a mean foreground Dice between 0 and ~0.4,
#: so a threshold of 0.25 keeps about half of them.
HALF = 0.25


@pytest.fixture(scope="module")
def pipe() -> SegSynthPipeline:
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=16, image_channels=1, num_classes=2, block_out_channels=(8, 16),
                      attention_levels=(False, True), style={"encoder_channels": (8, 16), "dim": 16, "num_refs": 2})
    return SegSynthPipeline.from_model(SegSynthModel.from_config(cfg), make_train_scheduler(ObjectiveConfig()))


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``train-seg``-shaped run folder (``best/``) holding a tiny seeded network."""
    run = tmp_path_factory.mktemp("judge") / "seg_real"
    cfg = NetworkConfig(name="unet", channels=(4, 8), strides=(2,), num_res_units=0)
    torch.manual_seed(1)
    save_network(run / "best", build_network(cfg, 1, 2), cfg, 1, ["background", "nucleus"],
                 extra={"divisor": 2, "patch_size": None})
    return run


def config(toy: Path, judge: Path, n: int, min_dice: float | None, factor: float = 3.0) -> GenerationConfig:
    flt = None if min_dice is None else {"judge": judge, "min_dice": min_dice, "max_attempts_factor": factor}
    return GenerationConfig(n=n, styles=toy / "unlabeled", layout_data=toy, steps=2, batch_size=3, filter=flt)


def outcome(out: Path) -> dict:
    return read_record(out / "generation.json", GenerationRecord).model_dump()["filtered"]


def test_threshold_zero_keeps_every_draw_and_gives_the_unfiltered_set(pipe, toy, judge, tmp_path):
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    generate(pipe, plain, config(toy, judge, 5, None))
    generate(pipe, kept, config(toy, judge, 5, 0.0))
    records = read_manifest(kept / "manifest.jsonl")
    assert [(r.index, r.draw) for r in records] == [(i, i) for i in range(5)]
    assert all(r.judge_dice is not None and 0 <= r.judge_dice <= 1 for r in records)
    same = ("images", "masks")
    assert {k: v for k, v in files_of(kept).items() if k.startswith(same)} == \
           {k: v for k, v in files_of(plain).items() if k.startswith(same)}
    assert [r.model_copy(update={"draw": None, "judge_dice": None}) for r in records] == \
           read_manifest(plain / "manifest.jsonl")
    assert outcome(kept) == {"judge": str((judge / "best").resolve()), "min_dice": 0.0, "requested": 5, "attempts": 5,
                             "kept": 5, "rejected": 0, "kept_fraction": 1.0, "reached_cap": False}
    assert (kept / "rejected.jsonl").read_bytes() == b""
    assert "filter" not in json.loads((plain / "generation.json").read_text())["config"]  # old sets keep their bytes


def test_filter_drops_draws_below_threshold_and_records_them(pipe, toy, judge, tmp_path):
    out = tmp_path / "half"
    result = generate(pipe, out, config(toy, judge, 6, HALF))
    records = read_manifest(out / "manifest.jsonl")
    rejected = read_manifest(out / "rejected.jsonl", model=RejectedRecord)
    summary = outcome(out)
    assert result.complete and len(records) == 6 and summary["kept"] == 6 and not summary["reached_cap"]
    assert rejected, "the threshold should drop some of the toy draws"
    assert len(rejected) == summary["rejected"] == summary["attempts"] - summary["kept"]
    assert summary["kept_fraction"] == pytest.approx(6 / summary["attempts"])
    assert [r.index for r in records] == list(range(6))  # the set is numbered as any other
    assert all(r.judge_dice >= HALF and r.seed == sample_seed(0, r.draw) for r in records)
    assert all(r.judge_dice < HALF and r.seed == sample_seed(0, r.draw) for r in rejected)
    decided = sorted([r.draw for r in records] + [r.draw for r in rejected])
    assert decided == list(range(summary["attempts"]))  # draws are decided in order, none skipped
    assert json.loads((out / "dataset.json").read_text())["cases"].keys() == {r.id for r in records}


def test_shards_filter_their_own_draws_and_merge_what_they_dropped(pipe, toy, judge, tmp_path):
    out = tmp_path / "sharded"
    cfg = config(toy, judge, 6, HALF)
    first = generate(pipe, out, cfg, shard=(0, 2))
    assert not first.complete and not (out / "manifest.jsonl").exists()
    assert generate(pipe, out, cfg, shard=(1, 2)).complete
    records = read_manifest(out / "manifest.jsonl")
    rejected = read_manifest(out / "rejected.jsonl", model=RejectedRecord)
    summary = outcome(out)
    assert [r.index for r in records] == list(range(6)) and summary["kept"] == 6
    assert len(rejected) == summary["rejected"] == summary["attempts"] - 6
    assert {r.draw for r in records} | {r.draw for r in rejected} <= set(range(18))  # ceil(3.0 * 6) draws in all
    assert all(r.draw >= 9 for r in records if r.index >= 3)  # shard 1 draws from its own half


def test_an_impossible_threshold_stops_at_the_cap_and_warns_with_the_count(pipe, toy, judge, tmp_path):
    out = tmp_path / "strict"
    with pytest.warns(UserWarning, match=r"kept 0 of the 4 samples .* after all its 6 draws"):
        result = generate(pipe, out, config(toy, judge, 4, 0.99, factor=1.5))
    assert result.complete
    assert outcome(out) == {"judge": str((judge / "best").resolve()), "min_dice": 0.99, "requested": 4,
                            "attempts": 6, "kept": 0, "rejected": 6, "kept_fraction": 0.0, "reached_cap": True}
    assert read_manifest(out / "manifest.jsonl") == []
    assert len(read_manifest(out / "rejected.jsonl", model=RejectedRecord)) == 6
    with pytest.warns(UserWarning, match="kept 0 of the 4"):  # nothing left to draw: the same answer
        again = generate(pipe, out, config(toy, judge, 4, 0.99, factor=1.5), resume=True)
    assert (again.generated, again.complete) == (0, True)


def test_resume_after_a_kill_gives_the_identical_filtered_set(pipe, toy, judge, tmp_path):
    cfg = config(toy, judge, 6, HALF)
    reference = tmp_path / "reference"
    generate(pipe, reference, cfg)

    out = tmp_path / "killed"
    committed: list[ManifestRecord] = []

    def kill_after_three(record: ManifestRecord) -> None:
        committed.append(record)
        if len(committed) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(pipe, out, cfg, on_sample=kill_after_three)
    assert not (out / "dataset.json").exists()
    with open(out / "rejected.jsonl", "ab") as handle:  # a kill during an append leaves a torn line
        handle.write(b'{"draw": 9')
    for changed in ({"min_dice": 0.3}, {"max_attempts_factor": 2.0}):
        with pytest.raises(ValueError, match="other settings.*filter"):
            generate(pipe, out, cfg.model_copy(update={"filter": cfg.filter.model_copy(update=changed)}), resume=True)
    result = generate(pipe, out, cfg, resume=True)
    assert (result.generated, result.skipped, result.complete) == (3, 3, True)
    assert files_of(out) == files_of(reference)


def test_a_judge_that_reads_other_classes_is_refused_before_any_output(pipe, toy, judge, tmp_path):
    run = tmp_path / "other"
    cfg = NetworkConfig(name="unet", channels=(4, 8), strides=(2,), num_res_units=0)
    save_network(run / "best", build_network(cfg, 1, 3), cfg, 1, ["background", "a", "b"],
                 extra={"divisor": 2, "patch_size": None})
    with pytest.raises(ValueError, match=r"filter.judge .*classes \['background', 'a', 'b'\]"):
        generate(pipe, tmp_path / "set", config(toy, run, 2, 0.5))
    with pytest.raises(FileNotFoundError, match="no segmentation network"):
        generate(pipe, tmp_path / "set", config(toy, tmp_path / "missing", 2, 0.5))
    assert not (tmp_path / "set").exists()
    with pytest.raises(OutputPathError):  # the judge is an input: never written into
        generate(pipe, judge / "set", config(toy, judge, 2, 0.5))
    assert not (judge / "set").exists()


def test_the_benchmark_judge_is_the_fold_baseline_trained_without_its_test_cases(tmp_path):
    from conftest import write_tiny_dataset
    from test_train_diffusion import TINY

    from segsynth.benchmark import BenchmarkConfig, fold_generator
    from segsynth.benchmark.recipes import seg_run_dir
    from segsynth.config import parse_config

    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3", "p4", "p5", "p6"), per_case=2, size=16,
                              unlabeled=2)
    cfg = parse_config(BenchmarkConfig, {
        "folds": 2, "run_folds": [0], "seeds": [3], "settings": ["ratio:0.5"], "controls": [], "val_fraction": 0.5,
        "diffusion_overrides": {**TINY, "train.steps": 2},
        "segmentation_overrides": {"train.steps": 2, "train.val_every": 2, "train.batch_size": 2,
                                   "network.channels": [8, 16], "network.strides": [2]},
        "generation": {"n": 3, "steps": 2, "batch_size": 3, "filter": {"min_dice": 0.0}},
    })
    assert BenchmarkConfig().generation.filter is None  # off unless asked for
    out = tmp_path / "bench"
    _, synth, _ = fold_generator(data, out, cfg, 0)
    fold = json.loads((out / "splits.json").read_text())["folds"][0]
    test_ids = set(fold["test_ids"])
    baseline = seg_run_dir(out, 0, "baseline", 3)
    assert outcome(synth)["judge"] == str((baseline / "best").resolve())
    assert json.loads((synth / "generation.json").read_text())["config"]["filter"]["min_dice"] == 0.0
    split = json.loads((baseline / "split.json").read_text())
    assert test_ids and split["train_ids"] == fold["train_ids"] and split["val_ids"] == fold["val_ids"]
    assert not (set(split["train_ids"]) | set(split["val_ids"])) & test_ids
    assert not {r.layout_id for r in read_manifest(synth / "manifest.jsonl")} & test_ids
    assert not test_ids & set(json.loads((synth / "dataset.json").read_text())["cases"].values())


def test_cli_filter_from_set_options_reports_what_it_kept(pipe, toy, judge, tmp_path):
    from typer.testing import CliRunner

    from segsynth.cli import app

    run = tmp_path / "run"
    pipe.save_pretrained(run / "pipeline")
    (run / "training_data.json").write_text(json.dumps({"data_root": str(toy), "num_refs": 2}))
    out = tmp_path / "synth"
    args = ["generate", str(run), "--out", str(out), "-n", "3", "--steps", "2", "--batch-size", "3",
            "--set", f"filter.judge={judge}", "--set", f"filter.min_dice={HALF}"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = outcome(out)
    assert f"kept 3 of {summary['attempts']} draws (min_dice {HALF})" in result.output
    missing = CliRunner().invoke(app, ["generate", str(run), "--out", str(tmp_path / "other"), "-n", "3",
                                       "--set", f"filter.judge={tmp_path / 'no-judge'}", "--set", "filter.min_dice=0.5"])
    assert missing.exit_code == 2 and "no segmentation network" in missing.output
