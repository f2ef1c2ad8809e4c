"""Odd files: ``data check`` and the commands refuse the same file for the same reason, no traceback."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from conftest import TINY_DIFFUSION_MODEL, write_tiny_dataset
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.data.check import check_dataset
from segsynth.data.io import write_image


def self_link(root: Path) -> str:
    path = root / "images" / "p1_0.png"
    path.unlink()
    os.symlink(path.name, path)
    return "images/p1_0.png"


def nested_json(root: Path) -> str:
    (root / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)
    return "dataset.json"


def duplicate_key(root: Path) -> str:
    text = (root / "dataset.json").read_text()
    (root / "dataset.json").write_text(text.replace('"channels": 1', '"channels": 1, "channels": 3', 1))
    return "dataset.json"


def labels_as_strings_and_floats(root: Path) -> str:
    spec = json.loads((root / "dataset.json").read_text())
    spec["labels"] = {"background": "0", "lesion": 1.0}
    (root / "dataset.json").write_text(json.dumps(spec))
    mask = np.zeros((16, 16), np.uint8)
    mask[2, 2] = 5
    write_image(root / "masks" / "p1_0.png", mask)
    return "dataset.json"


def one_pixel(root: Path) -> str:
    write_image(root / "images" / "p1_0.png", np.zeros((1, 1), np.uint8))
    write_image(root / "masks" / "p1_0.png", np.zeros((1, 1), np.uint8))
    return "images/p1_0.png"


def line_image(root: Path) -> str:
    write_image(root / "images" / "p1_0.png", np.zeros((10000, 1), np.uint8))
    write_image(root / "masks" / "p1_0.png", np.zeros((10000, 1), np.uint8))
    return "images/p1_0.png"


def multi_page_tiff(root: Path) -> str:
    (root / "images" / "p1_0.png").unlink()
    with tifffile.TiffWriter(root / "images" / "p1_0.tif") as tif:
        tif.write(np.zeros((16, 16), np.uint8))
        tif.write(np.full((16, 16), 200, np.uint8))
    return "images/p1_0.tif"


ODD: list[Callable[[Path], str]] = [self_link, nested_json, duplicate_key, labels_as_strings_and_floats, one_pixel,
                                     line_image, multi_page_tiff]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "diffusion.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_DIFFUSION_MODEL, "train": {"steps": 1, "batch_size": 2, "warmup": 0,
                                                                               "mixed_precision": "no"}}))
    return path


@pytest.mark.parametrize("damage", ODD, ids=lambda f: f.__name__)
def test_check_and_commands_refuse_the_same_file(damage, tmp_path: Path, config: Path) -> None:
    root = write_tiny_dataset(tmp_path / "data")
    bad = damage(root)
    report = check_dataset(root)
    assert not report.ok and bad in {p.file for p in report.errors}, report.problems
    check = CliRunner().invoke(app, ["data", "check", str(root)])
    assert check.exit_code == 1 and isinstance(check.exception, SystemExit), check.exception  # a report, no crash
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-diffusion", str(root), "--out", str(out), "--config", str(config)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert str(root / bad) in result.output
    assert not out.exists(), "refused before writing"


def test_a_constant_image_is_a_warning_not_an_error(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "data")
    write_image(root / "images" / "p2_1.png", np.full((16, 16), 300, np.uint16))
    report = check_dataset(root)
    assert report.ok
    assert [(p.kind, p.file) for p in report.warnings] == [("constant_image", "images/p2_1.png")]
