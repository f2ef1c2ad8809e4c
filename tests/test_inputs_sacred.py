"""Inputs are sacred: no command writes into, replaces or deletes what it reads.

- every command with ``-o/--out`` refuses an output that is an input, holds one or sits inside one
  (also through a symlink), with exit 2 naming both paths, and leaves the input byte-identical;
- ``--overwrite`` replaces only a folder holding an output of the same kind;
- a resumed training run refuses other data with the same ids (by the files' content hash);
- ``data info`` and ``data check`` leave the dataset byte-identical, also when it is read-only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_pair, write_tiny_dataset
from typer.testing import CliRunner

from segsynth.artifacts.names import TRAINING_DATA_JSON
from segsynth.cli import app
from segsynth.data.io import write_image
from segsynth.data.nnunet import export_nnunet

#: Overrides that keep a trainer tiny, so even a run that (wrongly) starts ends in seconds.
TINY_DIFFUSION = ["--set", "model.image_size=16", "--set", "model.block_out_channels=[8,16]",
                  "--set", "model.attention_levels=[false,true]", "--set", "model.style.encoder_channels=[8,16]",
                  "--set", "model.style.dim=16", "--set", "model.style.num_refs=2", "--set", "train.steps=1", "--set", "train.warmup=1",
                  "--set", "train.batch_size=2", "--set", "train.sample_every=0", "--set", "sampling.steps=2"]

#: How each command with --out is called with INPUT as the input under test (OTHER: a second,
#: unrelated dataset where the command needs two).
ARGV: dict[str, Callable[[str, str, str], list[str]]] = {
    "train-diffusion": lambda data, other, out: ["train-diffusion", data, "-o", out, *TINY_DIFFUSION],
    "train-autoencoder": lambda data, other, out: ["train-autoencoder", data, "-o", out, *TRAINERS["train-autoencoder"][0]],
    "train-seg": lambda data, other, out: ["train-seg", data, "-o", out, "--set", "train.steps=1"],
    "benchmark": lambda data, other, out: ["benchmark", data, "-o", out, "--quick"],
    "run": lambda data, other, out: ["run", data, "-o", out, "--plan-only"],
    "data info": lambda data, other, out: ["data", "info", data, "-o", out],
    "data import-nnunet": lambda data, other, out: ["data", "import-nnunet", data, "-o", out, "--overwrite"],
    "export": lambda data, other, out: ["export", data, "--format", "png", "-o", out, "--overwrite"],
    "evaluate-synth": lambda data, other, out: ["evaluate-synth", data, "--real", other, "-o", out],
    "generate": lambda data, other, out: ["generate", data, "-n", "2", "-o", out],
    "report": lambda data, other, out: ["report", data, "-o", out],
    "evaluate-seg": lambda data, other, out: ["evaluate-seg", other, data, "-o", out],
    "predict": lambda data, other, out: ["predict", other, data, "-o", out],
}
#: Commands with --out that read no input path.
NO_INPUT = {"data builtin": "builds from installed packages", "demo": "builds its own data"}


def _commands_with_out() -> set[str]:
    from test_cli_dialect import COMMANDS, _options

    return {name for name, command in COMMANDS.items() if "--out" in _options(command)}


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry below ``root`` (and ``root`` itself) by relative path: a file's sha256, or 'dir'."""
    entries = {".": "dir" if root.is_dir() else hashlib.sha256(root.read_bytes()).hexdigest()}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        entries[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def _invoke(argv: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, argv)
    return result.exit_code, " ".join(result.output.split())


def test_every_command_with_out_is_covered() -> None:
    assert _commands_with_out() == set(ARGV) | set(NO_INPUT)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step diffusion run: the input of ``generate``."""
    root = tmp_path_factory.mktemp("tiny_run")
    data = write_tiny_dataset(root / "data")
    code, output = _invoke(["train-diffusion", str(data), "-o", str(root / "run"), *TINY_DIFFUSION])
    assert code == 0, output
    return root / "run"


def _make_input(name: str, path: Path, tiny_run: Callable[[], Path]) -> Path:
    """The input a command reads, at ``path``: a dataset folder, or what the command takes instead."""
    if name == "data import-nnunet":
        export_nnunet(write_tiny_dataset(path.parent.parent / "for_nnunet"), path)
        return path
    if name == "generate":
        shutil.copytree(tiny_run(), path)
        return path
    return write_tiny_dataset(path)


@pytest.mark.parametrize("where", ["same", "inside", "holds", "inside_via_symlink"])
@pytest.mark.parametrize("name", sorted(ARGV))
def test_out_never_meets_an_input(name: str, where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    parent = tmp_path / "parent"
    data = _make_input(name, parent / "data", lambda: request.getfixturevalue("tiny_run"))
    sibling = write_tiny_dataset(parent / "sibling", seed=1)
    (parent / "notes.txt").write_text("the user's own file\n")
    other = write_tiny_dataset(tmp_path / "other", seed=2)
    out = {"same": data, "inside": data / "images", "holds": parent}.get(where)
    if where == "inside_via_symlink":
        (tmp_path / "alias").symlink_to(data, target_is_directory=True)
        out = tmp_path / "alias" / "run"
    before, before_other = tree_digest(parent), tree_digest(other)
    result = CliRunner().invoke(app, ARGV[name](str(data), str(other), str(out)))
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"{out} " in message and f"input {data}:" in message and "inputs are never written to" in message, message
    assert tree_digest(parent) == before and tree_digest(other) == before_other
    assert not (tmp_path / "alias" / "run").exists()


def test_generate_never_writes_into_the_data_its_run_learnt_from(tiny_run: Path) -> None:
    data = Path(json.loads((tiny_run / TRAINING_DATA_JSON).read_text())["data_root"])
    before = tree_digest(data)
    code, output = _invoke(["generate", str(tiny_run), "-n", "2", "-o", str(data / "synth")])
    assert code == 2 and f"sits inside the input {data}:" in output, output
    assert tree_digest(data) == before


def test_report_and_evaluate_synth_keep_their_documented_place(tmp_path: Path) -> None:
    from segsynth.io.guard import OutputPathError, check_out_apart

    data = tmp_path / "data"
    check_out_apart(data / "report.html", [data], allowed=[data / "report.html"])  # `segsynth run` writes RUN/report.html
    with pytest.raises(OutputPathError, match="sits inside the input"):
        check_out_apart(data / "images" / "report.html", [data], allowed=[data / "report.html"])
    with pytest.raises(OutputPathError, match="is the input"):
        check_out_apart(data, [data], allowed=[data])


# --- --overwrite replaces only an output of the same kind -------------------------------------------


def test_export_overwrite_never_removes_the_source_or_its_parent(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    src = write_tiny_dataset(parent / "src")
    write_tiny_dataset(parent / "sibling", seed=1)
    (parent / "notes.txt").write_text("keep me\n")
    before = tree_digest(parent)
    for out in (parent, src):
        code, output = _invoke(["export", str(src), "--format", "tif", "-o", str(out), "--overwrite"])
        assert code == 2 and str(out) in output and str(src) in output, output
        assert tree_digest(parent) == before
    # a folder of other datasets that does not hold the source is not a dataset: refused too
    elsewhere = tmp_path / "elsewhere"
    write_tiny_dataset(elsewhere / "a")
    (elsewhere / "notes.txt").write_text("keep me\n")
    kept = tree_digest(elsewhere)
    code, output = _invoke(["export", str(src), "--format", "tif", "-o", str(elsewhere), "--overwrite"])
    assert code == 2 and "is not a segsynth output folder (it holds a, notes.txt)" in output, output
    assert tree_digest(elsewhere) == kept


def test_overwrite_replaces_only_the_same_kind(tmp_path: Path) -> None:
    src = write_tiny_dataset(tmp_path / "src")
    earlier = write_tiny_dataset(tmp_path / "earlier", seed=3)
    code, output = _invoke(["export", str(src), "--format", "tif", "-o", str(earlier), "--overwrite"])
    assert code == 0, output  # a dataset folder is replaced by the new dataset folder
    assert sorted(p.suffix for p in (earlier / "images").iterdir()) == [".tif"] * 6
    run = tmp_path / "run"
    run.mkdir()
    (run / TRAINING_DATA_JSON).write_text(json.dumps({"data_root": str(src), "train_ids": []}))
    (run / "config.yaml").write_text("train: {}\n")
    kept = tree_digest(run)
    code, output = _invoke(["export", str(src), "--format", "png", "-o", str(run), "--overwrite"])
    assert code == 2 and "is a diffusion_run folder; --overwrite replaces only a dataset folder" in output, output
    assert tree_digest(run) == kept
    # an nnU-Net export replaces an nnU-Net export, never a dataset folder
    raw = tmp_path / "Dataset501_X"
    export_nnunet(src, raw)
    export_nnunet(src, raw, overwrite=True)
    code, output = _invoke(["export", str(src), "--format", "nnunet", "-o", str(earlier), "--overwrite"])
    assert code == 2 and "is a dataset folder; --overwrite replaces only a nnunet_raw folder" in output, output


def test_import_nnunet_overwrite_never_wipes_the_raw_folder(tmp_path: Path) -> None:
    src = write_tiny_dataset(tmp_path / "src")
    raw = tmp_path / "raw"
    export_nnunet(src, raw / "Dataset001_X")
    export_nnunet(write_tiny_dataset(tmp_path / "src2", seed=1), raw / "Dataset002_Y")
    before = tree_digest(raw)
    code, output = _invoke(["data", "import-nnunet", str(raw / "Dataset001_X"), "-o", str(raw), "--overwrite"])
    assert code == 2 and "holds the input" in output, output
    assert tree_digest(raw) == before
    imported = tmp_path / "imported"
    assert _invoke(["data", "import-nnunet", str(raw / "Dataset001_X"), "-o", str(imported)])[0] == 0
    code, output = _invoke(["data", "import-nnunet", str(raw / "Dataset002_Y"), "-o", str(raw / "Dataset001_X"), "--overwrite"])
    assert code == 2 and "is a nnunet_raw folder; --overwrite replaces only a dataset folder" in output, output
    assert tree_digest(raw) == before
    assert _invoke(["data", "import-nnunet", str(raw / "Dataset002_Y"), "-o", str(imported), "--overwrite"])[0] == 0


def test_builtin_overwrite_refuses_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    code, output = _invoke(["data", "builtin", "nuclei-fluo", "-o", str(out), "--overwrite", "--tile-size", "16"])
    assert code == 2 and "holds thesis.tex" in output and "replaces only a dataset folder" in output, output
    assert (out / "thesis.tex").read_text() == "years of work\n"


# --- resume refuses other data by content --------------------------------------------------------


def _change_one_image(root: Path) -> None:
    """Same ids, same names, other pixels: ids alone cannot tell the two datasets apart."""
    image, _ = tiny_pair(np.random.default_rng(99), 16, 1, 2)
    write_image(root / "images" / "p1_0.png", image)


#: Each trainer that records its data: tiny settings and the record it keeps.
TRAINERS = {
    "train-diffusion": (TINY_DIFFUSION, "training_data.json"),
    "train-seg": (["--set", "train.steps=1", "--set", "train.batch_size=2", "--set", "network.channels=[4,8]",
                   "--set", "network.strides=[2]"], "split.json"),
    "train-autoencoder": (["--set", "steps=1", "--set", "batch_size=2", "--set", "tile_size=16", "--set", "eval_tiles=2",
                           "--set", "model.block_out_channels=[8,16,16]", "--set", "model.norm_num_groups=8"],
                          "image_split.json"),
}


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_resume_refuses_other_data_with_the_same_ids(trainer: str, tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3", "p4"))
    argv, record = TRAINERS[trainer]
    run = tmp_path / "run"
    code, output = _invoke([trainer, str(data), "-o", str(run), *argv])
    assert code == 0, output
    saved = (run / record).read_bytes()
    other = tmp_path / "other"
    shutil.copytree(data, other)
    if trainer == "train-diffusion":  # the same bytes elsewhere are the same data: resume is allowed
        code, output = _invoke([trainer, str(other), "-o", str(run), "--resume", *argv])
        assert code == 0, output
        saved = (run / record).read_bytes()
    _change_one_image(other)
    _change_one_image(data)  # in place too: the same folder with other contents is other data
    for changed in (other, data):
        code, output = _invoke([trainer, str(changed), "-o", str(run), "--resume", *argv])
        assert code == 2 and record in output and "differ" in output, output
        assert (run / record).read_bytes() == saved


def test_runs_from_before_the_content_hash_still_resume(tmp_path: Path) -> None:
    from segsynth.engine import RunRecord

    (tmp_path / "split.json").write_text(json.dumps({"data_root": "/d", "train_ids": ["a"]}))
    new = {"data_root": "/d", "train_ids": ["a"], "data_sha256": "1" * 64}
    RunRecord("split.json", new, added=("data_sha256",)).check(tmp_path)  # no hash recorded: ids decide
    RunRecord("split.json", new, {"data_sha256": "differ"}, added=("data_sha256",)).check(tmp_path)
    (tmp_path / "split.json").write_text(json.dumps({**new, "data_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="split.json: data differ"):
        RunRecord("split.json", new, problem="data differ", added=("data_sha256",)).check(tmp_path)


# --- inspection never writes --------------------------------------------------------------------


def _read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.mark.parametrize("read_only", [False, True])
def test_data_check_and_info_leave_the_dataset_byte_identical(read_only: bool, tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    if read_only:
        _read_only(data)
    before = tree_digest(data)
    try:
        for argv in (["data", "check", str(data)], ["data", "check", str(data), "--json"],
                     ["data", "info", str(data)], ["data", "info", str(data), "--json"]):
            code, output = _invoke(argv)
            assert code == 0, output
            assert tree_digest(data) == before, argv
    finally:
        for path in [data, *data.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)

