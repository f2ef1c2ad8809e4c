"""SIGKILL at random points, then ``--resume``: the result equals an uninterrupted run.

``segsynth train-diffusion``, ``generate`` and ``train-seg`` run as real subprocesses (16 px,
configs in YAML files) and are killed with SIGKILL once they have made a random amount of
progress plus a random delay, so kills land inside steps, inside checkpoint writes and inside
image writes. The uninterrupted reference and the default-run resumes go through the same CLI
in-process (single-threaded in both, so CPU results are bit-for-bit comparable); the slow loop
kills and resumes several times per seed, every time as a subprocess.

Also here: a full disk during a checkpoint save, and same seed + config -> same synthetic bytes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_DIFFUSION_MODEL, write_tiny_dataset
from safetensors.torch import load_file
from typer.testing import CliRunner

import segsynth.io.checkpoint as checkpoint_module
from segsynth.cli import app
from segsynth.io.atomic import atomic_write_bytes
from segsynth.io.checkpoint import CheckpointManager
from segsynth.synth.manifest import read_manifest

torch.set_num_threads(1)

SEGSYNTH = [sys.executable, "-c", "import sys; from segsynth.cli import main; sys.argv[0] = 'segsynth'; main()"]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

DIFFUSION = {
    "model": TINY_DIFFUSION_MODEL,
    "train": {"steps": 8, "batch_size": 3, "warmup": 1, "log_every": 1, "sample_every": 3, "checkpoint_every": 2},
    "sampling": {"steps": 2, "grid_rows": 2},
}
SEG = {
    "network": {"channels": [8, 16], "strides": [2], "num_res_units": 0, "dropout": 0.1},
    "train": {"steps": 10, "val_every": 2, "batch_size": 2},
    "mix": {"strategy": "none"},
}
GENERATE = ["-n", "9", "--steps", "2", "--batch-size", "2"]


# --- harness ------------------------------------------------------------------------------------


def cli(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{args}\n{result.output}\n{result.exception!r}"


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _start(args: list[str], log: Path, fork: bool) -> Callable[[], int | None]:
    """Start ``segsynth ARGS`` and return its ``poll()`` (exit status, or None while it runs).

    ``fork=False`` executes the console entry point in a fresh interpreter; ``fork=True`` forks this
    already-imported process and calls the same entry point in the child, which skips the ~10 s
    import of torch/diffusers/MONAI (the default run stays fast). Both are separate processes a
    SIGKILL ends without any Python cleanup.
    """
    if not fork:
        with open(log, "ab") as sink:
            proc = subprocess.Popen(SEGSYNTH + args, env=SUBPROCESS_ENV, stdout=sink, stderr=sink)
        return proc.poll
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            torch.set_num_threads(1)
            from segsynth.cli import main

            sys.argv = ["segsynth", *args]
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    status: list[int] = []

    def poll() -> int | None:
        if not status:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                return None
            status.append(os.waitstatus_to_exitcode(raw))
        return status[0]

    poll.pid = pid  # type: ignore[attr-defined]
    return poll


def run_and_kill(
    args: list[str], progressed: Callable[[], bool], rng: np.random.Generator, log: Path, fork: bool = True
) -> bool:
    """Start ``segsynth ARGS``; once ``progressed()`` holds, wait a random moment and SIGKILL it.

    Returns:
        True when the process was killed, False when it finished first (it must then succeed).
    """
    delay = float(rng.uniform(0.0, 0.05))
    with open(log, "ab") as sink:
        if fork:
            poll = _start(args, log, fork=True)
            pid = poll.pid  # type: ignore[attr-defined]
        else:
            proc = subprocess.Popen(SEGSYNTH + args, env=SUBPROCESS_ENV, stdout=sink, stderr=sink)
            poll, pid = proc.poll, proc.pid
    deadline = time.monotonic() + 240
    killed = False
    try:
        while poll() is None:
            assert time.monotonic() < deadline, "subprocess hung"
            if progressed():
                time.sleep(delay)
                if poll() is None:
                    os.kill(pid, signal.SIGKILL)
                    killed = True
                while poll() is None:
                    time.sleep(0.002)
                break
            time.sleep(0.002)
    finally:
        if poll() is None:
            os.kill(pid, signal.SIGKILL)
            while poll() is None:
                time.sleep(0.002)
    if not killed:
        assert poll() == 0, log.read_text(errors="replace")
    return killed


def hidden_leftovers(folder: Path) -> list[str]:
    """Temporaries (``.name.*.tmp`` / ``.old``) anywhere below ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old")))


def visible_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in flat(sub, f"{prefix}/{i}").items()}
    return {prefix: tree}


#: Global Python/numpy RNG states are stored for completeness but never drawn from by training
#: (every draw is seeded by (seed, step, index)); they hold whatever the host process left there.
UNUSED_STATE = ("/rng/python", "/rng/numpy")


def same_tree(a: Any, b: Any) -> None:
    fa, fb = ({k: v for k, v in flat(t).items() if not k.startswith(UNUSED_STATE)} for t in (a, b))
    assert fa.keys() == fb.keys()
    for key in fa:
        x, y = fa[key], fb[key]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y), key
        else:
            assert x == y, key


def logged(run: Path) -> list[dict]:
    """Log records without the wall-clock speed (the only field that may differ)."""
    return [{k: v for k, v in json.loads(line).items() if k != "it_per_s"}
            for line in (run / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]


# --- shared inputs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kill")
    paths = {"data": write_tiny_dataset(root / "data", cases=("p1", "p2", "p3", "p4"), per_case=2, size=16, unlabeled=3)}
    for name, cfg in (("diffusion", DIFFUSION), ("seg", SEG)):
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return paths


def diffusion_args(inputs: dict[str, Path], out: Path) -> list[str]:
    return ["train-diffusion", str(inputs["data"]), "--out", str(out), "--config", str(inputs["diffusion"])]


def seg_args(inputs: dict[str, Path], out: Path) -> list[str]:
    return ["train-seg", str(inputs["data"]), "--out", str(out), "--config", str(inputs["seg"])]


def generate_args(run: Path, out: Path, seed: int = 0) -> list[str]:
    return ["generate", str(run), "--out", str(out), *GENERATE, "--seed", str(seed)]


@pytest.fixture(scope="module")
def reference(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs of the three commands (the generator uses the reference diffusion run)."""
    root = tmp_path_factory.mktemp("reference")
    cli(diffusion_args(inputs, root / "diffusion"))
    cli(generate_args(root / "diffusion", root / "synth"))
    cli(seg_args(inputs, root / "seg"))
    return {"diffusion": root / "diffusion", "synth": root / "synth", "seg": root / "seg"}


# --- checks -------------------------------------------------------------------------------------


def assert_diffusion_equal(run: Path, ref: Path) -> None:
    manager = CheckpointManager(run)
    assert manager.complete_steps() == [8]  # keep_checkpoints=1: older ones were pruned
    same_tree(manager.latest()[1], CheckpointManager(ref).latest()[1])
    for part in ("unet", "style_encoder", "style_aggregator"):
        (weights,) = (run / "pipeline" / part).glob("*.safetensors")
        a, b = load_file(weights), load_file(ref / "pipeline" / part / weights.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert logged(run) == logged(ref)
    assert hidden_leftovers(run) == []


def assert_synth_equal(out: Path, ref: Path) -> None:
    assert hidden_leftovers(out) == []
    records = read_manifest(out / "manifest.jsonl")
    assert [r.index for r in records] == list(range(9))  # complete, in order, no duplicate
    named = {r.image for r in records} | {r.mask for r in records}
    on_disk = {p.relative_to(out).as_posix() for folder in ("images", "masks") for p in (out / folder).iterdir()}
    assert on_disk == named  # no file without its manifest line, no line without its files
    assert visible_files(out) == visible_files(ref)  # byte-identical set, manifest and dataset.json


def assert_seg_equal(run: Path, ref: Path) -> None:
    assert logged(run) == logged(ref)
    a, b = load_file(run / "best" / "model.safetensors"), load_file(ref / "best" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    same_tree(CheckpointManager(run).latest()[1]["model"], CheckpointManager(ref).latest()[1]["model"])
    assert hidden_leftovers(run) == []


# --- default run: one SIGKILL per command, resumed through the CLI -------------------------------


def test_train_diffusion_killed_and_resumed_equals_uninterrupted(inputs, reference, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    run = tmp_path / "run"
    need = int(rng.integers(2, 8))
    killed = run_and_kill(diffusion_args(inputs, run), lambda: lines(run / "train_log.jsonl") >= need, rng,
                          tmp_path / "log.txt")
    assert killed, "the run finished before the kill; make it longer"
    cli(diffusion_args(inputs, run) + ["--resume"])
    assert_diffusion_equal(run, reference["diffusion"])


def test_generate_killed_and_resumed_is_complete_and_identical(reference, tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    out = tmp_path / "synth"
    need = int(rng.integers(1, 8))
    killed = run_and_kill(generate_args(reference["diffusion"], out), lambda: lines(out / "manifest.jsonl") >= need,
                          rng, tmp_path / "log.txt")
    assert killed
    if lines(out / "manifest.jsonl") < 9:
        assert not (out / "dataset.json").exists()  # an incomplete set does not pose as a dataset
    cli(generate_args(reference["diffusion"], out) + ["--resume"])
    assert_synth_equal(out, reference["synth"])


def test_train_seg_killed_and_resumed_equals_uninterrupted(inputs, reference, tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    run = tmp_path / "run"
    need = int(rng.integers(1, 4))
    killed = run_and_kill(seg_args(inputs, run), lambda: lines(run / "train_log.jsonl") >= need, rng,
                          tmp_path / "log.txt")
    assert killed
    cli(seg_args(inputs, run) + ["--resume"])
    assert_seg_equal(run, reference["seg"])


def test_same_seed_and_config_give_a_byte_identical_synthetic_set(reference, tmp_path: Path) -> None:
    again = tmp_path / "again"
    cli(generate_args(reference["diffusion"], again))
    assert visible_files(again) == visible_files(reference["synth"])
    other = tmp_path / "other-seed"
    cli(generate_args(reference["diffusion"], other, seed=1))
    first = visible_files(other)
    assert first["images/synth_0000000.png"] != visible_files(again)["images/synth_0000000.png"]


# --- slow: several seeds, several kills each, every run a subprocess ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repeated_kills_at_random_points(inputs, reference, tmp_path: Path, seed: int) -> None:
    """Two SIGKILLs per command and seed, then a resume to the end. Seed 0 kills freshly started
    ``segsynth`` interpreters (the real console entry point, ~10 s import each); the other seeds
    fork, so the loop covers more kill points in the same time."""
    rng = np.random.default_rng(100 + seed)
    log = tmp_path / "log.txt"
    fork = seed != 0

    def kill_twice_then_finish(args: list[str], progress: Path, most: int) -> None:
        killed = []
        for attempt in range(2):
            need = int(rng.integers(0, most))
            killed.append(run_and_kill(args + (["--resume"] if attempt else []), lambda: lines(progress) >= need, rng,
                                       log, fork=fork))
        # Without a kill landing (a process still running when SIGKILL came) this would only test
        # that a finished run re-run with --resume is unchanged.
        assert any(killed), f"{args[0]}: both processes finished before their SIGKILL"
        cli(args + ["--resume"])

    run = tmp_path / "diffusion"
    kill_twice_then_finish(diffusion_args(inputs, run), run / "train_log.jsonl", 8)
    assert_diffusion_equal(run, reference["diffusion"])

    out = tmp_path / "synth"
    kill_twice_then_finish(generate_args(reference["diffusion"], out), out / "manifest.jsonl", 9)
    assert_synth_equal(out, reference["synth"])

    seg = tmp_path / "seg"
    kill_twice_then_finish(seg_args(inputs, seg), seg / "train_log.jsonl", 5)
    assert_seg_equal(seg, reference["seg"])


# --- a full disk while a checkpoint is written ----------------------------------------------------


def _disk_full_after(nbytes: int) -> Callable[..., None]:
    """A ``save_file`` stand-in that writes ``nbytes`` of the file, then fails like a full disk."""
    real = checkpoint_module.save_file

    def save_file(tensors: dict, filename: str, *args: Any, **kwargs: Any) -> None:
        real(tensors, filename, *args, **kwargs)
        with open(filename, "r+b") as handle:
            handle.truncate(nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    return save_file


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = CheckpointManager(tmp_path / "run")
    old = {"step": 2, "w": torch.arange(6.0), "rng": {"state": np.arange(3, dtype=np.uint32)}}
    manager.save(2, old)
    monkeypatch.setattr(checkpoint_module, "save_file", _disk_full_after(40))
    with pytest.raises(OSError) as info:
        manager.save(4, {"step": 4, "w": torch.zeros(6), "rng": {"state": np.zeros(3, dtype=np.uint32)}})
    assert info.value.errno == errno.ENOSPC
    assert manager.complete_steps() == [2]
    assert sorted(p.name for p in manager.root.iterdir()) == ["step_000000002"]  # no partial step_4, no temporaries
    step, tree = manager.latest()
    assert step == 2
    same_tree(tree, old)

    # a full disk when fsync reports it (delayed allocation) is just as harmless
    monkeypatch.undo()
    real_fsync = os.fsync

    def fsync_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync_full)
    with pytest.raises(OSError):
        manager.save(6, {"step": 6})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert manager.complete_steps() == [2] and manager.latest()[0] == 2

    target = tmp_path / "log.json"
    atomic_write_bytes(target, b"old and complete")
    monkeypatch.setattr(os, "fsync", fsync_full)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_bytes() == b"old and complete"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_train_diffusion_on_a_full_disk_stops_cleanly_and_resumes_exactly(
    inputs, reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    real = checkpoint_module.save_file
    calls = {"n": 0}
    full = _disk_full_after(100)

    def second_save_hits_a_full_disk(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        return (full if calls["n"] == 2 else real)(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", second_save_hits_a_full_disk)
    result = CliRunner().invoke(app, diffusion_args(inputs, run))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    message = " ".join(result.output.split())
    assert "No space left on device" in message and "--resume" in message
    assert CheckpointManager(run).complete_steps() == [2]
    monkeypatch.setattr(checkpoint_module, "save_file", real)
    cli(diffusion_args(inputs, run) + ["--resume"])
    assert_diffusion_equal(run, reference["diffusion"])
