"""Readers and writers: exact round trips per file type, header-only shapes, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segsynth.data.format import DatasetSpec, save_spec
from segsynth.data.io import MAX_PIXELS, DataReadError, image_shape, read_image, split_ext, write_image
from segsynth.data.loader import index_dataset

RNG = np.random.default_rng(0)
ARRAYS = {
    "png8.png": RNG.integers(0, 256, (12, 10), dtype=np.uint8),
    "png16.png": RNG.integers(0, 65536, (12, 10), dtype=np.uint16),
    "rgb.png": RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8),
    "float.tif": RNG.random((12, 10)).astype(np.float32),
    "rgb16.tif": RNG.integers(0, 65536, (12, 10, 3), dtype=np.uint16),
    "vol.nii.gz": RNG.random((12, 10, 4)).astype(np.float32),
    "labels.nii": RNG.integers(0, 4, (12, 10, 4)).astype(np.uint8),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_round_trip_is_exact_and_deterministic(tmp_path: Path, name: str) -> None:
    arr = ARRAYS[name]
    path = write_image(tmp_path / name, arr)
    back = read_image(path)
    assert back.dtype == arr.dtype and np.array_equal(back, arr)
    assert image_shape(path) == arr.shape
    first = path.read_bytes()
    write_image(path, arr)
    assert path.read_bytes() == first  # same array, same bytes


def test_int64_labels_are_narrowed_losslessly(tmp_path: Path) -> None:
    labels = np.array([[0, 1], [2, 300]], dtype=np.int64)
    assert np.array_equal(read_image(write_image(tmp_path / "m.png", labels)), labels)
    assert read_image(tmp_path / "m.png").dtype == np.uint16
    assert np.array_equal(read_image(write_image(tmp_path / "m.nii.gz", labels)), labels)
    with pytest.raises(ValueError, match="losslessly"):
        write_image(tmp_path / "neg.png", np.array([[-1, 0]], dtype=np.int64))


def test_nifti_volume_slices_keep_the_case_id(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "vol7.nii.gz", ARRAYS["vol.nii.gz"])
    write_image(tmp_path / "masks" / "vol7.nii.gz", ARRAYS["labels.nii"])
    save_spec(tmp_path, DatasetSpec(name="v", modality="MRI", prompt="Brain, MRI", channels=1,
                                    labels={"background": 0, "a": 1, "b": 2, "c": 3}, label_provenance="human",
                                    licence="CC0-1.0", cases={"vol7": "patient-7"}))
    refs = index_dataset(tmp_path)
    assert [r.id for r in refs] == [f"vol7_z{z:03d}" for z in range(4)]
    assert {r.case_id for r in refs} == {"patient-7"} and [r.slice_index for r in refs] == [0, 1, 2, 3]


def test_split_ext_handles_double_extensions() -> None:
    assert split_ext("a/case_001.nii.gz") == ("case_001", ".nii.gz")
    assert split_ext("X.b.PNG") == ("X.b", ".png")


@pytest.mark.parametrize(("content", "match"), [
    (b"", "unreadable header"),
    (b"\x89PNG\r\n\x1a\n garbage", "unreadable header"),
])
def test_bad_files_raise_errors_naming_the_file(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(DataReadError, match=rf"broken\.png: {match}"):
        read_image(path)


def test_truncated_png_is_unreadable(tmp_path: Path) -> None:
    path = write_image(tmp_path / "t.png", ARRAYS["rgb.png"])
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataReadError, match="truncated"):
        read_image(path)


def test_size_limit_and_unknown_type(tmp_path: Path) -> None:
    path = write_image(tmp_path / "big.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(DataReadError, match="exceeds the safe load limit of 1000 pixels"):
        read_image(path, max_pixels=1000)
    assert MAX_PIXELS == 64 * 1024 * 1024
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(DataReadError, match="unsupported file type '.bmp'"):
        read_image(tmp_path / "x.bmp")
