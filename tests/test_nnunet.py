"""nnU-Net raw import/export and file-type export: exact round trips, case-level splits, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_manifest
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.data.check import check_dataset
from segsynth.data.export import export_dataset
from segsynth.data.format import DatasetFormatError, DatasetSpec, load_spec, save_spec
from segsynth.data.io import DataReadError, read_image, write_image
from segsynth.data.loader import index_dataset
from segsynth.data.nnunet import export_nnunet, import_nnunet


def _arrays(root: Path) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(case id, sample id) -> (image, mask) as stored, for comparing datasets."""
    out = {}
    for ref in index_dataset(root):
        image, mask = read_image(ref.image_path), read_image(ref.mask_path)
        if ref.slice_index is not None:
            image, mask = image[..., ref.slice_index], mask[..., ref.slice_index]
        out[(ref.case_id, ref.id)] = (image, mask)
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y), key


@pytest.mark.parametrize(("channels", "ending"), [(1, ".png"), (3, ".png"), (1, ".nii.gz")])
def test_export_import_round_trip_is_exact(tmp_path: Path, dataset_factory, channels: int, ending: str) -> None:
    src = dataset_factory(channels=channels, labels=("background", "lesion", "vessel"))
    summary = export_nnunet(src, tmp_path / "Dataset501_Tiny", file_ending=ending)
    assert summary["num_training"] == 6 and summary["num_folds"] == 3
    raw = tmp_path / "Dataset501_Tiny"
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["numTraining"] == 6 and meta["file_ending"] == ending
    assert meta["labels"] == {"background": 0, "lesion": 1, "vessel": 2}
    assert len(meta["channel_names"]) == channels
    assert sorted(p.name for p in (raw / "imagesTr").iterdir())[:channels] == [f"p1_0_{c:04d}{ending}" for c in range(channels)]
    assert (raw / "labelsTr" / f"p1_0{ending}").is_file()
    back = tmp_path / "back"
    spec = import_nnunet(raw, back)
    assert spec.channels == channels and spec.cases == load_spec(src).cases
    assert check_dataset(back).ok, check_dataset(back).problems
    _assert_same(_arrays(src), _arrays(back))


def test_nifti_volumes_round_trip_whole(tmp_path: Path) -> None:
    src = tmp_path / "vol"
    rng = np.random.default_rng(1)
    for stem in ("v1", "v2"):
        write_image(src / "images" / f"{stem}.nii.gz", rng.random((8, 8, 3)).astype(np.float32))
        write_image(src / "masks" / f"{stem}.nii.gz", rng.integers(0, 2, (8, 8, 3)).astype(np.uint8))
    save_spec(src, DatasetSpec(name="vol", modality="CT", prompt="Spleen, CT", channels=1,
                               labels={"background": 0, "spleen": 1}, label_provenance="human", licence="CC0-1.0",
                               cases={"v1": "v1", "v2": "v2"}))
    export_nnunet(src, tmp_path / "raw", file_ending=".nii.gz")
    assert read_image(tmp_path / "raw" / "imagesTr" / "v1_0000.nii.gz").shape == (8, 8, 3)
    import_nnunet(tmp_path / "raw", tmp_path / "back")
    _assert_same(_arrays(src), _arrays(tmp_path / "back"))
    # a raster export of float volumes (TIFF) slices them, keeping the volume's case id
    sliced = export_dataset(src, tmp_path / "tif", fmt="tif")
    assert sliced.cases == {f"v{v}_z{z:03d}": f"v{v}" for v in (1, 2) for z in range(3)}
    assert check_dataset(tmp_path / "tif").ok


#: Synthetic stem -> the real sample its layout came from (None: composed) in the merge tests.
LAYOUTS = {"g1_0": "r1_0", "g1_1": "r1_1", "g1_2": "r2_0", "g2_0": "r3_1", "g2_1": "r6_0", "g2_2": None}


def test_merged_synthetic_cases_train_only_where_their_layouts_real_case_trains(tmp_path: Path, dataset_factory) -> None:
    real = dataset_factory("real", cases=("r1", "r2", "r3", "r4", "r5", "r6"), per_case=2, unlabeled=0)
    synth = dataset_factory("synth", cases=("g1", "g2"), per_case=3, unlabeled=0, seed=3)
    write_tiny_manifest(synth, LAYOUTS)
    summary = export_nnunet(synth, tmp_path / "raw", merge_real=real)
    assert (summary["num_real"], summary["num_synthetic"], summary["num_folds"]) == (12, 6, 5)
    splits = json.loads((tmp_path / "raw" / "splits_final.json").read_text())
    case_of = json.loads((tmp_path / "raw" / "dataset.json").read_text())["segsynth_cases"]
    real_ids = sorted(i for i in case_of if not i.startswith("syn_"))
    assert len(splits) == 5
    val_all = []
    for fold in splits:
        val_cases = {case_of[i] for i in fold["val"]}
        expected_synthetic = {f"syn_{stem}" for stem, layout in LAYOUTS.items() if layout is None or layout[:2] not in val_cases}
        assert {i for i in fold["train"] if i.startswith("syn_")} == expected_synthetic
        assert not any(i.startswith("syn_") for i in fold["val"])
        # every slice of a real case lands on the same side
        assert {i for i in real_ids if case_of[i] in val_cases} == set(fold["val"])
        assert {i for i in real_ids if case_of[i] not in val_cases} == {i for i in fold["train"] if not i.startswith("syn_")}
        val_all += fold["val"]
    assert sorted(val_all) == real_ids


def test_merge_refuses_synthetic_sets_of_unknown_provenance(tmp_path: Path, dataset_factory) -> None:
    real = dataset_factory("real", cases=("r1", "r2"), unlabeled=0)
    synth = dataset_factory("synth", cases=("g1",), unlabeled=0, seed=3)
    with pytest.raises(ValueError, match=r"manifest\.jsonl: missing"):
        export_nnunet(synth, tmp_path / "raw", merge_real=real)
    write_tiny_manifest(synth, {"g1_0": "r1_0", "g1_1": "other_7"})
    with pytest.raises(ValueError, match="'other_7', which is not a labelled sample"):
        export_nnunet(synth, tmp_path / "raw", merge_real=real)
    write_tiny_manifest(synth, {"g1_0": "r1_0"})
    with pytest.raises(ValueError, match=r"g1_1\.png: no line in"):
        export_nnunet(synth, tmp_path / "raw", merge_real=real)
    assert not (tmp_path / "raw").exists()


def test_import_multichannel_files_and_case_pattern(tmp_path: Path) -> None:
    raw = tmp_path / "Dataset002_Two"
    rng = np.random.default_rng(0)
    for ident in ("pat01_slice0", "pat01_slice1", "pat02_slice0"):
        for c in range(2):
            write_image(raw / "imagesTr" / f"{ident}_{c:04d}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
        write_image(raw / "labelsTr" / f"{ident}.png", rng.integers(0, 2, (8, 8), dtype=np.uint8))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "prostate": 1},
        "numTraining": 3, "file_ending": ".png", "name": "Prostate",
    }))
    spec = import_nnunet(raw, tmp_path / "ours", case_pattern=r"(pat\d+)_")
    assert spec.cases == {"pat01_slice0": "pat01", "pat01_slice1": "pat01", "pat02_slice0": "pat02"}
    assert spec.modality == "T2, ADC" and spec.channels == 2
    stacked = read_image(tmp_path / "ours" / "images" / "pat01_slice1.png")
    assert np.array_equal(stacked[..., 1], read_image(raw / "imagesTr" / "pat01_slice1_0001.png"))
    assert check_dataset(tmp_path / "ours").ok
    with pytest.raises(DatasetFormatError, match="does not match"):
        import_nnunet(raw, tmp_path / "bad", case_pattern=r"(case\d+)")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("meta_update", "match"), [
    ({"labels": {"background": 0, "whole": [1, 2], "core": 2}}, "region"),
    ({"file_ending": ".mha"}, "file_ending"),
    ({"numTraining": 9}, "numTraining"),
    ({"modality": {"0": "CT"}}, "v1"),
])
def test_import_refuses_with_clear_errors(tmp_path: Path, dataset_factory, meta_update: dict, match: str) -> None:
    export_nnunet(dataset_factory(), tmp_path / "raw")
    meta_path = tmp_path / "raw" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta.update(meta_update)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match=match):
        import_nnunet(tmp_path / "raw", tmp_path / "out")


def test_import_refuses_missing_label(tmp_path: Path, dataset_factory) -> None:
    export_nnunet(dataset_factory(), tmp_path / "raw")
    (tmp_path / "raw" / "labelsTr" / "p2_1.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"no label for case\(s\) \['p2_1'\]"):
        import_nnunet(tmp_path / "raw", tmp_path / "out")


@pytest.mark.parametrize("where", ["labelsTr/p2_1.png", "imagesTr/p2_1_0000.png"])
def test_import_refuses_a_folder_named_like_an_image(tmp_path: Path, dataset_factory, where: str) -> None:
    export_nnunet(dataset_factory(), tmp_path / "raw")
    path = tmp_path / "raw" / where
    path.unlink()
    path.mkdir()
    with pytest.raises(DataReadError, match=rf"{where}: is a folder, not an image file"):
        import_nnunet(tmp_path / "raw", tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()


def test_export_dataset_png_to_nifti_and_back(tmp_path: Path, dataset_factory) -> None:
    src = dataset_factory()
    export_dataset(src, tmp_path / "nii", fmt="nifti")
    assert check_dataset(tmp_path / "nii").ok
    export_dataset(tmp_path / "nii", tmp_path / "png", fmt="png")
    _assert_same(_arrays(src), _arrays(tmp_path / "png"))
    assert load_spec(tmp_path / "png").unlabeled_cases == load_spec(src).unlabeled_cases


def test_float_images_cannot_be_png_and_error_names_the_file(tmp_path: Path) -> None:
    src = tmp_path / "float"
    write_image(src / "images" / "f.tif", np.full((8, 8), 0.25, np.float32))
    write_image(src / "masks" / "f.png", np.zeros((8, 8), np.uint8))
    save_spec(src, DatasetSpec(name="f", modality="MRI", prompt="Brain, MRI", channels=1,
                               labels={"background": 0}, label_provenance="human", licence="CC0-1.0", cases={"f": "f"}))
    with pytest.raises(DataReadError, match=r"f\.tif: cannot be written as f_0000\.png"):
        export_nnunet(src, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_cli_export_and_import(tmp_path: Path, dataset_factory) -> None:
    runner = CliRunner()
    real, synth = dataset_factory("real"), dataset_factory("synth", cases=("g1",), seed=5)
    write_tiny_manifest(synth, {"g1_0": "p1_0", "g1_1": "p3_1"})
    raw = tmp_path / "nnUNet_raw" / "Dataset501_Tiny"
    result = runner.invoke(app, ["export", str(synth), "--format", "nnunet", "--out", str(raw), "--merge-real", str(real)])
    assert result.exit_code == 0, result.output
    assert "6 real, 2 synthetic" in result.output and (raw / "splits_final.json").is_file()
    result = runner.invoke(app, ["data", "import-nnunet", str(raw), "--out", str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    assert load_spec(tmp_path / "back").cases["syn_g1_0"] == "syn_g1"
    bad = runner.invoke(app, ["export", str(synth), "--format", "jpeg", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--format must be one of" in bad.output
    again = runner.invoke(app, ["export", str(synth), "--format", "png", "--out", str(raw)])
    assert again.exit_code == 2 and "already exists" in again.output
