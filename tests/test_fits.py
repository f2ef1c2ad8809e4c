"""Refuse what cannot fit before starting: memory and disk estimates, checked before any output is written.

The limits are made small by replacing :func:`segsynth.fits.available_memory` (and the free disk),
so no test allocates what it refuses.
"""

from __future__ import annotations

import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_DIFFUSION_MODEL, write_tiny_dataset, write_untrained_run
from typer.testing import CliRunner

import segsynth.fits as fits
from segsynth.cli import app
from segsynth.fits import DoesNotFitError, Estimate, check_disk, check_memory, saved_activation_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GIB = 2**30
SEG = ["--set", "train.steps=1", "--set", "train.val_every=1", "--set", "train.augment=none",
       "--set", "network.channels=[8,16]", "--set", "network.strides=[2]"]
DIFFUSION = {"model": TINY_DIFFUSION_MODEL,
             "train": {"steps": 1, "batch_size": 2, "warmup": 0, "log_every": 1, "sample_every": 0,
                       "checkpoint_every": 1, "mixed_precision": "no"},
             "sampling": {"steps": 1, "grid_rows": 1}}


def limit_memory(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(fits, "available_memory", lambda device=None: (limit, "test limit"))


def never_reached(*args, **kwargs):
    raise AssertionError("the run started although it cannot fit")


def message(result) -> str:
    return " ".join(result.output.split())


def test_train_seg_refuses_a_batch_of_copies_before_writing(tiny_dataset: Path, tmp_path: Path) -> None:
    # the tiny split trains on 2 images: a batch of 66 would load each 33 times per step (the 100000
    # of the report spent minutes per step doing this, showing nothing)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-seg", str(tiny_dataset), "--out", str(out), *SEG,
                                      "--set", "train.batch_size=66"])
    assert result.exit_code == 2, result.output
    assert "train.batch_size 66 would hold each of the 2 training examples about 33 times" in message(result)
    assert "use at most 64" in message(result)
    assert not out.exists()


def test_train_seg_refuses_what_does_not_fit_in_memory_before_writing(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit_memory(monkeypatch, 1024)  # the tiny network needs some hundred KiB
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-seg", str(tiny_dataset), "--out", str(out), *SEG,
                                      "--set", "train.batch_size=2"])
    assert result.exit_code == 2, result.output
    text = message(result)
    assert text.startswith("error: train-seg needs at least") and "activations" in text
    assert "but only 1.0 KiB is available (test limit); lower train.batch_size (2)" in text
    assert not out.exists()


@pytest.fixture(scope="module")
def d32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("fits") / "data", size=32)


def test_train_diffusion_refuses_an_image_size_that_cannot_fit_before_writing(
        d32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the report's case: model.image_size 8192 on 32 px data, then a crash in the first padding,
    # leaving config.yaml and training_data.json behind
    import segsynth.diffusion.train as train_module

    limit_memory(monkeypatch, 64 * GIB)
    monkeypatch.setattr(train_module, "DiffusionTask", never_reached)  # were the check gone, no real attempt
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(DIFFUSION))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-diffusion", str(d32), "--out", str(out), "-c", str(config),
                                      "--set", "model.image_size=8192"])
    assert result.exit_code == 2, result.output
    text = message(result)
    assert text.startswith("error: train-diffusion needs at least") and "GiB of memory" in text
    assert "but only 64.0 GiB is available (test limit); lower train.batch_size (2) or model.image_size (8192)" in text
    assert not out.exists()


def test_train_diffusion_within_the_limit_trains(d32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit_memory(monkeypatch, 1 * GIB)  # the tiny model needs some MiB
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(DIFFUSION))
    result = CliRunner().invoke(app, ["train-diffusion", str(d32), "--out", str(tmp_path / "run"), "-c", str(config)])
    assert result.exit_code == 0, result.output


def test_train_autoencoder_refuses_what_does_not_fit_in_memory_before_writing(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit_memory(monkeypatch, 1024)
    config = tmp_path / "ae.yaml"
    config.write_text(yaml.safe_dump({"model": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8},
                                      "tile_size": 16, "steps": 1, "batch_size": 2, "checkpoint_every": 1,
                                      "mixed_precision": "no"}))
    out = tmp_path / "ae"
    result = CliRunner().invoke(app, ["train-autoencoder", str(tiny_dataset), "--out", str(out), "-c", str(config)])
    assert result.exit_code == 2, result.output
    assert message(result).startswith("error: train-autoencoder needs at least")
    assert "but only 1.0 KiB is available (test limit); lower batch_size (2) or tile_size (16)" in message(result)
    assert not out.exists()


def test_the_diffusion_estimate_scales_its_probe_to_what_a_full_size_step_saves() -> None:
    from segsynth.diffusion.config import DiffusionTrainConfig
    from segsynth.diffusion.train import memory_estimate
    from segsynth.models import SegSynthModel

    model = {**TINY_DIFFUSION_MODEL, "image_size": 64, "image_channels": 1, "num_classes": 2}
    cfg = DiffusionTrainConfig.model_validate({"model": model, "train": {"batch_size": 2}})
    estimate = memory_estimate(cfg)
    torch.manual_seed(0)
    full = SegSynthModel.from_config(cfg.model)
    b, n = 2, cfg.model.style.num_refs
    measured = saved_activation_bytes(lambda: full(torch.zeros(b, 1, 64, 64), torch.zeros(b, dtype=torch.long),
                                                   torch.zeros(b, 64, 64, dtype=torch.long),
                                                   torch.zeros(b, n, 1, 64, 64)), list(full.parameters()))
    assert 0.8 * measured <= estimate.parts["activations"] <= 1.25 * measured
    params = sum(p.numel() * 4 for p in full.parameters())
    assert estimate.parts["parameters, gradients and optimiser state"] == 5 * params  # weights, grads, 2 moments, EMA


def test_generate_refuses_a_size_that_cannot_fit_before_writing(
        d32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the report's case: --size 100000 died in a 74.5 GiB allocation after generation.json was written
    import segsynth.synth.writer as writer_module  # the writer draws the samples

    run = write_untrained_run(tmp_path / "run", d32)
    limit_memory(monkeypatch, 64 * GIB)
    monkeypatch.setattr(writer_module, "_draw", never_reached)  # were the check gone, no 74.5 GiB layout
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["generate", str(run), "--out", str(out), "-n", "2", "--steps", "1",
                                      "--size", "100000", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    text = message(result)
    assert text.startswith("error: generate needs at least") and "layouts (2 of 100000x100000)" in text
    assert "but only 64.0 GiB is available (test limit); lower --size (100000) or --batch-size (2)" in text
    assert not out.exists()


def test_generate_within_the_limit_generates(d32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_untrained_run(tmp_path / "run", d32)
    limit_memory(monkeypatch, 1 * GIB)
    result = CliRunner().invoke(app, ["generate", str(run), "--out", str(tmp_path / "synth"), "-n", "2",
                                      "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output


def test_check_memory_and_disk_say_the_estimate_the_limit_and_the_path(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    limit_memory(monkeypatch, 3 * 2**20)
    estimate = Estimate("train-x", {"activations": 5 * 2**20, "batch": 2**20}, "train.batch_size (8)")
    with pytest.raises(DoesNotFitError, match=r"train-x needs at least 6.0 MiB of memory \(activations 5.0 MiB, "
                                              r"batch 1.0 MiB\) but only 3.0 MiB is available \(test limit\); "
                                              r"lower train.batch_size \(8\)"):
        check_memory(estimate)
    check_memory(Estimate("small", {"activations": 2**20}))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fits.shutil, "disk_usage", lambda path: usage(10 * GIB, 10 * GIB - 2**20, 2**20))
    target = tmp_path / "not" / "yet" / "made"
    with pytest.raises(DoesNotFitError, match=f"{target}: checkpoints needs about 2.0 MiB of disk but only 1.0 MiB"):
        check_disk(target, 2 * 2**20, "checkpoints")
    check_disk(target, 2**19, "checkpoints")


def test_a_trainer_refuses_an_output_disk_without_room_for_a_checkpoint(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fits.shutil, "disk_usage", lambda path: usage(GIB, GIB - 1024, 1024))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-seg", str(tiny_dataset), "--out", str(out), *SEG,
                                      "--set", "train.batch_size=2"])
    assert result.exit_code == 2, result.output
    assert f"error: {out}: train-seg (a checkpoint and the released weights) needs about" in message(result)
    assert not out.exists()


def test_available_memory_reads_psutil_or_meminfo_and_the_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fits, "_cgroup_limit", lambda: None)
    with_psutil = fits.available_memory()
    assert with_psutil[0] > 0 and with_psutil[1] in ("available host memory", "MemAvailable of /proc/meminfo")
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed: /proc/meminfo
    monkeypatch.setattr(fits, "_meminfo_available", lambda: 5 * GIB)
    assert fits.available_memory() == (5 * GIB, "MemAvailable of /proc/meminfo")
    monkeypatch.setattr(fits, "_cgroup_limit", lambda: GIB)  # a container's limit below the host's memory
    assert fits.available_memory() == (GIB, "the container's cgroup memory limit")
    monkeypatch.setattr(fits, "_meminfo_available", lambda: None)
    monkeypatch.setattr(fits, "_cgroup_limit", lambda: None)
    assert fits.available_memory() == (2**63, "unknown")  # nothing measured: nothing refused


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_saved_weights_count_as_parameters_not_activations(device: str) -> None:
    with torch.device(device):
        layer = torch.nn.Linear(1000, 1000)
        x = torch.zeros(1, 1000, requires_grad=True)  # the layer then saves its weight too, for x's gradient
    weights = list(layer.parameters())
    assert saved_activation_bytes(lambda: layer(x), weights) == 1000 * 4  # the input only: the 4 MB weight is a parameter
    assert saved_activation_bytes(lambda: layer(x)) == 1001 * 1000 * 4  # not declared: counted
