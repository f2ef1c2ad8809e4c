"""Commands on the same CPUs share them: each counts the live others and runs its share of threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segsynth import cpu_share
from segsynth.cpu_share import CpuShare, share_cpus

#: A registered command that lives until its stdin closes (or it is killed); prints "ready" once registered.
PEER = ("import sys; from pathlib import Path; from segsynth.cpu_share import CpuShare\n"
        "share = CpuShare(Path(sys.argv[1]), cpus=frozenset(int(c) for c in sys.argv[2].split(',')), usable=2)\n"
        "print('ready', flush=True); sys.stdin.read()")


def start_peer(registry: Path, cpus: str) -> subprocess.Popen[str]:
    peer = subprocess.Popen([sys.executable, "-c", PEER, str(registry), cpus], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert peer.stdout is not None and peer.stdout.readline().strip() == "ready"
    return peer


def test_a_command_alone_runs_every_usable_cpu(tmp_path: Path) -> None:
    share = CpuShare(tmp_path, cpus=frozenset({0, 1}), usable=2)
    try:
        assert share.sharers() == 1 and share.threads_now() == 2
    finally:
        share.close()
    assert not list(tmp_path.iterdir())  # closing leaves the registry


def test_two_commands_on_the_same_cpus_take_one_share_each_and_get_it_back(tmp_path: Path) -> None:
    share = CpuShare(tmp_path, cpus=frozenset({0, 1}), usable=2)
    peer = start_peer(tmp_path, "1,7")
    try:
        assert share.sharers() == 2 and share.threads_now() == 1
    finally:
        peer.communicate("")  # the peer ends normally
    assert share.sharers() == 1 and share.threads_now() == 2
    share.close()


def test_commands_on_other_cpus_do_not_count(tmp_path: Path) -> None:
    share = CpuShare(tmp_path, cpus=frozenset({0, 1}), usable=2)
    peer = start_peer(tmp_path, "2,3")
    try:
        assert share.sharers() == 1
    finally:
        peer.communicate("")
        share.close()


def test_a_killed_commands_entry_is_recognised_as_stale_and_removed(tmp_path: Path) -> None:
    share = CpuShare(tmp_path, cpus=frozenset({0, 1}), usable=2)
    peer = start_peer(tmp_path, "0,1")
    entry = tmp_path / f"{peer.pid}{cpu_share.ENTRY_SUFFIX}"
    assert entry.is_file()
    peer.send_signal(signal.SIGKILL)
    peer.wait()
    assert entry.is_file()  # a killed process cannot clean up after itself...
    assert share.sharers() == 1 and not entry.exists()  # ...but its lock died with it
    share.close()


def test_the_watcher_recounts_in_the_background_and_apply_sets_torch_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_share, "RECOUNT_SECONDS", 0.05)
    before = torch.get_num_threads()
    share = CpuShare(tmp_path, cpus=frozenset({0, 1}), usable=2)
    share.start()
    try:
        share.apply()
        assert torch.get_num_threads() == 2
        peer = start_peer(tmp_path, "0,1")
        deadline = time.monotonic() + 10
        while share.wanted != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        share.apply()
        assert torch.get_num_threads() == 1
        peer.communicate("")
    finally:
        share.close()
        torch.set_num_threads(before)


def test_explicit_omp_num_threads_wins_and_registers_nothing(tmp_path: Path) -> None:
    assert share_cpus({"OMP_NUM_THREADS": "1"}, registry=tmp_path) == 1
    assert not list(tmp_path.iterdir())


def test_without_omp_num_threads_the_command_registers_and_sets_its_share(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_share, "usable_cpus", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    peer = start_peer(tmp_path, "0,1")
    environ: dict[str, str] = {}
    try:
        assert share_cpus(environ, registry=tmp_path) == 1 and environ == {"OMP_NUM_THREADS": "1"}
        assert (tmp_path / f"{os.getpid()}{cpu_share.ENTRY_SUFFIX}").is_file()
    finally:
        cpu_share.stop_sharing()
        peer.communicate("")
    assert not (tmp_path / f"{os.getpid()}{cpu_share.ENTRY_SUFFIX}").exists()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # its launch's other process may not have registered yet
    assert share_cpus({}, registry=tmp_path) == 1
    cpu_share.stop_sharing()


class CountingShare:
    """Stands in for a registered command's share: counts the loops' calls to apply it."""

    def __init__(self) -> None:
        self.calls = 0

    def apply(self) -> None:
        self.calls += 1


def test_the_training_engine_applies_the_share_before_every_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_engine import train

    counting = CountingShare()
    monkeypatch.setattr(cpu_share, "_active", counting)
    _, task = train(tmp_path / "run")
    assert counting.calls == len(task.seen_steps) == 6


def test_the_sampler_applies_the_share_before_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_pipeline import inputs, tiny_pipeline

    counting = CountingShare()
    monkeypatch.setattr(cpu_share, "_active", counting)
    layout, refs = inputs(1)
    tiny_pipeline()(layout, refs, num_inference_steps=3, sampler="ddim")
    assert counting.calls == 3


def test_an_unwritable_registry_falls_back_to_the_launchs_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_share, "cpu_threads", lambda: 3)
    (tmp_path / "a-file").write_text("")
    environ: dict[str, str] = {}
    assert share_cpus(environ, registry=tmp_path / "a-file" / "registry") == 3 and environ == {"OMP_NUM_THREADS": "3"}
    assert cpu_share._active is None
