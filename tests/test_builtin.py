"""Built-in real datasets: deterministic bytes, plausible labels, valid folders, clear errors."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from segsynth.artifacts.names import IMAGES_DIR, UNLABELED_DIR
from segsynth.cli import app
from segsynth.data.builtin import BUILTIN_DATASETS, SourceMissingError, build_builtin, sources
from segsynth.data.builtin.he_labels import he_label_tile
from segsynth.data.builtin.tiles import Tile, case_rng, grid_origins, robust_uint8, split_case
from segsynth.data.format import load_spec
from segsynth.data.loader import SegDataset

TILE = 32


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All three datasets at 32 px, built once for the module."""
    return build_builtin("all", tmp_path_factory.mktemp("builtin") / "all", tile_size=TILE)


def _label_counts(root: Path) -> tuple[SegDataset, np.ndarray, dict[str, int]]:
    """Dataset, per-class pixel counts, and number of labelled tiles per case."""
    ds = SegDataset(root)
    counts = np.zeros(ds.spec.num_classes, dtype=np.int64)
    per_case: dict[str, int] = {}
    for i, ref in enumerate(ds.refs):
        image, mask = ds.load_arrays(i)
        assert image.shape == (ds.spec.channels, TILE, TILE)
        assert mask.shape == (TILE, TILE)
        counts += np.bincount(mask.ravel(), minlength=ds.spec.num_classes)
        per_case[ref.case_id] = per_case.get(ref.case_id, 0) + 1
    return ds, counts, per_case


def test_same_command_same_bytes(built: Path, tmp_path: Path) -> None:
    again = build_builtin("all", tmp_path / "again", tile_size=TILE)
    first, second = _hashes(built), _hashes(again)
    assert len(first) > 600
    assert first == second


def test_seed_changes_the_held_out_tiles(built: Path, tmp_path: Path) -> None:
    other = build_builtin("nuclei-fluo", tmp_path / "seed1", tile_size=TILE, seed=1)
    assert set(load_spec(other).unlabeled_cases) != set(load_spec(built / "nuclei-fluo").unlabeled_cases)


@pytest.mark.parametrize("name", list(BUILTIN_DATASETS))
def test_every_class_present_and_cases_populated(built: Path, name: str) -> None:
    ds, counts, per_case = _label_counts(built / name)
    fractions = counts / counts.sum()
    assert (fractions > 0.01).all(), f"{name}: class fractions {fractions}"
    assert len(per_case) >= 4
    assert min(per_case.values()) >= 3
    assert ds.spec.licence and ds.spec.source
    assert (ds.spec.label_provenance == "human") == (name == "nuclei-fluo")


def test_nuclei_fraction_plausible_in_both_styles(built: Path) -> None:
    ds = SegDataset(built / "nuclei-fluo")
    by_style: dict[str, list[float]] = {"dsb": [], "cells3d": []}
    for i, ref in enumerate(ds.refs):
        by_style[ref.case_id.split("_")[0]].append(float(ds.load_arrays(i)[1].mean()))
    for style, fractions in by_style.items():
        assert len(fractions) >= 24, style
        assert 0.05 <= np.mean(fractions) <= 0.6, (style, np.mean(fractions))
    assert ds.spec.prompt == "Nuclei, fluorescence microscopy"


def test_histo_nuclei_and_background_in_range(built: Path) -> None:
    _, counts, per_case = _label_counts(built / "histo-he")
    fractions = counts / counts.sum()
    assert 0.05 <= fractions[2] <= 0.45  # nuclei
    assert fractions[1] >= 0.4  # tissue dominates tissue-selected tiles
    assert set(per_case) >= {"cmu1_r0c0", "tia_target", "stardist_histo"}


def test_unlabelled_pool_is_disjoint_from_training_images(built: Path) -> None:
    for name in BUILTIN_DATASETS:
        root = built / name
        spec = load_spec(root)
        assert spec.unlabeled_cases, name
        assert not set(spec.cases) & set(spec.unlabeled_cases)
        labelled = set(_hashes(root / IMAGES_DIR).values())
        held_out = set(_hashes(root / UNLABELED_DIR).values())
        assert not labelled & held_out, name
        assert len(SegDataset(root, split="unlabeled")) == len(spec.unlabeled_cases)
    assert "skimage_ihc" in load_spec(built / "histo-he").unlabeled_cases.values()


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda n, *a: None if n == "stardist" else real(n, *a))
    with pytest.raises(SourceMissingError, match=r"'stardist' is not installed.*pip install --no-deps stardist==0\.9\.2"):
        build_builtin("nuclei-fluo", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown built-in dataset 'mri'"):
        build_builtin("mri", tmp_path / "a")
    with pytest.raises(ValueError, match="tile_size must be an integer in"):
        build_builtin("brain-mri", tmp_path / "a", tile_size=8)
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "notes.txt").write_text("the user's\n")  # an empty folder is simply filled
    with pytest.raises(FileExistsError, match="already exists"):
        build_builtin("brain-mri", tmp_path / "exists")
    with pytest.raises(ValueError, match="exceeds the source region of 20x40"):
        grid_origins(20, 40, 32)


def test_split_case_holds_out_a_quarter_without_masks() -> None:
    tiles = [Tile(f"c_{i:03d}", "c", np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)) for i in range(16)]
    labelled, held = split_case(tiles, case_rng(0, "c"))
    assert (len(labelled), len(held)) == (12, 4)
    assert all(t.mask is None for t in held)
    assert {t.stem for t in labelled}.isdisjoint(t.stem for t in held)
    assert split_case(tiles[:1], case_rng(0, "c")) == (tiles[:1], [])


def test_robust_uint8_clips_outliers() -> None:
    data = np.concatenate([np.linspace(0, 100, 1000), [1e6]])
    scaled = robust_uint8(data)
    assert scaled.dtype == np.uint8 and scaled[0] == 0 and scaled[-1] == 255
    assert 120 <= scaled[500] <= 135  # the outlier does not squash the bulk
    with pytest.raises(ValueError, match="no intensity range"):
        robust_uint8(np.ones(10))


def test_he_labels_find_background_tissue_and_nuclei() -> None:
    rgb = np.full((48, 48, 3), 245, np.uint8)  # glass
    rgb[:, 16:] = (230, 150, 190)  # eosin-pink tissue
    yy, xx = np.mgrid[:48, :48]
    rgb[(yy - 24) ** 2 + (xx - 32) ** 2 <= 36] = (70, 40, 130)  # haematoxylin-purple nucleus
    labels = he_label_tile(rgb, 0, 0, 48, h_threshold=0.05)
    assert labels[24, 4] == 0 and labels[5, 40] == 1 and labels[24, 32] == 2
    assert abs(int((labels == 2).sum()) - 113) <= 30  # disc of radius 6


def test_cli_writes_and_reports(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "builtin", "brain-mri", "--out", str(tmp_path / "b"), "--tile-size", "16"])
    assert result.exit_code == 0, result.output
    assert "brain-mri" in result.output and "derived" in result.output
    assert load_spec(tmp_path / "b").prompt == "Brain, T1 MRI"
    result = runner.invoke(app, ["data", "builtin", "brain-mri", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
