"""Property-based fuzzing of the inputs users hand us: a dataset folder, its dataset.json, a
synthetic set's manifest and a pipeline's configs.

Whatever the mutation, a command either succeeds or refuses with exit 2 naming a file (``data
check`` reports and exits 1), never a traceback, and a refused command writes nothing. Examples
are few (the suite's time budget) and derandomized, so a failure reproduces.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import TINY_DIFFUSION_MODEL, write_tiny_dataset, write_untrained_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_seg_train import make_synthetic_set, make_toy_dataset
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.data.format import DatasetFormatError
from segsynth.data.io import write_image
from segsynth.data.loader import SegDataset
from segsynth.seg.synthetic_sets import load_synthetic_set

FUZZ = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*")) if not p.is_symlink()}


def assert_clean(result: Any, ok_codes: set[int], root: Path) -> None:
    """Success, or exit 2 naming a file below ``root``; never an uncaught exception."""
    assert result.exit_code in ok_codes | {2}, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 2:
        assert str(root) in result.output, result.output


# --- a dataset folder -------------------------------------------------------------------------


@st.composite
def dataset_mutation(draw: st.DrawFn) -> tuple[str, str, Any]:
    target = draw(st.sampled_from(["images/p1_0.png", "masks/p1_0.png", "images/p2_1.png", "masks/p3_0.png",
                                   "unlabeled/u1_0.png"]))
    kind = draw(st.sampled_from(["truncate", "flip", "array", "delete", "self_link", "directory", "empty"]))
    if kind == "truncate":
        return target, kind, draw(st.integers(0, 200))
    if kind == "flip":
        return target, kind, draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=8))
    if kind == "array":
        shape = draw(st.sampled_from([(16, 16), (1, 1), (16, 1), (3, 16), (16, 16, 3), (16, 16, 2), (16, 12)]))
        dtype = draw(st.sampled_from([np.uint8, np.uint16] if len(shape) == 2 else [np.uint8]))  # PNG: 16 bit is grey only
        fill = draw(st.integers(0, 300))
        return target, kind, (shape, dtype, fill)
    return target, kind, None


def apply_dataset_mutation(root: Path, mutation: tuple[str, str, Any]) -> None:
    target, kind, arg = mutation
    path = root / target
    if kind == "truncate":
        path.write_bytes(path.read_bytes()[:arg])
    elif kind == "flip":
        data = bytearray(path.read_bytes())
        for offset in arg:
            data[offset % len(data)] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "array":
        shape, dtype, fill = arg
        write_image(path, np.full(shape, min(fill, np.iinfo(dtype).max), dtype))
    elif kind == "delete":
        path.unlink()
    elif kind == "self_link":
        path.unlink()
        path.symlink_to(path.name)
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    config = root / "diffusion.yaml"
    config.write_text(yaml.safe_dump({"model": TINY_DIFFUSION_MODEL,
                                      "train": {"steps": 1, "batch_size": 2, "warmup": 0, "sample_every": 0,
                                                "mixed_precision": "no"},
                                      "sampling": {"steps": 1, "grid_rows": 1}}))
    return {"data": write_tiny_dataset(root / "data"), "config": config}


def check_info_train(root: Path, config: Path, work: Path) -> None:
    before = snapshot(root)
    check = CliRunner().invoke(app, ["data", "check", str(root), "--json"])
    assert_clean(check, {0, 1}, root)
    info = CliRunner().invoke(app, ["data", "info", str(root)])
    assert_clean(info, {0}, root)
    out = work / "run"
    train = CliRunner().invoke(app, ["train-diffusion", str(root), "--out", str(out), "--config", str(config)])
    assert_clean(train, {0}, root)
    assert snapshot(root) == before, "a command modified the dataset folder"
    if train.exit_code == 2:
        assert not out.exists(), "a refused command left a partial run folder"
    # One validation truth: what the check passes trains, what training refuses the check reports.
    assert (check.exit_code == 0) == (train.exit_code == 0) == (info.exit_code == 0), (check.output, info.output,
                                                                                        train.output)


@FUZZ
@given(mutations=st.lists(dataset_mutation(), min_size=1, max_size=2))
def test_mutated_dataset_folders_succeed_or_are_refused_by_name(base, mutations) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        shutil.copytree(base["data"], root, symlinks=True)
        for mutation in mutations:
            if (root / mutation[0]).is_file() and not (root / mutation[0]).is_symlink():
                apply_dataset_mutation(root, mutation)
        check_info_train(root, base["config"], Path(tmp))


# --- dataset.json -----------------------------------------------------------------------------

SPEC_KEYS = ["name", "modality", "prompt", "channels", "labels", "label_provenance", "derivation", "licence",
             "cases", "unlabeled_cases", "format_version", "unknown"]


@st.composite
def spec_mutation(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["set", "delete", "label", "case", "bytes"]))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=40))
    if kind == "label":
        return kind, (draw(st.sampled_from(["background", "lesion", "extra"])), draw(json_values))
    if kind == "case":
        return kind, (draw(st.sampled_from(["p1_0", "p2_1", "zz"])), draw(json_values))
    return kind, (draw(st.sampled_from(SPEC_KEYS)), draw(json_values))


@FUZZ
@given(mutation=spec_mutation())
def test_mutated_dataset_json_succeeds_or_is_refused_by_name(base, mutation) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        shutil.copytree(base["data"], root)
        path = root / "dataset.json"
        kind, arg = mutation
        if kind == "bytes":
            text = path.read_bytes()
            path.write_bytes(text[: len(text) // 2] + arg)
        else:
            spec = json.loads(path.read_text())
            if kind == "delete":
                spec.pop(arg[0], None)
            elif kind == "set":
                spec[arg[0]] = arg[1]
            elif kind == "label":
                spec["labels"][arg[0]] = arg[1]
            else:
                spec["cases"][arg[0]] = arg[1]
            path.write_text(json.dumps(spec))
        check_info_train(root, base["config"], Path(tmp))


# --- a synthetic set's manifest ---------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fuzz-synth")
    real = make_toy_dataset(root / "real", cases=2, per_case=2, size=16)
    return real, make_synthetic_set(root / "synth", real, variants=1)


MANIFEST_KEYS = ["id", "image", "mask", "index", "seed", "layout_source", "layout_id", "style_ids", "guidance",
                 "steps", "model_hash", "extra"]


@settings(FUZZ, max_examples=40)
@given(row=st.integers(0, 3), key=st.sampled_from(MANIFEST_KEYS), value=json_values,
       action=st.sampled_from(["set", "delete", "duplicate", "garbage"]))
def test_mutated_manifests_load_or_are_refused_naming_the_manifest(synthetic, row, key, value, action) -> None:
    real_root, synth_root = synthetic
    real = SegDataset(real_root)
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / "synth"
        shutil.copytree(synth_root, synth)
        path = synth / "manifest.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if action == "set":
            rows[row][key] = value
        elif action == "delete":
            rows[row].pop(key, None)
        elif action == "duplicate":
            rows.append(dict(rows[row]))
        lines = [json.dumps(r) for r in rows]
        if action == "garbage":
            lines[row] = lines[row][: len(lines[row]) // 2]
        path.write_text("\n".join(lines) + "\n")
        try:
            loaded = load_synthetic_set(synth, real)
        except DatasetFormatError as exc:
            assert str(path) in str(exc), str(exc)
        else:
            assert len(loaded) == 4 and all(lid is not None for lid in loaded.layout_ids)


# --- a pipeline's configs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(base, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-run")
    return write_untrained_run(root / "run", base["data"])


PIPELINE_FILES = {
    "training_data.json": ["data_root", "train_ids", "num_refs", "style_sampler"],
    "pipeline/unet/config.json": ["block_out_channels", "image_size", "num_classes", "image_channels", "style_dim",
                         "num_tokens", "norm_num_groups", "layers_per_block", "attention_levels", "_class_name"],
    "pipeline/scheduler/scheduler_config.json": ["num_train_timesteps", "beta_start", "beta_end", "steps_offset",
                                        "prediction_type", "beta_schedule", "timestep_spacing", "_class_name"],
    "pipeline/style_encoder/config.json": ["encoder_channels", "dim", "in_channels", "_class_name"],
    "pipeline/model_index.json": ["unet", "scheduler", "style_encoder", "vae"],
}


@settings(FUZZ, max_examples=14)
@given(file=st.sampled_from(sorted(PIPELINE_FILES)), data=st.data())
def test_mutated_pipeline_configs_generate_or_are_refused_by_name(run, file, data) -> None:
    key = data.draw(st.sampled_from(PIPELINE_FILES[file]))
    value = data.draw(json_values | st.integers(-5, 5) | st.lists(st.integers(-3, 300), max_size=3))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy)
        path = copy / file
        config = json.loads(path.read_text())
        config[key] = value
        path.write_text(json.dumps(config))
        out = Path(tmp) / "synth"
        result = CliRunner().invoke(app, ["generate", str(copy), "--out", str(out), "-n", "1", "--steps", "1"])
        assert_clean(result, {0}, copy)
        if result.exit_code == 2:
            assert not out.exists(), "a refused generate left a partial set"
