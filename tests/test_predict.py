"""`segsynth predict`: the masks evaluate-seg scores, any image size, the input's format and geometry,
resumable, and a wrong channel count refused by file name."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from conftest import tiny_pair, write_tiny_dataset
from segsynth.cli import app
from segsynth.data.io import DataReadError, read_image, write_image
from segsynth.seg.config import SegTrainConfig
from segsynth.seg.evaluate import evaluate_seg
from segsynth.seg.metrics import MetricAccumulator
from segsynth.seg.predict import PredictConfig, predict
from segsynth.seg.train import train_seg

QUIET = Console(quiet=True)


def _config(patch_size: int | None) -> SegTrainConfig:
    return SegTrainConfig.model_validate({
        "network": {"channels": [8, 16], "strides": [2], "num_res_units": 1},
        "optim": {"lr": 1e-2, "schedule": "constant"},
        "train": {"steps": 6, "val_every": 3, "batch_size": 2, "augment": "none", "patch_size": patch_size},
        "split": {"test_fraction": 0.34, "val_fraction": 0.5},
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict[str | None, Path]:
    """A 16 px dataset of 4 cases and two tiny runs on it: on whole images, and on 8 px patches."""
    root = tmp_path_factory.mktemp("predict")
    data = write_tiny_dataset(root / "data", cases=("p1", "p2", "p3", "p4"))
    runs: dict[str | None, Path] = {"data": data}
    for patch in (None, 8):
        runs[patch] = train_seg(data, _config(patch), root / f"run_{patch}", console=QUIET)
    return runs


def _scores_of_masks(masks: Path, data: Path, ids: list[str], class_names: list[str]) -> dict:
    """evaluate-seg's metrics, computed from the mask files ``predict`` wrote."""
    spec = json.loads((data / "dataset.json").read_text())
    accumulator = MetricAccumulator(class_names)
    for stem in ids:
        pred = read_image(masks / f"{stem}.png").astype(np.int64)
        truth = read_image(data / "masks" / f"{stem}.png").astype(np.int64)
        accumulator.add(stem, spec["cases"][stem], torch.from_numpy(pred), torch.from_numpy(truth))
    return accumulator.result()


@pytest.mark.parametrize("patch", [None, 8], ids=["whole", "sliding-window"])
def test_written_masks_score_what_evaluate_seg_scores(trained: dict, tmp_path: Path, patch: int | None) -> None:
    data, run = trained["data"], trained[patch]
    expected = evaluate_seg(run, data)
    result = predict(run, data, tmp_path / "masks", console=QUIET)  # a dataset folder: its images/
    assert result["predicted"] == 8 and result["skipped"] == 0
    ids = [r["id"] for r in expected["per_image"]]
    got = _scores_of_masks(tmp_path / "masks", data, ids, ["background", "lesion"])
    for metric, per_class in expected["summary"].items():
        for cls, stats in per_class.items():
            for key, value in stats.items():
                assert math.isclose(got["summary"][metric][cls][key], value, rel_tol=0, abs_tol=1e-6) or (
                    math.isnan(value) and math.isnan(got["summary"][metric][cls][key])), (metric, cls, key)
    record = json.loads((tmp_path / "masks" / "prediction.json").read_text())
    assert record["network"] == str((run / "best").resolve()) and record["window"] == patch


def test_an_image_larger_than_the_patch_is_tiled_into_a_mask_of_its_size(trained: dict, tmp_path: Path) -> None:
    images = tmp_path / "new"
    image, _ = tiny_pair(np.random.default_rng(3), 40, 1, 2)
    write_image(images / "wide.png", np.concatenate([image, image[:, :12]], axis=1))  # 40 x 52
    Image.fromarray(image[:20]).save(images / "photo.jpg")  # its mask is a PNG (a lossy file cannot hold labels)
    for config in (PredictConfig(), PredictConfig(tta=True, overlap=0.5, probabilities=True)):
        out = tmp_path / f"masks_{config.tta}"
        predict(trained[8], images, out, config, console=QUIET)
        mask = read_image(out / "wide.png")
        assert mask.shape == (40, 52) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert read_image(out / "photo.png").shape == (20, 40)
    probs = read_image(tmp_path / "masks_True" / "probabilities" / "wide.tif")
    assert probs.shape == (2, 40, 52) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(probs.argmax(0), read_image(tmp_path / "masks_True" / "wide.png"))


def test_a_nifti_volume_gets_a_mask_with_its_affine_and_header(trained: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    volume = np.stack([tiny_pair(rng, 16, 1, 2)[0] for _ in range(3)], axis=-1).astype(np.float32) * 7.5
    affine = np.array([[0.8, 0, 0, -12.0], [0, 0.8, 0, 30.0], [0, 0, 2.5, 4.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(volume, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    images = tmp_path / "scans"
    images.mkdir()
    nib.save(img, images / "ct_01.nii.gz")
    predict(trained[None], images, tmp_path / "masks", PredictConfig(probabilities=True), console=QUIET)
    mask = nib.load(tmp_path / "masks" / "ct_01.nii.gz")
    assert mask.shape == (16, 16, 3) and np.issubdtype(mask.get_data_dtype(), np.integer)
    np.testing.assert_allclose(mask.affine, affine)
    assert mask.header.get_xyzt_units() == ("mm", "sec") and int(mask.header["qform_code"]) == 1
    assert int(mask.header["sform_code"]) == int(img.header["sform_code"])
    assert nib.load(tmp_path / "masks" / "probabilities" / "ct_01.nii.gz").shape == (16, 16, 3, 2)


def test_a_second_call_skips_finished_masks_and_refuses_other_settings(trained: dict, tmp_path: Path) -> None:
    data, out = trained["data"], tmp_path / "masks"
    predict(trained[None], data, out, console=QUIET)
    (out / "p2_1.png").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    again = predict(trained[None], data, out, console=QUIET)
    assert again["predicted"] == 1 and again["skipped"] == 7 and (out / "p2_1.png").is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    with pytest.raises(ValueError, match="another network_sha256"):  # masks of two networks never mix
        predict(trained[8], data, out, console=QUIET)
    with pytest.raises(ValueError, match="another tta"):
        predict(trained[None], data, out, PredictConfig(tta=True), console=QUIET)


def test_an_image_with_other_channels_is_refused_by_name_before_any_mask(trained: dict, tmp_path: Path) -> None:
    images = tmp_path / "mixed"
    rng = np.random.default_rng(1)
    write_image(images / "a_gray.png", tiny_pair(rng, 16, 1, 2)[0])
    write_image(images / "b_rgb.png", tiny_pair(rng, 16, 3, 2)[0])
    with pytest.raises(DataReadError, match=r"b_rgb\.png: has 3 channel\(s\), but the network .* takes 1"):
        predict(trained[None], images, tmp_path / "masks", console=QUIET)
    assert not list((tmp_path / "masks").glob("*.png"))
    result = CliRunner().invoke(app, ["predict", str(trained[None]), str(images), "-o", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "b_rgb.png" in result.output


def test_cli_predicts_and_never_writes_into_the_image_folder(trained: dict, tmp_path: Path) -> None:
    data = trained["data"]
    inside = CliRunner().invoke(app, ["predict", str(trained[8]), str(data / "images"), "-o", str(data / "images" / "m")])
    assert inside.exit_code == 2 and "sits inside the input" in " ".join(inside.output.split())
    assert not (data / "images" / "m").exists()
    # nor into the dataset folder around it, nor into the model
    for out in (data / "m", trained[8] / "m", data):
        refused = CliRunner().invoke(app, ["predict", str(trained[8]), str(data), "-o", str(out)])
        assert refused.exit_code == 2 and f"--out {out}" in refused.output, refused.output
    assert not (data / "m").exists() and not (trained[8] / "m").exists()
    # nor into a folder predict did not write: the user's own masks there would mix with ours
    own = tmp_path / "own"
    write_image(own / "p1_0.png", np.zeros((16, 16), np.uint8))
    mixed = CliRunner().invoke(app, ["predict", str(trained[8]), str(data), "-o", str(own)])
    assert mixed.exit_code == 2 and "no prediction.json (p1_0.png)" in mixed.output, mixed.output
    assert [p.name for p in own.iterdir()] == ["p1_0.png"] and not read_image(own / "p1_0.png").any()
    result = CliRunner().invoke(app, ["predict", str(trained[8]), str(data), "-o", str(tmp_path / "m"), "--tta",
                                      "--overlap", "0.5"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "m").glob("*.png"))) == 8 and "8 masks predicted" in result.output
    bad = CliRunner().invoke(app, ["predict", str(trained[8]), str(data), "-o", str(tmp_path / "n"), "--overlap", "1"])
    assert bad.exit_code == 2 and "overlap" in bad.output
    odd = CliRunner().invoke(app, ["predict", str(trained[8]), str(data), "-o", str(tmp_path / "n"), "--window", "9"])
    assert odd.exit_code == 2 and "multiple of 2" in odd.output and not (tmp_path / "n").exists()
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "new" / "x.png", read_image(data / "images" / "p1_0.png"))
    mixed = CliRunner().invoke(app, ["predict", str(trained[8]), str(tmp_path / "new"), "-o", str(tmp_path / "k")])
    assert mixed.exit_code == 0 and "notes.txt" in mixed.output and sorted(os.listdir(tmp_path / "k")) == [
        "prediction.json", "x.png"]
