"""The data decides the generator's shape: channels, classes and image size come from the dataset
unless the user names them (a config file or --set), and a named value that contradicts the data is
refused before anything trains. A default is never taken for the user's choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import write_tiny_dataset
from segsynth.artifacts.names import CONFIG_YAML, DIFFUSION_DIR, FOLD_DIR, IMAGES_DIR, RESULTS_JSON, SYNTH_DIR
from segsynth.benchmark import BenchmarkConfig
from segsynth.benchmark.recipes import diffusion_recipe
from segsynth.cli import app
from segsynth.config import ConfigError, parse_config
from segsynth.data.io import read_image
from segsynth.demo import SMOKE_PROFILE

#: Three labels, so neither channels (3) nor classes (3) equal the model's defaults (1 and 2).
LABELS = ("background", "nucleus", "stroma")


@pytest.fixture
def rgb_data(tmp_path: Path) -> Path:
    """4 cases of two 16 px RGB images with 3 labels: 2 folds, each with 1 training + 1 validation case."""
    return write_tiny_dataset(tmp_path / "rgb", cases=("p1", "p2", "p3", "p4"), per_case=2, size=16, channels=3,
                              labels=LABELS, unlabeled=2)


def _flow(value: object) -> str:
    """``value`` as one line of YAML, the way ``--set key=value`` reads it."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def test_no_config_takes_every_shape_from_the_data(rgb_data: Path) -> None:
    cfg = diffusion_recipe(rgb_data, BenchmarkConfig())
    assert (cfg.model.image_channels, cfg.model.num_classes, cfg.model.image_size) == (3, 3, 16)
    # a recipe that names its size but not channels or classes: those still come from the data
    tiny = parse_config(BenchmarkConfig, {"diffusion_config": "tiny", "segmentation_overrides": {"train.patch_size": 16}})
    assert (diffusion_recipe(rgb_data, tiny).model.image_channels, diffusion_recipe(rgb_data, tiny).model.num_classes) == (3, 3)


@pytest.mark.parametrize("key, value, says", [
    ("model.image_channels", 1, "model.image_channels is 1 but .*dataset.json declares 3"),
    ("model.num_classes", 2, "model.num_classes is 2 but .*dataset.json declares 3"),
])
def test_a_named_value_that_contradicts_the_data_is_refused_before_training(
        rgb_data: Path, tmp_path: Path, key: str, value: int, says: str) -> None:
    section, _, leaf = key.partition(".")
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({section: {leaf: value}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=says):
        diffusion_recipe(rgb_data, parse_config(BenchmarkConfig, {"diffusion_overrides": {key: value}}))
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["benchmark", str(rgb_data), "-o", str(out), "--quick", "--low-label", "2",
                                      "--diffusion-config", str(config)])
    assert result.exit_code == 2 and "error:" in result.output, result.output
    assert not (out / FOLD_DIR.format(fold=0) / DIFFUSION_DIR).exists()


def test_quick_benchmark_on_rgb_data_without_a_config_runs(rgb_data: Path, tmp_path: Path) -> None:
    """``segsynth benchmark DATA --quick --low-label 2`` on RGB data with no config file: only toy
    sizes are set (none of channels, classes or image size), and every stage runs."""
    torch.set_num_threads(1)
    out = tmp_path / "bench"
    toy = {
        "run_folds": [0], "seeds": [0], "settings": ["ratio:0.5"], "controls": [],
        "diffusion_overrides": SMOKE_PROFILE["diffusion_overrides"],
        "segmentation_overrides": {**SMOKE_PROFILE["segmentation_overrides"], "train.batch_size": 2},
        "generation": SMOKE_PROFILE["generation"],
    }
    assert not {"model.image_channels", "model.num_classes", "model.image_size"} & set(toy["diffusion_overrides"])
    sets = [arg for key, value in toy.items() for arg in ("--set", f"{key}={_flow(value)}")]
    result = CliRunner().invoke(app, ["benchmark", str(rgb_data), "-o", str(out), "--quick", "--low-label", "2", *sets])
    assert result.exit_code == 0, result.output
    fold = out / FOLD_DIR.format(fold=0)
    model = yaml.safe_load((fold / DIFFUSION_DIR / CONFIG_YAML).read_text(encoding="utf-8"))["model"]
    assert (model["image_channels"], model["num_classes"], model["image_size"]) == (3, 3, 16)
    synthetic = sorted((fold / SYNTH_DIR / IMAGES_DIR).iterdir())
    assert synthetic and all(read_image(path).shape[-3:] in ((3, 16, 16), (16, 16, 3)) for path in synthetic)
    assert (out / RESULTS_JSON).is_file()
