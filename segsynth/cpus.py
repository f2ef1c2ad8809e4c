"""How many CPU threads one process should run: the CPUs it may use, shared among its launch.

Torch-free on purpose: the console entry point decides before torch is imported, by setting
``OMP_NUM_THREADS`` (torch, oneDNN and OpenMP read it when they start, and child processes
inherit it); :mod:`segsynth.cpu_share` then divides these CPUs among the commands running on them.
A library caller is never overridden: it keeps the ``torch.set_num_threads`` it chose.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs a cgroup quota grants this process (``cpu.max`` or cgroup v1's cfs files), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may actually run on: its affinity mask, capped by its cgroup quota.

    Why not ``os.cpu_count()``: in a container or under ``taskset`` it counts the host, and a
    process that starts one spinning thread per host core on two granted CPUs runs far slower
    than one with two threads.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def launch_processes() -> int:
    """Processes of this launch on this machine: ``LOCAL_WORLD_SIZE`` (``torchrun``, ``accelerate launch``), else 1."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def cpu_threads(processes: int | None = None) -> int:
    """Threads for one process: the usable CPUs shared among the ``processes`` on this machine.

    Args:
        processes: processes of this launch on this machine (default: ``LOCAL_WORLD_SIZE``, set by
            ``torchrun`` / ``accelerate launch``; 1 otherwise).
    """
    if processes is None:
        processes = launch_processes()
    return max(1, usable_cpus() // max(1, processes))
