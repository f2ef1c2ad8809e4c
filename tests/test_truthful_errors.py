"""Every error names its file and says the truth: advice a command can follow, the path of a failed
write, control characters shown rather than obeyed, a checkpoint of another run named with its keys,
and export refusing what ``data check`` refuses."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY_DIFFUSION_MODEL, write_tiny_dataset, write_untrained_run
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.data.check import require_valid
from segsynth.io.display import visible

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ESC_NAME = "evil\x1b[31mred"


def message(result) -> str:
    return " ".join(result.output.split())


def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fsync fails as on a full disk: an OSError with no file name, as the system raises it."""

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_command_without_resume_never_advises_it(tiny_dataset: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import segsynth.io.atomic as atomic

    def read_only(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)  # the folder of -o FILE is not writable
    result = CliRunner().invoke(app, ["data", "info", str(tiny_dataset), "-o", str(tmp_path / "info.json")])
    assert result.exit_code == 2, result.output
    assert message(result) == f"error: {tmp_path}: Permission denied; fix this and run the command again"


def test_export_on_a_full_disk_names_the_file_and_does_not_advise_resume(tiny_dataset: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    full_disk(monkeypatch)
    result = CliRunner().invoke(app, ["export", str(tiny_dataset), "--format", "png", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    text = message(result)
    assert text.startswith(f"error: {tmp_path}/.out.") and ".png: No space left on device;" in text
    assert text.endswith("fix this and run the command again") and "--resume" not in text
    assert not (tmp_path / "out").exists()


def test_generate_on_a_full_disk_names_the_file_and_advises_resume(tiny_dataset: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_untrained_run(tmp_path / "run", tiny_dataset)
    full_disk(monkeypatch)
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["generate", str(run), "--out", str(out), "-n", "2", "--steps", "1",
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    text = message(result)
    assert text.startswith(f"error: {out}/") and "No space left on device" in text
    assert text.endswith("completed work is kept, fix this and re-run with --resume")


def test_visible_escapes_control_characters_and_keeps_the_rest() -> None:
    assert visible("a\x1b[31mb\rc\u202ed\x07") == "a\\x1b[31mb\\rc\\u202ed\\x07"
    assert visible("line\n\ttab é 日本 ü") == "line\n\ttab é 日本 ü"


@pytest.fixture
def esc_dataset(tmp_path: Path) -> Path:
    """A dataset with an image whose name holds an ANSI colour sequence (and no mask: an error)."""
    root = write_tiny_dataset(tmp_path / "data")
    shutil.copy(root / "images" / "p1_0.png", root / "images" / f"{ESC_NAME}.png")
    return root


def test_control_characters_in_file_names_are_shown_not_obeyed(esc_dataset: Path, tmp_path: Path) -> None:
    check = CliRunner().invoke(app, ["data", "check", str(esc_dataset)])  # a table of problems
    train = CliRunner().invoke(app, ["train-seg", str(esc_dataset), "--out", str(tmp_path / "run")])  # an error line
    for result in (check, train):
        assert result.exit_code != 0
        assert "\x1b" not in result.output and "evil\\x1b[31mred" in result.output


def test_export_refuses_what_data_check_refuses_with_the_same_message(esc_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception) as refused:
        require_valid(esc_dataset)
    expected = f"error: {visible(str(refused.value))}"
    for fmt in ("png", "nnunet"):
        out = tmp_path / fmt
        result = CliRunner().invoke(app, ["export", str(esc_dataset), "--format", fmt, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert message(result) == " ".join(expected.split())
        assert not out.exists()


SEG = ["--set", "train.val_every=1", "--set", "train.batch_size=2", "--set", "train.augment=none",
       "--set", "network.strides=[2]"]
DIFFUSION = {"model": TINY_DIFFUSION_MODEL,
             "train": {"steps": 1, "batch_size": 2, "warmup": 0, "log_every": 1, "sample_every": 0,
                       "checkpoint_every": 1, "mixed_precision": "no"},
             "sampling": {"steps": 1, "grid_rows": 1}}


def test_resuming_from_another_runs_checkpoint_names_it_and_the_first_keys(tiny_dataset: Path,
                                                                           tmp_path: Path) -> None:
    runner = CliRunner()
    other, run = tmp_path / "other", tmp_path / "run"
    assert runner.invoke(app, ["train-seg", str(tiny_dataset), "--out", str(other), *SEG, "--set", "train.steps=2",
                               "--set", "network.channels=[8,16]"]).exit_code == 0
    assert runner.invoke(app, ["train-seg", str(tiny_dataset), "--out", str(run), *SEG, "--set", "train.steps=1",
                               "--set", "network.channels=[16,32]"]).exit_code == 0
    step = "step_000000002"
    shutil.copytree(other / "checkpoints" / step, run / "checkpoints" / step)  # a step folder copied in
    result = runner.invoke(app, ["train-seg", str(tiny_dataset), "--out", str(run), "--resume",
                                 "--set", "train.steps=3"])
    assert result.exit_code == 2, result.output
    text = message(result)
    assert text.startswith(f"error: {run}/checkpoints/{step}/state.safetensors: the checkpoint does not match")
    assert "model/model.0.conv.unit0.conv.weight: (8, 1, 3, 3) in the checkpoint, (16, 1, 3, 3) in this run" in text


def test_train_diffusion_resume_from_another_models_checkpoint_names_it(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    runner = CliRunner()
    configs = {}
    for name, widths in (("other", [16, 16]), ("run", [8, 16])):
        cfg = {**DIFFUSION, "model": {**TINY_DIFFUSION_MODEL, "block_out_channels": widths}}
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(cfg))
        done = runner.invoke(app, ["train-diffusion", str(data), "--out", str(tmp_path / name), "-c", str(configs[name])])
        assert done.exit_code == 0, done.output
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.rmtree(checkpoints / "step_000000001")
    shutil.copytree(tmp_path / "other" / "checkpoints" / "step_000000001", checkpoints / "step_000000001")
    result = runner.invoke(app, ["train-diffusion", str(data), "--out", str(tmp_path / "run"), "-c",
                                 str(configs["run"]), "--resume", "--set", "train.steps=2"])
    assert result.exit_code == 2, result.output
    text = message(result)
    assert text.startswith(f"error: {checkpoints}/step_000000001/state.safetensors: the checkpoint does not match")
    assert "in the checkpoint" in text and "in this run" in text and "Error(s) in loading" not in text


def test_exactly_the_commands_with_resume_advise_it() -> None:
    import inspect

    from segsynth.cli.app import app as root

    commands = [*root.registered_commands, *(c for g in root.registered_groups for c in g.typer_instance.registered_commands)]
    assert commands
    for command in commands:
        source = inspect.getsource(command.callback)
        has_resume = '"--resume/--no-resume"' in source or "ResumeOption" in source
        advises = "user_errors(resumable=True)" in source
        assert has_resume == advises, f"{command.callback.__name__}: --resume {has_resume}, advises it {advises}"


def test_a_wrapped_os_error_inside_an_atomic_folder_names_the_folder(tmp_path: Path) -> None:
    from safetensors import SafetensorError

    from segsynth.io.atomic import atomic_directory

    final = tmp_path / "best"
    with pytest.raises(OSError) as caught, atomic_directory(final):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(final)
    assert not final.exists()
