"""Broken datasets through every command that reads data, via the CLI.

Each kind of breakage is written into a small valid dataset and then fed to ``data check``,
``data info``, ``train-diffusion``, ``train-seg``, ``generate`` (layouts and style pool) and
``benchmark``. Every command that reads the broken file must stop with a non-zero exit, no
traceback, and a message naming the file and the problem, before it writes any output. Commands
that do not read that file (``data info`` decodes masks and reads only image headers) are not
expected to fail; conversions the readers apply on purpose are tested at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_DIFFUSION_MODEL, make_fifo, write_tiny_dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import segsynth.data.check as check_module
from segsynth.artifacts.schemas import ManifestRecord
from segsynth.cli import app
from segsynth.data.check import check_dataset
from segsynth.data.format import DatasetFormatError, DatasetSpec, save_spec
from segsynth.data.io import DataReadError, write_image
from segsynth.data.loader import SegDataset
from segsynth.diffusion.objective import ObjectiveConfig, make_train_scheduler
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.models.config import ModelConfig
from segsynth.models.model import SegSynthModel

torch.set_num_threads(1)

CHECK, INFO, DIFFUSION, SEG, GENERATE, BENCHMARK = "check", "info", "train-diffusion", "train-seg", "generate", "benchmark"
ALL = (CHECK, INFO, DIFFUSION, SEG, GENERATE, BENCHMARK)
#: Commands that decode labelled images (``data info`` reads masks and image headers only).
IMAGE_READERS = (CHECK, DIFFUSION, SEG, GENERATE, BENCHMARK)

TINY_DIFFUSION = {
    "model": TINY_DIFFUSION_MODEL,
    "train": {"steps": 1, "batch_size": 2, "warmup": 0, "log_every": 1, "sample_every": 0, "checkpoint_every": 1},
    "sampling": {"steps": 1, "grid_rows": 1},
}
TINY_SEG = {
    "network": {"channels": [8, 16], "strides": [2], "num_res_units": 0},
    "train": {"steps": 2, "val_every": 2, "batch_size": 2, "augment": "none"},
}


# --- shared inputs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("configs")
    paths = {}
    for name, data in {
        "diffusion": TINY_DIFFUSION,
        "seg": TINY_SEG,
    }.items():
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(data), encoding="utf-8")
    bench = {
        "folds": 2, "run_folds": [0], "seeds": [0], "settings": ["ratio:0.5"], "val_fraction": 0.5,
        "diffusion_config": str(paths["diffusion"]),
        "segmentation_config": str(paths["seg"]),
        "generation": {"n": 2, "steps": 1, "batch_size": 2},
    }
    paths["benchmark"] = folder / "benchmark.yaml"
    paths["benchmark"].write_text(yaml.safe_dump(bench), encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 16 px, 1-channel, 2-class pipeline saved to disk (what ``generate`` loads)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=16, image_channels=1, num_classes=2, block_out_channels=(8, 16), attention_levels=(False, True),
        style={"encoder_channels": (8, 16), "dim": 16, "num_refs": 2},
    )
    pipe = SegSynthPipeline.from_model(SegSynthModel.from_config(cfg), make_train_scheduler(ObjectiveConfig()))
    path = tmp_path_factory.mktemp("pipe") / "pipeline"
    pipe.save_pretrained(path)
    return path


def command_args(command: str, data: Path, work: Path, configs: dict[str, Path], pipeline: Path) -> list[str]:
    out = work / f"out-{command}"
    return {
        CHECK: ["data", "check", str(data), "--json"],
        INFO: ["data", "info", str(data)],
        DIFFUSION: ["train-diffusion", str(data), "--out", str(out), "--config", str(configs["diffusion"])],
        SEG: ["train-seg", str(data), "--out", str(out), "--config", str(configs["seg"])],
        GENERATE: [
            "generate", str(pipeline), "--out", str(out), "-n", "2", "--steps", "1", "--batch-size", "2",
            "--layout-data", str(data), "--styles", str(data),
        ],
        BENCHMARK: ["benchmark", str(data), "--out", str(out), "--config", str(configs["benchmark"])],
    }[command]


def invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    # A clean refusal is a SystemExit from typer.Exit; anything else escaped as a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args[0]} crashed: {result.exception!r}\n{result.output}"
    )
    return result


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text)


# --- the broken datasets ------------------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` (nothing near that size is ever allocated)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def _spec(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text(encoding="utf-8"))


def _write_spec(root: Path, data: dict) -> None:
    (root / "dataset.json").write_text(json.dumps(data), encoding="utf-8")


def truncated_png(root: Path) -> str:
    path = root / "images" / "p1_0.png"
    path.write_bytes(path.read_bytes()[:60])
    return "images/p1_0.png"


def mask_0_255(root: Path) -> str:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 4:10] = 255  # a binary mask saved as 0/255 instead of 0/1
    write_image(root / "masks" / "p1_1.png", mask)
    return "masks/p1_1.png"


def rgba_image(root: Path) -> str:
    write_image(root / "images" / "p2_0.png", np.full((16, 16, 4), 100, np.uint8))
    return "images/p2_0.png"


def antialiased_mask(root: Path) -> str:
    big = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(big).ellipse((10, 12, 50, 54), fill=1)
    # Drawn at 4x and downscaled like a drawing program would: edge pixels become in-between values.
    smooth = np.asarray(big.point(lambda v: v * 255).resize((16, 16), Image.LANCZOS))
    assert len(np.unique(smooth)) > 3
    write_image(root / "masks" / "p2_1.png", smooth)
    return "masks/p2_1.png"


def nan_in_nifti_image(root: Path) -> str:
    (root / "images" / "p3_0.png").unlink()
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    image[2, 3] = np.nan
    write_image(root / "images" / "p3_0.nii.gz", image)
    return "images/p3_0.nii.gz"


def nan_in_nifti_mask(root: Path) -> str:
    (root / "masks" / "p3_1.png").unlink()
    mask = np.zeros((16, 16), np.float32)
    mask[5, 5] = np.nan
    write_image(root / "masks" / "p3_1.nii.gz", mask)
    return "masks/p3_1.nii.gz"


def stack_where_2d_expected(root: Path) -> str:
    (root / "images" / "p4_0.png").unlink()
    write_image(root / "images" / "p4_0.tif", np.zeros((5, 16, 16), np.uint8))  # 5 slices, not 16 channels
    return "images/p4_0.tif"


def rgb_mask(root: Path) -> str:
    write_image(root / "masks" / "p4_1.png", np.zeros((16, 16, 3), np.uint8))
    return "masks/p4_1.png"


def zero_size_image(root: Path) -> str:
    (root / "images" / "p1_0.png").unlink()
    with pytest.warns(UserWarning):
        import tifffile

        tifffile.imwrite(root / "images" / "p1_0.tif", np.zeros((0, 16), np.uint8))
    return "images/p1_0.tif"


def huge_image(root: Path) -> str:
    _png_header_only(root / "images" / "p2_0.png", 20_000, 20_000)
    return "images/p2_0.png"


def huge_style_image(root: Path) -> str:
    _png_header_only(root / "unlabeled" / "u1_0.png", 30_000, 30_000)
    return "unlabeled/u1_0.png"


def mismatched_sizes(root: Path) -> str:
    write_image(root / "masks" / "p3_0.png", np.zeros((16, 12), np.uint8))
    return "masks/p3_0.png"


def undeclared_label(root: Path) -> str:
    mask = np.zeros((16, 16), np.uint8)
    mask[0, 0] = 7
    write_image(root / "masks" / "p1_0.png", mask)
    return "masks/p1_0.png"


def fractional_mask(root: Path) -> str:
    (root / "masks" / "p2_0.png").unlink()
    write_image(root / "masks" / "p2_0.tif", np.full((16, 16), 0.5, np.float32))
    return "masks/p2_0.tif"


def symlink_out_of_tree(root: Path) -> str:
    outside = root.parent / f"{root.name}-outside.png"
    write_image(outside, np.zeros((16, 16), np.uint8))
    (root / "images" / "p3_1.png").unlink()
    os.symlink(outside, root / "images" / "p3_1.png")
    return "images/p3_1.png"


def missing_mask(root: Path) -> str:
    (root / "masks" / "p2_0.png").unlink()
    return "images/p2_0.png"


def jpeg_mask(root: Path) -> str:
    (root / "masks" / "p1_1.png").unlink()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "p1_1.jpg")
    return "masks/p1_1.jpg"


def missing_case_id(root: Path) -> str:
    data = _spec(root)
    del data["cases"]["p4_1"]
    _write_spec(root, data)
    return "images/p4_1.png"


def stray_file(root: Path) -> str:
    (root / "images" / "notes.txt").write_text("scanner settings", encoding="utf-8")
    return "images/notes.txt"


def empty_unlabeled_pool(root: Path) -> str:
    for path in (root / "unlabeled").iterdir():
        path.unlink()
    data = _spec(root)
    data["unlabeled_cases"] = {}
    _write_spec(root, data)
    return "unlabeled"


def single_case(root: Path) -> str:
    data = _spec(root)
    data["cases"] = {stem: "p1" for stem in data["cases"]}
    _write_spec(root, data)
    return "dataset.json"


@dataclass(frozen=True)
class Kind:
    """One kind of broken dataset: how to break it, what the message says, who must refuse it."""

    breaker: Callable[[Path], str]
    problem: str  # regex, matched case-insensitively against the one-line message
    check_kind: str | None  # the ``data check`` problem kind (None: check accepts the dataset)
    refused_by: tuple[str, ...]


KINDS = {
    "truncated_png": Kind(truncated_png, r"truncated|unreadable", "unreadable", IMAGE_READERS),
    "8bit_mask_0_255": Kind(mask_0_255, r"\[255\].*(0/255|declared)", "undeclared_label", ALL),
    "rgba_image": Kind(rgba_image, r"4 channel", "channel_mismatch", IMAGE_READERS),
    "antialiased_mask_edges": Kind(antialiased_mask, r"declared label.*anti-aliased|anti-aliased", "undeclared_label", ALL),
    "nan_in_nifti_image": Kind(nan_in_nifti_image, r"NaN", "non_finite", IMAGE_READERS),
    "nan_in_nifti_mask": Kind(nan_in_nifti_mask, r"non-integer", "non_integer_mask", ALL),
    "3d_stack_where_2d_expected": Kind(stack_where_2d_expected, r"slice stack belongs in NIfTI", "bad_dims", IMAGE_READERS),
    "rgb_mask": Kind(rgb_mask, r"mask must be 2D", "bad_dims", ALL),
    "zero_size_image": Kind(zero_size_image, r"zero-size", "unreadable", IMAGE_READERS),
    "huge_dimensions": Kind(huge_image, r"safe load limit", "too_large", IMAGE_READERS),
    "huge_style_image": Kind(huge_style_image, r"safe load limit", "too_large", (CHECK, GENERATE, BENCHMARK)),
    "mismatched_sizes": Kind(mismatched_sizes, r"mask shape \(16, 12\) != image shape \(16, 16\)", "shape_mismatch", IMAGE_READERS),
    "undeclared_label": Kind(undeclared_label, r"\[7\]", "undeclared_label", ALL),
    "fractional_mask": Kind(fractional_mask, r"non-integer", "non_integer_mask", ALL),
    "symlink_out_of_tree": Kind(symlink_out_of_tree, r"leaves the dataset folder", "symlink_outside", ALL),
    "missing_mask": Kind(missing_mask, r"no mask", "missing_mask", ALL),
    "jpeg_mask": Kind(jpeg_mask, r"lossy JPEG", "unsupported_file", ALL),
    "missing_case_id": Kind(missing_case_id, r"no case id", "missing_case_id", ALL),
    "stray_file": Kind(stray_file, r"no case id|unsupported", "unsupported_file", ALL),
    "empty_unlabeled_pool": Kind(empty_unlabeled_pool, r"no unlabelled images", None, (GENERATE, BENCHMARK)),
    "single_case_for_kfold": Kind(single_case, r"cannot make 2 folds by case from 1 case|at least 2 cases", None, (SEG, BENCHMARK)),
}


def broken_dataset(root: Path, name: str) -> tuple[Path, str]:
    data = write_tiny_dataset(root / "data", cases=("p1", "p2", "p3", "p4"), per_case=2, size=16, unlabeled=2)
    return data, KINDS[name].breaker(data)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_command_refuses_the_broken_file_by_name(
    name: str, tmp_path: Path, configs: dict[str, Path], pipeline_dir: Path
) -> None:
    kind = KINDS[name]
    data, broken = broken_dataset(tmp_path, name)
    broken_name = Path(broken).name
    for command in ALL:
        result = invoke(command_args(command, data, tmp_path, configs, pipeline_dir))
        out = tmp_path / f"out-{command}"
        if command == CHECK:
            payload = json.loads(result.stdout)
            if kind.check_kind is None:
                assert result.exit_code == 0 and payload["ok"], payload
                continue
            assert result.exit_code == 1
            found = {(p["kind"], p["file"]) for p in payload["problems"] if p["severity"] == "error"}
            assert (kind.check_kind, broken) in found, found
            continue
        if command not in kind.refused_by:
            continue  # this command does not read the broken file; see the module docstring
        message = one_line(result.output)
        assert result.exit_code == 2, f"{command}: exit {result.exit_code}\n{result.output}"
        assert "Traceback" not in result.output
        assert broken_name in message, f"{command}: file not named: {message}"
        assert re.search(kind.problem, message, re.IGNORECASE), f"{command}: problem not named: {message}"
        assert not out.exists(), f"{command} wrote {out} before refusing"


# The error kinds of ``data check`` that break the dataset as a whole (its root, dataset.json, its
# file pairing) rather than one image's content, each written into a valid dataset here.
def not_a_folder(root: Path) -> str:
    shutil.rmtree(root)
    return "."


def missing_dataset_json(root: Path) -> str:
    (root / "dataset.json").unlink()
    return "dataset.json"


def invalid_dataset_json(root: Path) -> str:
    data = _spec(root)
    data["channels"] = "three"
    _write_spec(root, data)
    return "dataset.json"


def label_zero_not_background(root: Path) -> str:
    data = _spec(root)
    data["labels"] = {"tissue": 0, "lesion": 1}
    _write_spec(root, data)
    return "dataset.json"


def labels_not_consecutive(root: Path) -> str:
    data = _spec(root)
    data["labels"] = {"background": 0, "lesion": 2}
    _write_spec(root, data)
    return "dataset.json"


def empty_dataset(root: Path) -> str:
    for folder in ("images", "masks"):
        for path in (root / folder).iterdir():
            path.unlink()
    return "images"


def duplicate_stem(root: Path) -> str:
    write_image(root / "images" / "p1_0.tif", np.zeros((16, 16), np.uint8))
    return "images/p1_0.tif"


def extra_mask(root: Path) -> str:
    write_image(root / "masks" / "zz_9.png", np.zeros((16, 16), np.uint8))
    return "masks/zz_9.png"


def too_small(root: Path) -> str:
    write_image(root / "images" / "p2_1.png", np.zeros((1, 16), np.uint8))
    return "images/p2_1.png"


def special_file(root: Path) -> str:
    (root / "images" / "p2_1.png").unlink()
    make_fifo(root / "images" / "p2_1.png", watch_s=30)  # in place of a paired image: only the FIFO is wrong
    return "images/p2_1.png"


DATASET_KINDS = {
    "not_a_folder": not_a_folder, "missing_dataset_json": missing_dataset_json,
    "invalid_dataset_json": invalid_dataset_json, "label_zero_not_bg": label_zero_not_background,
    "labels_not_consecutive": labels_not_consecutive, "empty_dataset": empty_dataset,
    "duplicate_stem": duplicate_stem, "extra_mask": extra_mask, "too_small": too_small,
    "special_file": special_file,
}


def documented_error_kinds() -> set[str]:
    """The ``error`` rows of the problem-kind table in :mod:`segsynth.data.check`'s docstring."""
    return set(re.findall(r"^``(\w+)``\s+error\b", check_module.__doc__ or "", re.MULTILINE))


def test_every_documented_error_kind_is_triggered_and_refused_with_its_code(tmp_path: Path) -> None:
    """The kinds above and in ``KINDS`` are together every error ``data check`` documents (a new
    kind without a broken dataset here fails, as does a case for a kind no longer documented),
    and each breakage really produces its kind: ``check_dataset`` reports it at the broken file,
    and ``SegDataset(...).verify()``, what every command runs before any work, refuses the
    folder naming that file, while the unbroken dataset passes both."""
    documented = documented_error_kinds()
    from_table = {kind.check_kind for kind in KINDS.values() if kind.check_kind is not None}
    assert len(documented) >= 20 and not from_table & DATASET_KINDS.keys()
    assert documented == from_table | DATASET_KINDS.keys(), (
        f"untested: {sorted(documented - from_table - DATASET_KINDS.keys())}, "
        f"not documented: {sorted((from_table | DATASET_KINDS.keys()) - documented)}")
    valid = write_tiny_dataset(tmp_path / "valid", cases=("p1", "p2", "p3", "p4"), per_case=2, size=16, unlabeled=2)
    assert check_dataset(valid).errors == []
    SegDataset(valid).verify()
    cases = [(kind, breaker) for kind, breaker in DATASET_KINDS.items()]
    cases += [(kind.check_kind, kind.breaker) for kind in KINDS.values() if kind.check_kind is not None]
    for index, (code, breaker) in enumerate(cases):
        data = write_tiny_dataset(tmp_path / f"case{index}", cases=("p1", "p2", "p3", "p4"), per_case=2, size=16,
                                  unlabeled=2)
        broken = breaker(data)
        errors = {(p.kind, p.file) for p in check_dataset(data).errors}
        assert (code, broken) in errors, (breaker.__name__, errors)
        with pytest.raises((DataReadError, DatasetFormatError)) as refused:
            SegDataset(data).verify()
        named = data.name if broken == "." else Path(broken).name
        assert named in str(refused.value), (breaker.__name__, str(refused.value))

# --- names that must simply work ----------------------------------------------------------------


def unicode_dataset(root: Path) -> Path:
    """Stems, cases and folders with spaces, accents and non-Latin script."""
    rng = np.random.default_rng(0)
    cases = {}
    for case in ("Patient Ä 1", "患者 2", "café 3", "naïve 4"):
        for idx in range(2):
            stem = f"{case} scan_{idx}"
            yy, xx = np.mgrid[:16, :16]
            mask = (((yy - 8) ** 2 + (xx - 4 - 3 * idx) ** 2) < 16).astype(np.uint8)
            image = np.clip(60 + 120 * mask + rng.normal(0, 10, mask.shape), 0, 255).astype(np.uint8)
            write_image(root / "images" / f"{stem}.png", image)
            write_image(root / "masks" / f"{stem}.png", mask)
            cases[stem] = case
    unlabeled = {}
    for idx in range(2):
        stem = f"stil é {idx}"
        write_image(root / "unlabeled" / f"{stem}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
        unlabeled[stem] = "stil é"
    save_spec(root, DatasetSpec(
        name="ünïcode set", modality="test", prompt="Zellen, Mikroskopie", channels=1,
        labels={"background": 0, "Läsion": 1}, label_provenance="human", licence="CC0-1.0",
        cases=cases, unlabeled_cases=unlabeled,
    ))
    return root


def test_unicode_and_spaces_in_names_work_through_every_command(tmp_path: Path, configs: dict[str, Path]) -> None:
    work = tmp_path / "Ordner mit Leerzeichen ü"
    data = unicode_dataset(work / "daten ß")
    assert invoke(["data", "check", str(data)]).exit_code == 0
    info = invoke(["data", "info", str(data), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["images_per_case"] == {"Patient Ä 1": 2, "café 3": 2, "naïve 4": 2, "患者 2": 2}

    run = work / "läuft 1"
    result = invoke(["train-diffusion", str(data), "--out", str(run), "--config", str(configs["diffusion"])])
    assert result.exit_code == 0, result.output
    assert "Patient Ä 1 scan_0" in json.loads((run / "training_data.json").read_text(encoding="utf-8"))["train_ids"]

    synth = work / "synth ü"
    result = invoke(["generate", str(run), "--out", str(synth), "-n", "2", "--steps", "1", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (synth / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["layout_id"].rsplit(" scan_", 1)[0] for r in records} <= {"Patient Ä 1", "患者 2", "café 3", "naïve 4"}
    assert all(ref.startswith("stil é") for r in records for ref in r["style_ids"])

    seg = work / "seg ß"
    result = invoke(["train-seg", str(data), "--synthetic", str(synth), "--out", str(seg), "--config", str(configs["seg"])])
    assert result.exit_code == 0, result.output
    split = json.loads((seg / "split.json").read_text(encoding="utf-8"))
    assert set(split["train_cases"]) | set(split["val_cases"]) | set(split["test_cases"]) == {
        "Patient Ä 1", "患者 2", "café 3", "naïve 4"
    }

    from segsynth.benchmark import BenchmarkConfig, prepare_benchmark
    from segsynth.config import load_config

    folds = prepare_benchmark(data, work / "bänch", load_config(BenchmarkConfig, configs["benchmark"]))
    assert len(folds) == 2 and all(len(f.test_cases) == 2 for f in folds)


# --- documented conversions ---------------------------------------------------------------------


def test_16bit_images_are_scaled_by_percentiles_and_8bit_by_255(tmp_path: Path) -> None:
    """README "Dataset format": 8-bit intensities are divided by 255; 16-bit (and float) images
    are clipped to their own 0.5-99.5 percentiles, so a 12-bit scan in a 16-bit PNG is not dark."""
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), unlabeled=0)
    twelve_bit = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 16)  # 0..4080
    write_image(data / "images" / "p1_0.png", twelve_bit)
    assert Image.open(data / "images" / "p1_0.png").mode.startswith("I")
    assert check_dataset(data).ok
    dataset = SegDataset(data)
    dataset.verify()
    image16 = dataset.load_arrays([r.id for r in dataset.refs].index("p1_0"))[0]
    image8 = dataset.load_arrays([r.id for r in dataset.refs].index("p2_0"))[0]
    assert image16.dtype == np.float32 and image16.min() == 0.0 and image16.max() == 1.0
    assert np.median(image16) == pytest.approx(0.5, abs=0.02)  # full range used, not 4080/65535
    raw8 = np.asarray(Image.open(data / "images" / "p2_0.png"))
    assert np.array_equal(image8[0], raw8.astype(np.float32) / 255)


def test_16bit_and_palette_masks_read_as_label_values(tmp_path: Path) -> None:
    """A 16-bit mask holds its label values; a palette (indexed-colour) PNG mask is read as its
    palette indices, not its colours: index k is label k."""
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), unlabeled=0)
    labels = np.zeros((16, 16), np.uint16)
    labels[3:9, 3:9] = 1
    write_image(data / "masks" / "p1_0.png", labels)
    assert Image.open(data / "masks" / "p1_0.png").mode.startswith("I")
    palette = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))  # label 1 drawn red
    palette.save(data / "masks" / "p2_0.png")
    assert Image.open(data / "masks" / "p2_0.png").mode == "P"
    assert check_dataset(data).ok, check_dataset(data).problems
    dataset = SegDataset(data)
    ids = [r.id for r in dataset.refs]
    for stem in ("p1_0", "p2_0"):
        mask = dataset.load_arrays(ids.index(stem))[1]
        assert mask.dtype == np.int64 and np.array_equal(mask, labels.astype(np.int64)), stem
    info = invoke(["data", "info", str(data), "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["class_presence"]["lesion"] == 1.0


def test_palette_mask_with_an_undeclared_index_is_refused(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), unlabeled=0)
    indices = np.zeros((16, 16), np.uint8)
    indices[0, :4] = 3
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette(list(range(256)) * 3)
    palette.save(data / "masks" / "p1_1.png")
    problems = [(p.kind, p.file) for p in check_dataset(data).errors]
    assert problems == [("undeclared_label", "masks/p1_1.png")]
    with pytest.raises(ValueError, match=r"p1_1\.png: undeclared label values \[3\]"):
        SegDataset(data).verify()


# --- configs and CLI values that cannot work ----------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["--style-guidance", "-1"], "style_guidance"),
        (["--layout-guidance", "-0.5"], "layout_guidance"),
        (["--guidance-rescale", "1.5"], "guidance_rescale"),
        (["--num-refs", "0"], "num_refs"),
        (["--steps", "0"], "steps"),
        (["-n", "0"], "n"),
        (["--batch-size", "0"], "batch_size"),
        (["--shard", "2/2"], "shard"),
        (["--layouts", "painted"], "layouts"),
    ],
)
def test_generate_refuses_impossible_values_before_writing(
    extra: list[str], key: str, tmp_path: Path, pipeline_dir: Path
) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "synth"
    args = ["generate", str(pipeline_dir), "--out", str(out), "-n", "2", "--steps", "1", "--layout-data", str(data),
            "--styles", str(data)]
    result = invoke(args + extra)
    assert result.exit_code == 2, result.output
    assert re.search(rf"\b{key}\b", one_line(result.output)), result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["sampling.style_guidance_scale=-1"], "sampling.style_guidance_scale"),
        (["model.style.num_refs=0"], "model.style.num_refs"),
        (["model.image_size=17"], "image_size 17 is not divisible"),
        (["train.steps=0"], "train.steps"),
        (["train.stpes=3"], "train.stpes: unknown key"),
        (["train.batch_size=many"], "train.batch_size"),
        (["sampling.guidance_rescale=2"], "sampling.guidance_rescale"),
    ],
)
def test_train_diffusion_refuses_impossible_values_before_reading_data(
    overrides: list[str], key: str, tmp_path: Path, configs: dict[str, Path]
) -> None:
    out = tmp_path / "run"
    args = ["train-diffusion", str(tmp_path / "no-such-data"), "--out", str(out), "--config", str(configs["diffusion"])]
    for item in overrides:
        args += ["--set", item]
    result = invoke(args)
    assert result.exit_code == 2 and key in one_line(result.output), result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("section", "value", "key"),
    [
        ("network", {"channels": [8, 16], "strides": [2, 2]}, "strides"),
        ("train", {"steps": 0}, "train.steps"),
        ("train", {"epoch": 3}, "train.epoch: unknown key"),
        ("mix", {"synthetic_fraction": 1.5}, "mix.synthetic_fraction"),
        ("optim", {"lr": "fast"}, "optim.lr"),
    ],
)
def test_train_seg_refuses_bad_config_keys_before_writing(section: str, value: dict, key: str, tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    cfg = tmp_path / "seg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_SEG, section: {**TINY_SEG.get(section, {}), **value}}), encoding="utf-8")
    out = tmp_path / "run"
    result = invoke(["train-seg", str(data), "--out", str(out), "--config", str(cfg)])
    assert result.exit_code == 2 and key in one_line(result.output), result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"folds": 1}, "folds"),
        ({"segmentation_overrides": {"train.epoch": 3}}, "train.epoch: unknown key"),
        ({"diffusion_overrides": {"sampling.style_guidance_scale": -2}}, "sampling.style_guidance_scale"),
        ({"generation": {"steps": 0}}, "generation.steps"),
    ],
)
def test_benchmark_checks_every_stage_config_before_any_work(
    change: dict, key: str, tmp_path: Path, configs: dict[str, Path]
) -> None:
    """A typo in the segmentation settings must not surface after the diffusion models trained."""
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3", "p4"))
    cfg = yaml.safe_load(configs["benchmark"].read_text(encoding="utf-8"))
    cfg.update(change)
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = tmp_path / "bench"
    result = invoke(["benchmark", str(data), "--out", str(out), "--config", str(path)])
    assert result.exit_code == 2 and key in one_line(result.output), result.output
    assert not out.exists()


# --- manifest paths -----------------------------------------------------------------------------


def _record(image: str, mask: str = "masks/synth_0000000.png") -> dict:
    return {
        "id": "synth_0000000", "image": image, "mask": mask, "index": 0, "seed": 1, "layout_source": "augmented",
        "layout_id": "p1_0", "style_source": None, "style_sampler": None, "style_ids": [], "prompt": "x",
        "guidance": {"style": 1.5, "layout": 1.0, "rescale": 0.7}, "sampler": "dpmpp", "steps": 2, "model_hash": "0",
    }


@pytest.mark.parametrize(
    "path", ["../outside.png", "images/../../outside.png", "/etc/passwd", "images/..", "C:/x.png", "\\\\server\\x.png", ""]
)
def test_manifest_paths_cannot_leave_the_set(path: str) -> None:
    with pytest.raises(ValueError, match="inside the synthetic set"):
        ManifestRecord.model_validate(_record(path))
    with pytest.raises(ValueError, match="inside the synthetic set"):
        ManifestRecord.model_validate(_record("images/synth_0000000.png", mask=path))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "images", "masks", "a b", "ü.png", "x.png"]), min_size=1, max_size=5))
def test_manifest_paths_accepted_only_inside_the_set(parts: list[str]) -> None:
    path = "/".join(parts)
    try:
        ManifestRecord.model_validate(_record(path))
    except ValueError:
        assert ".." in parts or all(part == "." for part in parts)
    else:
        assert ".." not in parts
        assert not os.path.isabs(path) and not os.path.normpath(path).startswith("..")
