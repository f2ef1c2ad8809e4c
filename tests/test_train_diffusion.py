"""Diffusion training: bit-for-bit resume, the run folder contract, loss going down, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_style_sampling import write_blob_dataset

import segsynth.diffusion.train as train_module
from segsynth.config import ConfigError, load_config
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.diffusion.samples import BatchPlan, epoch_order
from segsynth.diffusion.train import train_diffusion
from segsynth.io.checkpoint import CheckpointManager

TINY = {
    "model.image_size": 16,
    "model.block_out_channels": [8, 16],
    "model.attention_levels": [False, True],
    "model.style.encoder_channels": [8, 16],
    "model.style.dim": 16,
    "model.style.num_refs": 2,
    "train.batch_size": 3,
    "train.warmup": 1,
    "train.log_every": 1,
    "train.sample_every": 0,
    "sampling.steps": 2,
    "sampling.grid_rows": 2,
}


def tiny_config(**overrides: Any) -> DiffusionTrainConfig:
    return load_config(DiffusionTrainConfig, None, {**TINY, **overrides})


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_blob_dataset(tmp_path_factory.mktemp("blobs"), {"a": 3, "b": 2, "c": 2}, size=20)


def flat_tensors(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint tree under a path-like key."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, np.ndarray):
        return {prefix: torch.from_numpy(tree)}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat_tensors(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in flat_tensors(sub, f"{prefix}/{i}").items()}
    return {}


def log_losses(run: Path) -> dict[int, float]:
    lines = (run / "train_log.jsonl").read_text().splitlines()
    return {entry["step"]: entry["loss"] for entry in map(json.loads, lines)}


@pytest.mark.parametrize("precision", ["auto", "no"])  # the default (bf16 on a CPU with native bf16) and fp32
def test_resume_after_a_kill_is_bit_for_bit(blobs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            precision: str) -> None:
    cfg = tiny_config(**{"train.steps": 5, "train.checkpoint_every": 2, "train.mixed_precision": precision})
    straight = train_diffusion(blobs, cfg, tmp_path / "straight")

    calls = {"n": 0}
    real_loss = train_module.diffusion_loss

    def dies_in_step_four(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        if calls["n"] == 4:  # step 3 finished but was never checkpointed: it must be redone
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "diffusion_loss", dies_in_step_four)
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(blobs, cfg, tmp_path / "resumed")
    assert CheckpointManager(tmp_path / "resumed").complete_steps() == [2]
    assert not (tmp_path / "resumed" / "pipeline").exists()
    monkeypatch.setattr(train_module, "diffusion_loss", real_loss)
    # more DataLoader workers on resume must not change a single bit
    resumed = train_diffusion(blobs, cfg.model_copy(update={"train": cfg.train.model_copy(update={"num_workers": 1})}),
                              tmp_path / "resumed", resume=True)

    step_a, tree_a = CheckpointManager(straight).latest()
    step_b, tree_b = CheckpointManager(resumed).latest()
    assert step_a == step_b == 5
    flat_a, flat_b = flat_tensors(tree_a), flat_tensors(tree_b)
    assert flat_a.keys() == flat_b.keys()
    assert any(k.startswith("/optimizer/state") for k in flat_a) and any(k.startswith("/ema/shadow") for k in flat_a)
    for key in flat_a:
        assert torch.equal(flat_a[key], flat_b[key]), key
    assert log_losses(straight) == log_losses(resumed)
    released_a = SegSynthPipeline.from_pretrained(straight / "pipeline")
    released_b = SegSynthPipeline.from_pretrained(resumed / "pipeline")
    for (name, a), (_, b) in zip(released_a.unet.state_dict().items(), released_b.unet.state_dict().items()):
        assert torch.equal(a, b), name


def test_run_folder_contract(blobs: Path, tmp_path: Path) -> None:
    cfg = tiny_config(**{"train.steps": 4, "train.checkpoint_every": 2, "train.sample_every": 2})
    ids = ["a_000", "a_002", "b_000", "b_001"]  # two images of each case kept: every target has a case-mate as reference
    run = train_diffusion(blobs, cfg, tmp_path / "run", train_ids=ids)

    saved = load_config(DiffusionTrainConfig, run / "config.yaml")
    assert saved.model.num_classes == 2 and saved.model.image_channels == 1  # filled from dataset.json
    assert saved.train.steps == 4
    training_data = json.loads((run / "training_data.json").read_text())
    assert len(training_data.pop("data_sha256")) == 64  # the training files' content, checked on resume
    assert training_data == {
        "data_root": str(blobs.resolve()), "train_ids": ids, "style_sampler": "multi_patch", "num_refs": 2
    }
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert all(np.isfinite(entry["loss"]) and entry["it_per_s"] > 0 for entry in log)
    assert CheckpointManager(run).complete_steps() == [4]
    grids = sorted(p.name for p in (run / "samples").iterdir())
    assert grids == ["step_000000002.png", "step_000000004.png"]
    # rows: grid_rows of 16 px tiles, enlarged 8x to 128 px (sample_grid.MIN_TILE), + 2 px gaps;
    # columns: layout | 2 style refs | sample
    assert Image.open(run / "samples" / grids[-1]).size == (4 * 130, 2 * 130)

    pipeline = SegSynthPipeline.from_pretrained(run / "pipeline")
    ema = CheckpointManager(run).latest()[1]["ema"]["shadow_params"]
    released = [p for part in (pipeline.unet, pipeline.style_encoder, pipeline.style_aggregator) for p in part.parameters()]
    assert len(released) == len(ema)
    assert all(torch.equal(r, e) for r, e in zip(released, ema))  # the release carries the EMA weights
    out = pipeline(torch.zeros(1, 16, 16, dtype=torch.long), torch.rand(1, 2, 1, 16, 16), num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 1, 16, 16) and torch.isfinite(out).all()


def test_loss_goes_down_on_a_learnable_set(blobs: Path, tmp_path: Path) -> None:
    cfg = tiny_config(**{"train.steps": 60, "train.batch_size": 8, "train.lr": 3e-3, "train.warmup": 5,
                         "train.checkpoint_every": 60, "objective.min_snr_gamma": None})
    losses = log_losses(train_diffusion(blobs, cfg, tmp_path / "run"))
    first, last = np.mean([losses[s] for s in range(1, 11)]), np.mean([losses[s] for s in range(51, 61)])
    assert last < 0.6 * first, (first, last)


def test_refusals(blobs: Path, tmp_path: Path) -> None:
    cfg = tiny_config(**{"train.steps": 1})
    run = train_diffusion(blobs, cfg, tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train_diffusion(blobs, cfg, run)
    changed = tiny_config(**{"train.steps": 2, "train.lr": 1e-3, "data.style_sampler": "nearby"})
    with pytest.raises(ConfigError, match="train.lr.*data.style_sampler|data.style_sampler.*train.lr"):
        train_diffusion(blobs, changed, run, resume=True)
    with pytest.raises(ConfigError, match="model.num_classes is 3 but .*dataset.json declares 2"):
        train_diffusion(blobs, tiny_config(**{"model.num_classes": 3}), tmp_path / "other")
    with pytest.raises(ValueError, match=r"train_ids not in the labelled set: \['zz_999'\]"):
        train_diffusion(blobs, cfg, tmp_path / "other", train_ids=["a_000", "zz_999"])
    # extending a finished run is allowed and continues from its last step
    train_diffusion(blobs, tiny_config(**{"train.steps": 2}), run, resume=True)
    assert sorted(log_losses(run)) == [1, 2]


def test_data_order_is_a_seeded_sharded_permutation() -> None:
    orders = [epoch_order(10, seed=3, epoch=1, rank=r, world=3) for r in range(3)]
    assert all(len(o) == 3 for o in orders)
    assert len(set(np.concatenate(orders).tolist())) == 9  # disjoint shards
    assert not np.array_equal(epoch_order(10, 3, 0), epoch_order(10, 3, 1))
    full = [b for b in BatchPlan(7, 3, seed=0, position=0, num_batches=5)]
    later = [b for b in BatchPlan(7, 3, seed=0, position=6, num_batches=3)]
    assert full[2:] == later  # restarting from a position replays the same batches
    first_epoch = sum(full[:3], [])[:7]
    assert {e for e, _ in first_epoch} == {0}
    assert sorted(i for _, i in first_epoch) == list(range(7))  # one epoch visits each sample once
