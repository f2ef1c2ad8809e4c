"""One writer per output folder: a second process fails at once naming the folder and the owner.

The holders are real processes: forks of this (already imported) test process, so they start in
milliseconds; a SIGKILLed holder leaves a stale lock that the next writer takes over.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_tiny_dataset, write_untrained_run
from typer.testing import CliRunner

from segsynth.controlnet.train import train_controlnet
from segsynth.benchmark import BenchmarkConfig, run_benchmark
from segsynth.cli import app
from segsynth.diffusion.train import train_diffusion
from segsynth.io.lock import FOLDER_LOCK, FolderInUseError, FolderLock
from segsynth.autoencoder.train import train_autoencoder
from segsynth.seg.train import train_seg
from segsynth.synth.manifest import read_manifest


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fork(child: Callable[[], None]) -> int:
    """Run ``child`` in a forked process (its stdout/stderr silenced); returns its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            child()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    return pid


def wait_for(condition: Callable[[], bool], pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        done, _ = os.waitpid(pid, os.WNOHANG)
        assert done == 0, "the holder exited before it held the folder"
        assert time.monotonic() < deadline, "the holder never got going"
        time.sleep(0.01)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def hold(folder: Path, name: str = FOLDER_LOCK) -> int:
    """A process that takes the lock and sleeps until killed."""

    def child() -> None:
        FolderLock(folder, name).acquire()
        time.sleep(600)

    pid = fork(child)
    wait_for(lambda: (folder / name).is_file() and (folder / name).stat().st_size > 0, pid)
    return pid


def owner_named(message: str, folder: Path, pid: int) -> bool:
    return str(folder) in message and f"pid {pid}@{socket.gethostname()}" in message


def test_second_writer_fails_at_once_and_a_killed_owners_lock_is_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    pid = hold(folder)
    try:
        start = time.monotonic()
        with pytest.raises(FolderInUseError) as caught:
            FolderLock(folder).acquire()
        assert time.monotonic() - start < 1
        assert owner_named(str(caught.value), folder, pid)
    finally:
        kill(pid)  # SIGKILL: no cleanup, the lock file stays behind
    assert (folder / FOLDER_LOCK).is_file()
    with FolderLock(folder):
        assert json.loads((folder / FOLDER_LOCK).read_text())["pid"] == os.getpid()
    assert not (folder / FOLDER_LOCK).exists()


def test_a_killed_but_unreaped_owner_no_longer_holds_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    pid = hold(folder)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        with FolderLock(folder):  # the pid still exists, as a zombie
            pass
    finally:
        os.waitpid(pid, 0)


def test_lock_of_a_recycled_pid_or_a_crashed_writer_is_stale(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    # The parent process is alive, but it started at another time than the one recorded.
    (folder / FOLDER_LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                  "started": "1", "token": "x", "since": 0}))
    with FolderLock(folder):
        pass
    # A writer killed between creating the file and filling it leaves it empty.
    (folder / FOLDER_LOCK).write_text("")
    os.utime(folder / FOLDER_LOCK, (time.time() - 10, time.time() - 10))
    with FolderLock(folder):
        pass
    # Another host's lock is never broken: its owner cannot be checked from here.
    (folder / FOLDER_LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": None,
                                                  "token": "x", "since": 0}))
    with pytest.raises(FolderInUseError, match=f"pid 1@elsewhere.*delete {folder / FOLDER_LOCK}"):
        FolderLock(folder).acquire()


def test_a_refused_writer_leaves_no_folder_behind(tmp_path: Path) -> None:
    folder = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with FolderLock(folder):
            raise RuntimeError("refused before writing")
    assert not folder.exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), FolderLock(tmp_path / "kept" / "new" / "deeper" / "out"):
        raise RuntimeError("refused before writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and not any((tmp_path / "kept").iterdir())


@pytest.mark.parametrize("command", [
    lambda out: train_diffusion("/no/data", None, out),
    lambda out: train_autoencoder("/no/data", None, out),
    lambda out: train_controlnet("/no/data", "/no/backbone", None, out),
    lambda out: train_seg("/no/data", None, out),
    lambda out: run_benchmark("/no/data", BenchmarkConfig(), out),
], ids=["train-diffusion", "train-autoencoder", "controlnet", "train-seg", "benchmark"])
def test_every_trainer_refuses_a_run_folder_another_process_owns(tmp_path: Path, command) -> None:
    out = tmp_path / "run"
    pid = hold(out)
    try:
        with pytest.raises(FolderInUseError) as caught:
            command(out)
        assert owner_named(str(caught.value), out, pid)
    finally:
        kill(pid)


# --- real commands side by side -----------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lock")
    data = write_tiny_dataset(root / "data")
    return write_untrained_run(root / "run", data)


def cli_in_child(args: list[str]) -> Callable[[], None]:
    def child() -> None:
        from segsynth.cli import main

        sys.argv = ["segsynth", *args]
        main()

    return child


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def test_two_generate_processes_on_one_set_the_second_exits_2_naming_the_owner(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    args = ["generate", str(run), "--out", str(out), "--steps", "1", "--batch-size", "1"]
    pid = fork(cli_in_child([*args, "-n", "100000"]))
    try:
        wait_for(lambda: lines(out / "manifest.jsonl") >= 1, pid)
        for second in ([*args, "-n", "100000", "--resume"], [*args, "-n", "100000", "--seed", "1"]):
            result = CliRunner().invoke(app, second)
            assert result.exit_code == 2, result.output
            assert owner_named(" ".join(result.output.split()), out, pid), result.output
    finally:
        kill(pid)
    # The dead owner's lock does not block: a fresh writer gets past it to the usual refusal.
    refused = CliRunner().invoke(app, [*args, "-n", "100000"])
    assert refused.exit_code == 2 and "--resume" in refused.output and "in use" not in refused.output


def test_shards_of_one_set_run_side_by_side_and_merge_once(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    args = ["generate", str(run), "--out", str(out), "-n", "6", "--steps", "1", "--batch-size", "1"]
    pid = fork(cli_in_child([*args, "--shard", "0/2"]))
    try:
        result = CliRunner().invoke(app, [*args, "--shard", "1/2"])
        assert result.exit_code == 0, result.output
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if os.path.exists(f"/proc/{pid}"):
            kill(pid)
    assert [r.index for r in read_manifest(out / "manifest.jsonl")] == list(range(6))
    assert (out / "dataset.json").is_file()
    assert not list(out.glob(".*lock*")), "locks are released when the shards finish"
