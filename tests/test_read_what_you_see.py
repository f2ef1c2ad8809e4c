"""Data is read as the user sees it, or refused by name: EXIF orientation, palette images, Unicode
spellings of one file name, duplicate YAML keys, and special files (FIFOs) that would block forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_fifo, write_tiny_dataset
from PIL import Image, ImageOps
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.config import ConfigError, load_config
from segsynth.data.check import check_dataset
from segsynth.data.format import DatasetFormatError, load_spec
from segsynth.data.io import DataReadError, image_shape, read_image, write_image
from segsynth.data.loader import SegDataset, index_dataset
from segsynth.seg.config import SegTrainConfig
from segsynth.synth.styles import open_style_pool

SEGSYNTH = [sys.executable, "-c", "import sys; from segsynth.cli import main; sys.argv[0] = 'segsynth'; main()"]
TINY_SEG = {
    "network": {"channels": [8, 16], "strides": [2], "num_res_units": 0},
    "train": {"steps": 2, "val_every": 2, "batch_size": 2, "augment": "none"},
}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# --- EXIF orientation ---------------------------------------------------------------------------


def _rotated_jpeg_pair(root: Path, mask_as_shown: bool) -> tuple[np.ndarray, np.ndarray]:
    """Replace ``p1_0`` by a phone-style JPEG: pixels stored 16x32 (landscape) with EXIF orientation 6,
    so viewers show it 32x16 (portrait). Its mask is drawn on the shown picture (``mask_as_shown``)
    or saved in the stored orientation. Returns ``(shown image, mask as drawn on it)``."""
    yy, xx = np.mgrid[:32, :16]
    shown_mask = ((yy - 8) ** 2 + (xx - 8) ** 2 <= 16).astype(np.uint8)  # a disc near the top of the portrait
    shown = (40 + 180 * shown_mask).astype(np.uint8)
    stored = np.rot90(shown, 1)  # what a camera held sideways writes: rotating it 90° clockwise shows `shown`
    (root / "images" / "p1_0.png").unlink()
    Image.fromarray(np.ascontiguousarray(stored)).save(root / "images" / "p1_0.jpg", quality=100, exif=_exif(6))
    write_image(root / "masks" / "p1_0.png", shown_mask if mask_as_shown else np.ascontiguousarray(np.rot90(shown_mask, 1)))
    return shown, shown_mask


def test_exif_rotated_jpeg_is_read_as_shown_and_lines_up_with_its_mask(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), unlabeled=0)
    shown, mask = _rotated_jpeg_pair(root, mask_as_shown=True)
    assert np.array(Image.open(root / "images" / "p1_0.jpg")).shape == (16, 32)  # stored landscape
    assert np.array(ImageOps.exif_transpose(Image.open(root / "images" / "p1_0.jpg"))).shape == (32, 16)

    report = check_dataset(root)
    assert report.ok, report.errors
    (warning,) = [p for p in report.warnings if p.kind == "exif_orientation"]
    assert warning.file == "images/p1_0.jpg" and "rotated 90° clockwise" in warning.message and "6" in warning.message
    assert image_shape(root / "images" / "p1_0.jpg") == (32, 16)

    dataset = SegDataset(root)
    dataset.verify()
    image, loaded_mask = dataset.load_arrays([r.id for r in dataset.refs].index("p1_0"))
    assert image.shape == (1, 32, 16) and loaded_mask.shape == (32, 16)
    assert np.array_equal(loaded_mask, mask)
    assert _corr(image[0], shown) > 0.99  # the JPEG as shown, not 90° off
    assert image[0][mask == 1].mean() > image[0][mask == 0].mean() + 0.5


def test_mask_saved_in_the_stored_orientation_is_refused_naming_the_rotation(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), unlabeled=0)
    _rotated_jpeg_pair(root, mask_as_shown=False)
    (error,) = check_dataset(root).errors
    assert (error.kind, error.file) == ("shape_mismatch", "masks/p1_0.png")
    assert "images/p1_0.jpg is read rotated 90° clockwise by its EXIF orientation 6" in error.message
    with pytest.raises(DataReadError, match=r"p1_0\.png: mask shape \(16, 32\) != image shape \(32, 16\)"):
        SegDataset(root).verify()


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_every_orientation_is_read_as_pil_exif_transpose_shows_it_for_images_and_masks(tmp_path: Path, ext: str) -> None:
    import tifffile

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (5, 7), dtype=np.uint8)
    for orientation in range(1, 9):
        for name, arr in (("image", rgb), ("mask", labels)):
            path = tmp_path / f"{name}_{orientation}{ext}"
            if ext == ".png":
                Image.fromarray(arr).save(path, exif=_exif(orientation))
                shown = np.array(ImageOps.exif_transpose(Image.open(path)))
            else:
                tifffile.imwrite(path, arr, extratags=[(274, 3, 1, orientation, True)])
                shown = _pil_shown(arr, orientation)  # the same tag, as PIL applies it to a PNG
            is_mask = name == "mask"
            assert np.array_equal(read_image(path, mask=is_mask), shown), (name, orientation, ext)
            assert image_shape(path, mask=is_mask) == shown.shape, (name, orientation, ext)


def _pil_shown(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` as PIL's exif_transpose shows it under ``orientation`` (via a PNG carrying the tag)."""
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", exif=_exif(orientation))
    buf.seek(0)
    return np.array(ImageOps.exif_transpose(Image.open(buf)))


# --- palette images -----------------------------------------------------------------------------


def _palette_png(path: Path, indices: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Save ``indices`` as a palette PNG; return what a viewer shows (RGB)."""
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    img.putpalette(palette.astype(np.uint8).ravel().tolist())
    img.save(path)
    assert Image.open(path).mode == "P"
    return np.array(Image.open(path).convert("RGB"))


def test_palette_image_reads_as_the_colours_it_shows_and_palette_mask_as_indices(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = write_tiny_dataset(tmp_path / "grey", cases=("p1", "p2"), unlabeled=0)
    picture = np.array(Image.open(root / "images" / "p1_0.png"))
    # A grey palette whose index order is unrelated to brightness (as image editors write them).
    levels = np.unique(picture)
    order = rng.permutation(len(levels))
    palette = np.zeros((256, 3), np.uint8)
    palette[order] = levels[:, None]
    indices = order[np.searchsorted(levels, picture)]
    shown = _palette_png(root / "images" / "p1_0.png", indices, palette)[..., 0]
    assert np.array_equal(shown, picture)
    assert _corr(indices, shown) < 0.5  # the stored indices are not the picture

    assert check_dataset(root).ok, check_dataset(root).errors
    dataset = SegDataset(root)
    image = dataset.load_arrays([r.id for r in dataset.refs].index("p1_0"))[0]
    assert image.shape == (1, 16, 16)
    assert _corr(image[0], shown) > 0.999 and np.allclose(image[0], shown / 255.0)

    # A colour palette in an RGB dataset reads as its RGB colours.
    rgb_root = write_tiny_dataset(tmp_path / "rgb", cases=("p1", "p2"), channels=3, unlabeled=0)
    rgb = np.array(Image.open(rgb_root / "images" / "p1_0.png"))
    quantised = Image.fromarray(rgb).quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    quantised.save(rgb_root / "images" / "p1_0.png")
    shown_rgb = np.array(Image.open(rgb_root / "images" / "p1_0.png").convert("RGB"))
    assert check_dataset(rgb_root).ok, check_dataset(rgb_root).errors
    rgb_set = SegDataset(rgb_root)
    image = rgb_set.load_arrays([r.id for r in rgb_set.refs].index("p1_0"))[0]
    assert image.shape == (3, 16, 16) and np.allclose(np.moveaxis(image, 0, -1), shown_rgb / 255.0)

    # A colour palette in a one-channel dataset is refused by name, not read as indices.
    colours = rng.integers(0, 255, (256, 3))
    _palette_png(root / "images" / "p2_0.png", indices, colours)
    problems = {(p.kind, p.file) for p in check_dataset(root).errors}
    assert problems == {("channel_mismatch", "images/p2_0.png")}

    # Masks stored as palette PNGs keep their indices: the label values.
    labels = (indices % 2).astype(np.uint8)
    _palette_png(root / "masks" / "p1_1.png", labels, rng.integers(0, 255, (256, 3)))
    assert np.array_equal(read_image(root / "masks" / "p1_1.png", mask=True), labels)


# --- Unicode spellings of one name --------------------------------------------------------------


def test_nfd_file_names_match_nfc_dataset_json_keys(tmp_path: Path) -> None:
    """macOS writes file names decomposed (NFD); a dataset.json typed in an editor is composed (NFC)."""
    root = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), unlabeled=1)
    nfc, nfd = "café_01", unicodedata.normalize("NFD", "café_01")
    assert nfc != nfd and unicodedata.normalize("NFC", nfd) == nfc
    for folder, old in (("images", "p1_0"), ("masks", "p1_0"), ("unlabeled", "u1_0")):
        target = f"{nfd}.png" if folder != "unlabeled" else f"{unicodedata.normalize('NFD', 'stil é')}.png"
        (root / folder / f"{old}.png").rename(root / folder / target)
    spec = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    del spec["cases"]["p1_0"], spec["unlabeled_cases"]["u1_0"]
    spec["cases"][nfc] = "Café"
    spec["unlabeled_cases"]["stil é"] = "u1"
    (root / "dataset.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")

    report = check_dataset(root)
    assert report.ok and not report.warnings, report.problems
    ids = {ref.id: ref.case_id for ref in index_dataset(root)}
    assert ids[nfc] == "Café"
    assert "stil é" in {ref.id for ref in index_dataset(root, "unlabeled")}
    SegDataset(root).verify()

    # Two files that are one name in two spellings are ambiguous, like a.png and a.tif.
    write_image(root / "images" / f"{nfc}.png", np.zeros((16, 16), np.uint8))
    assert "duplicate_stem" in {p.kind for p in check_dataset(root).errors}
    with pytest.raises(DataReadError, match="shares the stem"):
        index_dataset(root)


def test_dataset_json_keys_in_two_spellings_of_one_name_are_refused(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), unlabeled=0)
    spec = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    spec["cases"]["café"] = "a"
    spec["cases"][unicodedata.normalize("NFD", "café")] = "b"
    (root / "dataset.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match="two Unicode spellings"):
        load_spec(root)


# --- duplicate YAML keys ------------------------------------------------------------------------


def test_duplicate_yaml_keys_are_refused_naming_file_key_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "seg.yaml"
    path.write_text("train:\n  steps: 5\nnetwork:\n  channels: [8, 16]\ntrain:\n  batch_size: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(SegTrainConfig, path)
    message = str(refused.value)
    assert str(path) in message and "'train'" in message and "lines 1 and 5" in message

    path.write_text("train:\n  steps: 5\n  batch_size: 2\n  steps: 7\n", encoding="utf-8")  # nested
    with pytest.raises(ConfigError, match=r"seg\.yaml: key 'steps' appears twice .*lines 2 and 4"):
        load_config(SegTrainConfig, path)

    path.write_text("train:\n  <<: {steps: 3, batch_size: 2}\n  steps: 4\n", encoding="utf-8")
    assert load_config(SegTrainConfig, path).train.steps == 4  # a merge key still overrides, as YAML intends

    path.write_text("train:\n  steps: 5\ntrain:\n  steps: 6\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train-seg", str(tmp_path), "--out", str(tmp_path.parent / f"{tmp_path.name}-run"), "--config", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    flat = " ".join(result.output.split())
    assert "seg.yaml" in flat and "'train' appears twice" in flat and "lines 1 and 3" in flat
    assert not (tmp_path.parent / f"{tmp_path.name}-run").exists()

    result = CliRunner().invoke(app, ["train-seg", str(tmp_path), "--out", str(tmp_path.parent / f"{tmp_path.name}-run"),
                                      "--set", "train={steps: 1, steps: 2}"])
    assert result.exit_code == 2 and "'steps' appears twice" in " ".join(result.output.split())


# --- special files ------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["images", "masks", "unlabeled"])
def test_a_fifo_in_a_data_folder_is_refused_by_name_without_opening_it(tmp_path: Path, folder: str) -> None:
    root = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), unlabeled=1)
    fifo = make_fifo(root / folder / "zz_9.png")
    errors = {(p.kind, p.file): p.message for p in check_dataset(root).errors}
    assert ("special_file", f"{folder}/zz_9.png") in errors, errors
    assert "FIFO" in errors[("special_file", f"{folder}/zz_9.png")]
    split = "unlabeled" if folder == "unlabeled" else "labeled"
    with pytest.raises(DataReadError, match=r"zz_9\.png: is a FIFO") as refused:
        index_dataset(root, split)
    assert refused.value.kind == "special_file"
    with pytest.raises(DataReadError, match=r"zz_9\.png: is a FIFO"):
        image_shape(fifo)
    if folder == "unlabeled":
        with pytest.raises(DataReadError, match=r"zz_9\.png: is a FIFO"):
            open_style_pool(root, channels=1)


def test_a_dataset_json_that_is_not_a_file_is_named_as_such_not_as_missing(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"))
    (root / "dataset.json").unlink()
    with pytest.raises(DatasetFormatError, match="missing"):
        load_spec(root)
    make_fifo(root / "dataset.json")
    with pytest.raises(DatasetFormatError, match=r"dataset\.json: not a regular file"):
        load_spec(root)


def test_a_fifo_among_style_images_is_refused_by_name(tmp_path: Path) -> None:
    styles = tmp_path / "styles"
    styles.mkdir()
    write_image(styles / "a_0.png", np.full((16, 16), 9, np.uint8))
    make_fifo(styles / "b_0.png")
    with pytest.raises(DataReadError, match=r"b_0\.png: is a FIFO"):
        open_style_pool(styles, channels=1)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """A real ``segsynth`` process: a regression that blocks on the FIFO is killed and fails the test."""
    try:
        return subprocess.run([*SEGSYNTH, *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"segsynth {args[0]} still running after {timeout} s: it opened the FIFO")


def test_data_check_and_train_seg_refuse_a_fifo_without_hanging_or_leaving_a_lock(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3"), unlabeled=0)
    os.mkfifo(root / "images" / "p9_0.png")  # no watchdog: only the timeout stands between a regression and a hang
    check = _run(["data", "check", str(root), "--json"], timeout=120)
    assert check.returncode == 1, check.stderr
    problems = json.loads(check.stdout)["problems"]
    assert {"kind": "special_file", "file": "images/p9_0.png"}.items() <= next(
        p for p in problems if p["kind"] == "special_file").items()

    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump(TINY_SEG), encoding="utf-8")
    out = tmp_path / "run"
    seg = _run(["train-seg", str(root), "--out", str(out), "--config", str(config)], timeout=300)
    message = " ".join(seg.stderr.split())
    assert seg.returncode == 2, seg.stderr
    assert "p9_0.png" in message and "FIFO" in message and "Traceback" not in seg.stderr
    assert not out.exists(), "refused before writing: no run folder, no lock left behind"


def test_sigterm_while_blocked_releases_the_lock_and_the_empty_folder(tmp_path: Path) -> None:
    """A command stuck on a file and stopped with SIGTERM (``timeout``, ``kill``) leaves no lock behind."""
    import signal
    import time

    fifo, out = tmp_path / "pipe.png", tmp_path / "run"
    os.mkfifo(fifo)
    script = ("import sys; from segsynth.io.lock import folder_lock\n"
              "with folder_lock(sys.argv[1]):\n    open(sys.argv[2], 'rb').read()\n")
    process = subprocess.Popen([sys.executable, "-c", script, str(out), str(fifo)])
    try:
        deadline = time.monotonic() + 60
        while not (out / ".segsynth.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (out / ".segsynth.lock").exists(), "the child never took the lock"
        time.sleep(0.2)  # now blocked opening the FIFO
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        process.kill()
        process.wait()
    assert not out.exists(), "lock and the folder it created were left behind"


def test_cmyk_jpeg_image_reads_as_the_rgb_it_shows(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    path = tmp_path / "print.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    shown = np.array(Image.open(path).convert("RGB"))
    assert image_shape(path) == (16, 16, 3)
    assert np.array_equal(read_image(path), shown)


def test_nnunet_import_matches_nfd_labels_and_refuses_a_fifo_by_name(tmp_path: Path) -> None:
    from segsynth.data.nnunet import export_nnunet, import_nnunet

    raw = tmp_path / "raw"
    export_nnunet(write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), unlabeled=0), raw)
    (raw / "imagesTr" / "p1_0_0000.png").rename(raw / "imagesTr" / "café_0_0000.png")  # NFC image
    (raw / "labelsTr" / "p1_0.png").rename(raw / "labelsTr" / unicodedata.normalize("NFD", "café_0.png"))
    spec = import_nnunet(raw, tmp_path / "imported")
    assert "café_0" in spec.cases

    (raw / "labelsTr" / "p2_1.png").unlink()
    make_fifo(raw / "labelsTr" / "p2_1.png")
    with pytest.raises(DataReadError, match=r"p2_1\.png: is a FIFO"):
        import_nnunet(raw, tmp_path / "again")
    assert not (tmp_path / "again").exists()
