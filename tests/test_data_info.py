"""``dataset_info``: exact class fractions, counts and sizes on hand-made masks; the dataset is only read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.data.format import DatasetSpec, save_spec
from segsynth.artifacts.names import FINGERPRINT_JSON
from segsynth.data.info import dataset_info
from segsynth.data.io import DataReadError, write_image


@pytest.fixture
def known_dataset(tmp_path: Path) -> Path:
    """Three masks with hand-counted class pixels: a (4x4, case A), b (4x6, case A), c (2x4 NIfTI x2 slices, case B)."""
    root = tmp_path / "known"
    a = np.zeros((4, 4), np.uint8)
    a[:2, :2] = 1  # 4 lesion of 16
    b = np.zeros((4, 6), np.uint8)
    b[0, :] = 2  # 6 vessel of 24
    c = np.zeros((2, 4, 2), np.uint8)
    c[:, :, 1] = 1  # slice 0: all background, slice 1: all lesion (8 px)
    for stem, mask in (("a", a), ("b", b)):
        write_image(root / "images" / f"{stem}.png", (mask * 50).astype(np.uint8))
        write_image(root / "masks" / f"{stem}.png", mask)
    write_image(root / "images" / "c.nii.gz", c.astype(np.float32))
    write_image(root / "masks" / "c.nii.gz", c)
    write_image(root / "unlabeled" / "u.png", np.zeros((8, 10), np.uint8))
    save_spec(root, DatasetSpec(
        name="known", modality="MRI", prompt="Brain, MRI", channels=1,
        labels={"background": 0, "lesion": 1, "vessel": 2}, label_provenance="human", licence="CC0-1.0",
        cases={"a": "A", "b": "A", "c": "B"}, unlabeled_cases={"u": "U"},
    ))
    return root


def test_fingerprint_numbers_match_hand_counts(known_dataset: Path) -> None:
    fp = dataset_info(known_dataset)
    assert fp["num_images"] == 4 and fp["num_cases"] == 2 and fp["num_unlabeled"] == 1
    assert fp["images_per_case"] == {"A": 2, "B": 2}
    total = 16 + 24 + 8 + 8
    assert fp["total_pixels"] == total
    assert fp["class_fractions"]["lesion"] == pytest.approx((4 + 8) / total)
    assert fp["class_fractions"]["vessel"] == pytest.approx(6 / total)
    assert sum(fp["class_fractions"].values()) == pytest.approx(1.0)
    lesion = np.array([4 / 16, 0, 0, 1])
    assert fp["per_image_fractions"]["lesion"]["mean"] == pytest.approx(lesion.mean())
    assert fp["per_image_fractions"]["lesion"]["std"] == pytest.approx(lesion.std())
    assert fp["class_presence"] == {"background": 0.75, "lesion": 0.5, "vessel": 0.25}
    assert fp["image_size"] == {"height": {"min": 2, "max": 4, "median": 3.0}, "width": {"min": 4, "max": 6, "median": 4.0}}
    assert fp["unlabeled_size"]["width"]["max"] == 10


def test_nothing_is_written_into_the_dataset_and_out_goes_outside(known_dataset: Path, tmp_path: Path) -> None:
    before = sorted(p.relative_to(known_dataset) for p in known_dataset.rglob("*"))
    fp = dataset_info(known_dataset)
    assert sorted(p.relative_to(known_dataset) for p in known_dataset.rglob("*")) == before
    saved = tmp_path / "elsewhere" / FINGERPRINT_JSON
    dataset_info(known_dataset, out=saved)
    assert json.loads(saved.read_text()) == fp
    with pytest.raises(ValueError, match="sits inside the input"):
        dataset_info(known_dataset, out=known_dataset / FINGERPRINT_JSON)
    assert sorted(p.relative_to(known_dataset) for p in known_dataset.rglob("*")) == before


def test_undeclared_label_is_a_clear_error(known_dataset: Path) -> None:
    write_image(known_dataset / "masks" / "a.png", np.full((4, 4), 5, np.uint8))
    with pytest.raises(DataReadError, match=r"a\.png.*undeclared label values \[5\]"):
        dataset_info(known_dataset)


def test_cli_prints_table_and_writes_only_out(tiny_dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "info", str(tiny_dataset)])
    assert result.exit_code == 0, result.output
    assert "lesion" in result.output and "6 labelled images" in result.output
    assert not (tiny_dataset / FINGERPRINT_JSON).exists()
    saved = tmp_path / FINGERPRINT_JSON
    as_json = runner.invoke(app, ["data", "info", str(tiny_dataset), "--json", "-o", str(saved)])
    assert json.loads(as_json.stdout)["num_cases"] == 3 == json.loads(saved.read_text())["num_cases"]
    assert not (tiny_dataset / FINGERPRINT_JSON).exists()
    missing = runner.invoke(app, ["data", "info", str(tiny_dataset / "nope")])
    assert missing.exit_code == 2 and "dataset.json" in missing.output
