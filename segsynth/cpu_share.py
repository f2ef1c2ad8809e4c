"""Share the CPUs among the ``segsynth`` commands that run on them, instead of collapsing.

Two processes that each run one OpenMP thread per CPU on the same CPUs do not share them: idle
OpenMP threads spin while they wait for a peer the scheduler has taken off its core, and together
the two ran at 48 % of one process's training steps/s; sharing as below, they ran at 125 %
(``benchmarks/results/cpu_threads.json``). A user who starts ``generate`` beside a training run, or two
benchmarks on one node, should get the second outcome without knowing about threads.

So every ``segsynth`` command that chooses its own threads (``OMP_NUM_THREADS`` unset) registers
in a per-user folder: a file named by its pid that lists its CPUs and that it holds locked
(``flock``) for as long as it lives, so a crashed or killed command's entry is recognised as stale
and removed by whoever finds it. A watcher thread re-counts the live commands whose CPUs overlap
this one's every :data:`RECOUNT_SECONDS`; the training and sampling loops call
:func:`rebalance_threads` between steps, which applies ``usable CPUs // commands`` threads with
``torch.set_num_threads`` (on the computing thread: OpenMP's thread count is per thread). When the
other command ends, the threads come back.

An ``OMP_NUM_THREADS`` you set wins and opts out: the command then never registers or changes its
threads (the test suite relies on this for bit-exact comparisons). Library callers are never
registered either; they keep the ``torch.set_num_threads`` they chose. Commands of other users are
not seen (each user has their own folder).
"""

from __future__ import annotations

import atexit
import os
import tempfile
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO

from segsynth.cpus import cpu_threads, launch_processes, usable_cpus

try:
    import fcntl
except ImportError:  # not POSIX: no registry, each command runs its launch's share (segsynth.cpus)
    fcntl = None  # type: ignore[assignment]

#: Seconds between two counts of the commands sharing this one's CPUs.
RECOUNT_SECONDS = 1.0
#: Suffix of a registered command's entry in the registry folder.
ENTRY_SUFFIX = ".cpus"


def registry_dir() -> Path:
    """The folder in which this user's running commands register."""
    return Path(tempfile.gettempdir()) / f"segsynth-cpu-share-{os.getuid()}"


def affinity() -> frozenset[int]:
    """The CPU ids this process may run on (all of them where the platform does not tell)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def parse_cpus(text: str) -> frozenset[int]:
    """The CPU ids written in an entry (comma separated); empty when the entry is unreadable."""
    try:
        return frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        return frozenset()


class CpuShare:
    """This command's entry in the registry and the thread count its share of the CPUs allows now.

    Args:
        registry: the registry folder (:func:`registry_dir` for real commands).
        cpus: the CPU ids this process may run on (default: its affinity mask).
        usable: CPUs this process may use (default: :func:`segsynth.cpus.usable_cpus`, which also
            honours a cgroup quota).
    """

    def __init__(self, registry: Path, cpus: frozenset[int] | None = None, usable: int | None = None) -> None:
        self.registry = registry
        self.cpus = cpus if cpus is not None else affinity()
        self.usable = usable if usable is not None else usable_cpus()
        self.entry = registry / f"{os.getpid()}{ENTRY_SUFFIX}"
        self._handle = self._register()
        self.wanted = self.threads_now()
        self.applied: int | None = None
        self._stop = threading.Event()

    def _register(self) -> IO[str]:
        """Write and lock this command's entry; it appears under its final name already locked."""
        self.registry.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = self.registry / f".{os.getpid()}.partial"
        handle = partial.open("w")
        fcntl.flock(handle, fcntl.LOCK_EX)  # held until this process ends or closes it
        handle.write(",".join(str(cpu) for cpu in sorted(self.cpus)))
        handle.flush()
        os.replace(partial, self.entry)  # the lock is on the file, so it moves with it
        return handle

    def sharers(self) -> int:
        """Live registered commands whose CPUs overlap this one's, this one included.

        An entry whose lock can be taken belongs to a command that has ended: it is removed.
        """
        count = 1
        for entry in self.registry.glob(f"*{ENTRY_SUFFIX}"):
            if entry == self.entry:
                continue
            try:
                handle = entry.open()
            except OSError:  # removed meanwhile
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # its owner holds it: alive
                    count += bool(parse_cpus(handle.read()) & self.cpus)
                else:
                    entry.unlink(missing_ok=True)
        return count

    def threads_now(self) -> int:
        """This command's share: the usable CPUs divided among the commands on them (at least 1).

        The processes of one launch register each, so they count as sharers too; ``LOCAL_WORLD_SIZE``
        still bounds the share while they are starting.
        """
        return max(1, self.usable // max(self.sharers(), launch_processes()))

    def start(self) -> None:
        """Re-count in a daemon thread every :data:`RECOUNT_SECONDS` until :meth:`close`."""
        threading.Thread(target=self._watch, name="segsynth-cpu-share", daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(RECOUNT_SECONDS):
            try:
                self.wanted = self.threads_now()
            except OSError:  # the registry vanished (a /tmp cleaner): keep the last share
                continue

    def apply(self) -> None:
        """Set torch's intra-op threads to the current share where it changed (call on the computing thread)."""
        wanted = self.wanted
        if wanted != self.applied:
            import torch

            torch.set_num_threads(wanted)
            self.applied = wanted

    def close(self) -> None:
        """Stop re-counting and leave the registry."""
        self._stop.set()
        self.entry.unlink(missing_ok=True)
        self._handle.close()


_active: CpuShare | None = None


def _forget_in_child() -> None:
    """A forked child has no watcher thread and is not registered: it keeps the threads it has."""
    global _active
    _active = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def share_cpus(environ: MutableMapping[str, str] = os.environ, registry: Path | None = None) -> int:
    """Choose this command's threads before torch starts; called once by the console entry point.

    Where ``OMP_NUM_THREADS`` is set, it wins and nothing is registered. Otherwise the command
    registers, sets ``OMP_NUM_THREADS`` to its current share, and keeps the share up to date
    (see :func:`rebalance_threads`). Where the registry cannot be written (a read-only temp
    folder) or the platform has no ``flock``, the command runs its share of its launch without
    watching others.

    Returns:
        The thread count now in ``environ``.
    """
    global _active
    if environ.get("OMP_NUM_THREADS", "").strip():
        return int(environ["OMP_NUM_THREADS"])
    share = None
    if fcntl is not None:  # POSIX
        try:
            share = CpuShare(registry if registry is not None else registry_dir())
        except OSError:
            share = None
    if share is None:
        environ["OMP_NUM_THREADS"] = str(cpu_threads())
        return int(environ["OMP_NUM_THREADS"])
    share.start()
    atexit.register(share.close)
    _active = share
    environ["OMP_NUM_THREADS"] = str(share.wanted)
    return share.wanted


def rebalance_threads() -> None:
    """Run this command's current share of threads: called between training steps and sampler steps.

    Does nothing unless :func:`share_cpus` registered this process.
    """
    if _active is not None:
        _active.apply()


def stop_sharing() -> None:
    """Leave the registry and stop re-counting (a test or a caller that takes over the threads)."""
    global _active
    if _active is not None:
        _active.close()
        _active = None
