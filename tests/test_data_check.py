"""``check_dataset``: one crafted broken dataset per problem kind, all problems reported, read-only."""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.data import check as check_module
from segsynth.data.check import check_dataset
from segsynth.data.io import MAX_PIXELS, write_image


def _spec(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text())


def _write_spec(root: Path, data: dict) -> None:
    (root / "dataset.json").write_text(json.dumps(data))


def _kinds_for(report, kind: str) -> list[str]:
    return [p.file for p in report.problems if p.kind == kind]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` but holds one byte of pixel data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def test_valid_dataset_has_no_problems(tiny_dataset: Path) -> None:
    report = check_dataset(tiny_dataset)
    assert report.ok and report.problems == []
    assert report.counts == {"images": 6, "masks": 6, "unlabeled": 2, "samples": 6, "unlabeled_samples": 2}


def _missing_json(root: Path) -> str:
    (root / "dataset.json").unlink()
    return "dataset.json"


def _invalid_json_key(root: Path) -> str:
    data = _spec(root)
    data["channels"] = "three"
    data["colour"] = 1
    _write_spec(root, data)
    return "dataset.json"


def _missing_mask(root: Path) -> str:
    (root / "masks" / "p1_0.png").unlink()
    return "images/p1_0.png"


def _extra_mask(root: Path) -> str:
    write_image(root / "masks" / "zz_9.png", np.zeros((16, 16), np.uint8))
    return "masks/zz_9.png"


def _truncated(root: Path) -> str:
    path = root / "images" / "p2_1.png"
    path.write_bytes(path.read_bytes()[:60])
    return "images/p2_1.png"


def _garbage(root: Path) -> str:
    (root / "masks" / "p2_1.png").write_bytes(b"not an image at all")
    return "masks/p2_1.png"


def _shape_mismatch(root: Path) -> str:
    write_image(root / "masks" / "p1_1.png", np.zeros((16, 12), np.uint8))
    return "masks/p1_1.png"


def _undeclared_label(root: Path) -> str:
    mask = np.zeros((16, 16), np.uint8)
    mask[0, 0] = 7
    write_image(root / "masks" / "p3_0.png", mask)
    return "masks/p3_0.png"


def _non_integer_mask(root: Path) -> str:
    (root / "masks" / "p3_1.png").unlink()
    write_image(root / "masks" / "p3_1.tif", np.full((16, 16), 0.5, np.float32))
    return "masks/p3_1.tif"


def _nan_image(root: Path) -> str:
    (root / "images" / "p1_0.png").unlink()
    image = np.ones((16, 16), np.float32)
    image[3, 4] = np.nan
    image[5, 5] = np.inf
    write_image(root / "images" / "p1_0.tif", image)
    return "images/p1_0.tif"


def _wrong_channels(root: Path) -> str:
    write_image(root / "images" / "p2_0.png", np.zeros((16, 16, 3), np.uint8))
    return "images/p2_0.png"


def _empty(root: Path) -> str:
    for folder in ("images", "masks"):
        for path in (root / folder).iterdir():
            path.unlink()
    return "images"


def _missing_case(root: Path) -> str:
    data = _spec(root)
    del data["cases"]["p1_1"]
    _write_spec(root, data)
    return "images/p1_1.png"


def _duplicate_stem(root: Path) -> str:
    write_image(root / "images" / "p1_0.tif", np.zeros((16, 16), np.uint8))
    return "images/p1_0.tif"


def _label_zero_not_bg(root: Path) -> str:
    data = _spec(root)
    data["labels"] = {"tissue": 0, "lesion": 1}
    _write_spec(root, data)
    return "dataset.json"


def _non_consecutive(root: Path) -> str:
    data = _spec(root)
    data["labels"] = {"background": 0, "lesion": 2}
    _write_spec(root, data)
    return "dataset.json"


def _too_large(root: Path) -> str:
    _png_header_only(root / "unlabeled" / "u1_0.png", 20_000, 20_000)
    return "unlabeled/u1_0.png"


def _symlink_outside(root: Path) -> str:
    outside = root.parent / "outside.png"
    write_image(outside, np.zeros((16, 16), np.uint8))
    (root / "images" / "p3_0.png").unlink()
    os.symlink(outside, root / "images" / "p3_0.png")
    return "images/p3_0.png"


def _mask_not_2d(root: Path) -> str:
    write_image(root / "masks" / "p2_0.png", np.zeros((16, 16, 3), np.uint8))
    return "masks/p2_0.png"


def _image_bad_dims(root: Path) -> str:
    (root / "images" / "p2_0.png").unlink()
    write_image(root / "images" / "p2_0.tif", np.zeros((16, 16, 9), np.uint8))
    return "images/p2_0.tif"


def _unlabeled_no_case(root: Path) -> str:
    write_image(root / "unlabeled" / "u9_0.png", np.zeros((16, 16), np.uint8))
    return "unlabeled/u9_0.png"


def _unlabeled_channels(root: Path) -> str:
    write_image(root / "unlabeled" / "u1_1.png", np.zeros((16, 16, 3), np.uint8))
    return "unlabeled/u1_1.png"


def _unlabeled_truncated(root: Path) -> str:
    path = root / "unlabeled" / "u1_1.png"
    path.write_bytes(path.read_bytes()[:-30])
    return "unlabeled/u1_1.png"


CASES: list[tuple[str, Callable[[Path], str]]] = [
    ("missing_dataset_json", _missing_json),
    ("invalid_dataset_json", _invalid_json_key),
    ("missing_mask", _missing_mask),
    ("extra_mask", _extra_mask),
    ("unreadable", _truncated),
    ("unreadable", _garbage),
    ("shape_mismatch", _shape_mismatch),
    ("undeclared_label", _undeclared_label),
    ("non_integer_mask", _non_integer_mask),
    ("non_finite", _nan_image),
    ("channel_mismatch", _wrong_channels),
    ("empty_dataset", _empty),
    ("missing_case_id", _missing_case),
    ("duplicate_stem", _duplicate_stem),
    ("label_zero_not_bg", _label_zero_not_bg),
    ("labels_not_consecutive", _non_consecutive),
    ("too_large", _too_large),
    ("symlink_outside", _symlink_outside),
    ("bad_dims", _mask_not_2d),
    ("bad_dims", _image_bad_dims),
    ("missing_case_id", _unlabeled_no_case),
    ("channel_mismatch", _unlabeled_channels),
    ("unreadable", _unlabeled_truncated),
]


@pytest.mark.parametrize(("kind", "breaker"), CASES, ids=[f"{k}-{b.__name__.strip('_')}" for k, b in CASES])
def test_each_problem_kind_is_reported_with_its_file(tiny_dataset: Path, kind: str, breaker) -> None:
    expected_file = breaker(tiny_dataset)
    report = check_dataset(tiny_dataset)
    assert not report.ok
    assert expected_file in _kinds_for(report, kind), report.problems
    # every error names its file and carries a message
    assert all(p.file and p.message for p in report.problems)


def test_invalid_json_names_every_bad_key(tiny_dataset: Path) -> None:
    _invalid_json_key(tiny_dataset)
    messages = " ".join(p.message for p in check_dataset(tiny_dataset).problems if p.kind == "invalid_dataset_json")
    assert "'channels'" in messages and "'colour'" in messages and "unknown key" in messages


def test_every_problem_is_reported_not_just_the_first(tiny_dataset: Path) -> None:
    breakers = [_missing_mask, _extra_mask, _truncated, _shape_mismatch, _undeclared_label, _wrong_channels, _non_consecutive]
    expected = {breaker(tiny_dataset) for breaker in breakers}
    report = check_dataset(tiny_dataset)
    assert expected <= {p.file for p in report.errors}
    assert {"missing_mask", "extra_mask", "unreadable", "shape_mismatch", "undeclared_label", "channel_mismatch",
            "labels_not_consecutive"} <= report.kinds()


def test_file_checks_still_run_when_dataset_json_is_missing(tiny_dataset: Path) -> None:
    _missing_json(tiny_dataset)
    _shape_mismatch(tiny_dataset)
    assert {"missing_dataset_json", "shape_mismatch"} <= check_dataset(tiny_dataset).kinds()


def test_oversized_file_is_refused_by_header_without_decoding(tiny_dataset: Path, monkeypatch) -> None:
    big = tiny_dataset / _too_large(tiny_dataset)
    decoded: list[Path] = []
    real_read = check_module.read_image
    monkeypatch.setattr(check_module, "read_image", lambda path, **kw: decoded.append(Path(path)) or real_read(path, **kw))
    report = check_dataset(tiny_dataset)
    (problem,) = [p for p in report.problems if p.kind == "too_large"]
    assert str(MAX_PIXELS) in problem.message and "20000" in problem.message
    assert big not in decoded and len(decoded) == 13  # 6 images + 6 masks + 1 other unlabelled


def test_symlink_outside_is_not_followed(tiny_dataset: Path, monkeypatch) -> None:
    link = tiny_dataset / _symlink_outside(tiny_dataset)
    seen: list[Path] = []
    real_shape = check_module.image_shape
    monkeypatch.setattr(check_module, "image_shape", lambda path, **kw: seen.append(Path(path)) or real_shape(path, **kw))
    check_dataset(tiny_dataset)
    assert link not in seen


def test_unused_label_and_stale_case_are_warnings(tiny_dataset: Path) -> None:
    data = _spec(tiny_dataset)
    data["labels"]["vessel"] = 2
    data["cases"]["gone_0"] = "p9"
    _write_spec(tiny_dataset, data)
    report = check_dataset(tiny_dataset)
    assert report.ok
    assert {p.kind for p in report.warnings} == {"unused_label", "stale_case_id"}


def test_nifti_volume_with_matching_mask_counts_slices(tmp_path: Path, dataset_factory) -> None:
    root = dataset_factory(unlabeled=0)
    write_image(root / "images" / "vol.nii.gz", np.random.default_rng(0).random((16, 16, 5)).astype(np.float32))
    write_image(root / "masks" / "vol.nii.gz", np.ones((16, 16, 5), np.uint8))
    data = _spec(root)
    data["cases"]["vol"] = "v1"
    _write_spec(root, data)
    report = check_dataset(root)
    assert report.ok, report.problems
    assert report.counts["samples"] == 6 + 5


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"", p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_check_never_modifies_the_folder(tiny_dataset: Path) -> None:
    for breaker in (_truncated, _non_integer_mask, _invalid_json_key, _extra_mask):
        breaker(tiny_dataset)
    before = _snapshot(tiny_dataset)
    check_dataset(tiny_dataset)
    CliRunner().invoke(app, ["data", "check", str(tiny_dataset), "--json"])
    assert _snapshot(tiny_dataset) == before


def test_cli_exit_codes_table_and_json(tiny_dataset: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "check", str(tiny_dataset)])
    assert ok.exit_code == 0, ok.output
    _missing_mask(tiny_dataset)
    _undeclared_label(tiny_dataset)
    bad = runner.invoke(app, ["data", "check", str(tiny_dataset)])
    assert bad.exit_code == 1
    assert "missing_mask" in bad.output and "undeclared_label" in bad.output
    as_json = runner.invoke(app, ["data", "check", str(tiny_dataset), "--json"])
    assert as_json.exit_code == 1
    payload = json.loads(as_json.stdout)
    assert payload["ok"] is False and payload["num_errors"] == 2
    assert {(p["kind"], p["file"]) for p in payload["problems"]} == {
        ("missing_mask", "images/p1_0.png"),
        ("undeclared_label", "masks/p3_0.png"),
    }
