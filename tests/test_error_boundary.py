"""No traceback reaches a user: the console script's error boundary, wrapped OS errors, a real full disk."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_DIFFUSION_MODEL, write_tiny_dataset
from safetensors import SafetensorError
from typer.testing import CliRunner

import segsynth.io.checkpoint as checkpoint_module
from segsynth.cli import app, main
from segsynth.cli.errors import CRASH_DIR_ENV
from segsynth.io.checkpoint import CheckpointManager, load_state_tree

DIFFUSION = {"model": TINY_DIFFUSION_MODEL,
             "train": {"steps": 4, "batch_size": 2, "warmup": 0, "log_every": 1, "sample_every": 0,
                       "checkpoint_every": 1, "mixed_precision": "no"},
             "sampling": {"steps": 1, "grid_rows": 1}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The console script in-process: exit status and stderr."""
    monkeypatch.setattr(sys, "argv", ["segsynth", *argv])
    with pytest.raises(SystemExit) as caught:
        main()
    return caught.value.code, capsys.readouterr().err


def test_an_unexpected_error_is_one_line_naming_the_stage_and_the_logged_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import segsynth.data.check as check_module

    def bug(root):
        raise KeyError("a bug deep inside")

    monkeypatch.setattr(check_module, "check_dataset", bug)
    monkeypatch.setenv(CRASH_DIR_ENV, str(tmp_path / "crashes"))
    code, err = run_main(["data", "check", str(tmp_path)], monkeypatch, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(" ".join(lines)) == len(" ".join(err.split()))
    message = " ".join(err.split())
    assert message.startswith("error: segsynth data check: unexpected KeyError: 'a bug deep inside'")
    logs = list((tmp_path / "crashes").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in message
    assert "Traceback" in logs[0].read_text() and "a bug deep inside" in logs[0].read_text()


def test_a_user_error_outside_any_command_block_still_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    import segsynth.data.check as check_module

    def bad_input(root):
        raise ValueError(f"{root}/dataset.json: not a dataset")

    monkeypatch.setattr(check_module, "check_dataset", bad_input)
    code, err = run_main(["data", "check", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and f"error: {tmp_path}/dataset.json: not a dataset" in " ".join(err.split())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("boundary")
    config = root / "diffusion.yaml"
    config.write_text(yaml.safe_dump(DIFFUSION))
    return write_tiny_dataset(root / "data"), config


def train(inputs: tuple[Path, Path], out: Path, *extra: str):
    data, config = inputs
    return CliRunner().invoke(app, ["train-diffusion", str(data), "--out", str(out), "--config", str(config), *extra])


@pytest.mark.parametrize("failure", [
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    OSError(errno.EIO, os.strerror(errno.EIO)),
], ids=["safetensors-enospc", "eio"])
def test_a_failing_disk_during_a_checkpoint_is_a_clean_message(inputs, tmp_path: Path, failure: Exception,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = checkpoint_module.save_file
    calls = []

    def fails_the_third_time(tensors, path):
        calls.append(path)
        if len(calls) == 3:
            raise failure
        real_save(tensors, path)

    monkeypatch.setattr(checkpoint_module, "save_file", fails_the_third_time)
    out = tmp_path / "run"
    result = train(inputs, out)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert os.strerror(failure.errno if isinstance(failure, OSError) else errno.ENOSPC) in message
    assert "re-run with --resume" in message
    assert CheckpointManager(out).complete_steps() == [2]


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_really_full_disk_keeps_the_last_checkpoint_and_says_so(inputs, tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    assert train(inputs, probe, "--set", "train.steps=1").exit_code == 0
    checkpoint = sum(p.stat().st_size for p in (probe / "checkpoints").rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    # Room for the run's small files and one checkpoint, not for the next one beside it.
    if not _mount_tmpfs(disk, f"{int(checkpoint * 1.6) // 1024 + 64}k"):
        pytest.skip("tmpfs mount refused (no CAP_SYS_ADMIN in this container)")
    try:
        out = disk / "run"
        result = train(inputs, out)
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        assert "No space left on device" in message and "Traceback" not in message
        steps = CheckpointManager(out).complete_steps()
        assert steps, "the first checkpoint fitted"
        load_state_tree(CheckpointManager(out).path(steps[-1]))  # complete and readable
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
