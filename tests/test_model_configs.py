"""Tampered or foreign model folders: configs are checked against their class and weights before allocation."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_tiny_dataset, write_untrained_run
from test_latent import TINY_AE
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.autoencoder.autoencoder import build_autoencoder, load_autoencoder
from segsynth.autoencoder.config import AutoencoderModelConfig


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tamper")
    data = write_tiny_dataset(root / "data")
    return write_untrained_run(root / "run", data)


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


TAMPERING = {
    "enormous widths": ("unet/config.json", lambda c: c.update(block_out_channels=[100_000, 100_000]), "beyond any real model"),
    "other widths": ("unet/config.json", lambda c: c.update(block_out_channels=[16, 32]), "describes another model"),
    "other class": ("unet/config.json", lambda c: c.update(_class_name="UNet2DModel"), "_class_name"),
    "negative timesteps": ("scheduler/scheduler_config.json", lambda c: c.update(num_train_timesteps=-5),
                           "num_train_timesteps"),
    "negative offset": ("scheduler/scheduler_config.json", lambda c: c.update(steps_offset=-3), "steps_offset"),
    "nan beta": ("scheduler/scheduler_config.json", lambda c: c.update(beta_end=float("nan")), "beta_end"),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_generate_refuses_a_tampered_pipeline_naming_the_config(run: Path, tmp_path: Path, name: str) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    relative, change, expected = TAMPERING[name]
    edit_json(copy / "pipeline" / relative, change)
    out = tmp_path / "synth"
    start = time.monotonic()
    result = CliRunner().invoke(app, ["generate", str(copy), "--out", str(out), "-n", "2", "--steps", "1"])
    assert result.exit_code == 2, (result.output, result.exception)
    message = " ".join(result.output.split())
    assert str(copy / "pipeline" / relative) in message and expected in message
    assert time.monotonic() - start < 30 and not out.exists()


def test_an_autoencoder_whose_config_disagrees_with_its_weights_is_refused(tmp_path: Path) -> None:
    vae = build_autoencoder(AutoencoderModelConfig.model_validate(TINY_AE), 1, 16)
    vae.save_pretrained(tmp_path / "ae", safe_serialization=True)
    load_autoencoder(tmp_path / "ae")  # untouched: loads
    edit_json(tmp_path / "ae" / "config.json", lambda c: c.update(latent_channels=c["latent_channels"] * 64))
    with pytest.raises(ValueError, match=r"ae/config.json: describes another model"):
        load_autoencoder(tmp_path / "ae")


@pytest.mark.parametrize("sampler, code", [(None, 0), ("xyz", 2), (7, 2)])
def test_the_style_sampler_of_training_data_json_is_checked(run: Path, tmp_path: Path, sampler, code: int) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    edit_json(copy / "training_data.json", lambda c: c.update(style_sampler=sampler))
    result = CliRunner().invoke(app, ["generate", str(copy), "--out", str(tmp_path / "synth"), "-n", "1", "--steps", "1"])
    assert result.exit_code == code, result.output
    if code:
        assert f"{copy / 'training_data.json'}: style_sampler" in " ".join(result.output.split())
