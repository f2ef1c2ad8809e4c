"""Finite everywhere: configs refuse inf/nan, trainers stop before saving NaN weights, generation
refuses non-finite images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_DIFFUSION_MODEL, write_tiny_dataset, write_untrained_run
from test_latent import TINY_AE_TRAIN
from typer.testing import CliRunner

import segsynth  # noqa: F401  (imports every config class)
from segsynth.cli import app
from segsynth.config import ConfigError, StrictModel, load_config, parse_config
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.io.checkpoint import CheckpointManager
from segsynth.synth.config import GenerationConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(subclasses(sub) for sub in found)) if found else found


def test_no_config_class_lets_a_non_finite_float_through() -> None:
    classes = subclasses(StrictModel)
    assert len(classes) > 10  # every config section of every stage
    assert all(cls.model_config.get("allow_inf_nan") is False for cls in classes)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "inf", "NaN", 1e400])
def test_an_override_of_inf_or_nan_is_refused_naming_the_key(value) -> None:
    with pytest.raises(ConfigError, match=r"train\.lr: .*finite"):
        load_config(DiffusionTrainConfig, None, {"train.lr": value})


def test_floats_nested_in_dicts_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"generate: class_prior\.lesion: .*finite"):
        parse_config(GenerationConfig, {"n": 1, "class_prior": {"background": 1.0, "lesion": float("nan")}}, "generate")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("finite") / "data")


def test_cli_train_diffusion_refuses_lr_inf_before_writing(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-diffusion", str(data), "--out", str(out), "--set", "train.lr=inf"])
    assert result.exit_code == 2 and "train.lr" in result.output and "finite" in result.output
    assert not out.exists()


DIFFUSION = {"model": TINY_DIFFUSION_MODEL,
             "train": {"steps": 4, "batch_size": 2, "warmup": 0, "log_every": 1, "sample_every": 0,
                       "checkpoint_every": 1, "mixed_precision": "no"},
             "sampling": {"steps": 1, "grid_rows": 1}}


def test_train_diffusion_stops_at_a_nan_loss_keeping_the_last_good_checkpoint(data: Path, tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import segsynth.diffusion.train as train_module

    real = train_module.diffusion_loss
    calls = []

    def diverges_at_step_three(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(train_module, "diffusion_loss", diverges_at_step_three)
    config, out = tmp_path / "cfg.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(DIFFUSION))
    result = CliRunner().invoke(app, ["train-diffusion", str(data), "--out", str(out), "--config", str(config)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "train-diffusion: step 3: loss term 'loss' is nan" in message
    assert CheckpointManager(out).complete_steps() == [2]  # steps 1 and 2; nothing of step 3 or later
    assert not (out / "pipeline").exists()


def test_train_autoencoder_stops_at_a_non_finite_loss(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segsynth.autoencoder.train as train_module

    real = train_module.ReconstructionObjective.forward

    def overflows(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms["kl"] = terms["kl"] + float("inf")
        return terms

    monkeypatch.setattr(train_module.ReconstructionObjective, "forward", overflows)
    config, out = tmp_path / "cfg.yaml", tmp_path / "ae"
    config.write_text(yaml.safe_dump(TINY_AE_TRAIN))
    result = CliRunner().invoke(app, ["train-autoencoder", str(data), "--out", str(out), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "train-autoencoder: step 1: loss term 'kl' is inf" in " ".join(result.output.split())
    assert CheckpointManager(out).complete_steps() == [] and not (out / "autoencoder").exists()


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finite-run")
    return write_untrained_run(root / "run", data)


@pytest.mark.parametrize("flag", [["--style-guidance", "inf"], ["--guidance-rescale", "nan"],
                                  ["--class-prior", "background=1,lesion=inf"]])
def test_generate_refuses_non_finite_settings(run: Path, tmp_path: Path, flag: list[str]) -> None:
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["generate", str(run), "--out", str(out), "-n", "2", "--steps", "1", *flag])
    assert result.exit_code == 2 and "finite" in result.output, result.output
    assert not out.exists()


def test_generate_refuses_non_finite_images_and_writes_none(run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    pipe = SegSynthPipeline.from_pretrained(str(run / "pipeline"))
    with torch.no_grad():
        next(pipe.unet.parameters()).fill_(float("nan"))
    pipe.save_pretrained(broken / "pipeline")
    (broken / "training_data.json").write_text((run / "training_data.json").read_text())
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["generate", str(broken), "--out", str(out), "-n", "2", "--steps", "1"])
    assert result.exit_code == 2, result.output
    assert "sample 0: the model produced non-finite pixels" in " ".join(result.output.split())
    assert not list(out.rglob("*.png")) and not (out / "manifest.jsonl").read_text()
