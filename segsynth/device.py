"""One way every trainer and every inference picks its device, precision and CPU threads: accelerate.

A run is placed by :class:`accelerate.Accelerator` (CUDA, MPS or CPU; one process or a
``torchrun`` / ``accelerate launch`` process group), with bf16 autocast where the device has it:
on CUDA, and on a CPU with native bf16 instructions (AVX512-BF16 or AMX-BF16), where
``benchmarks/cpu_defaults.py`` measured it faster than fp32. On a CPU the run also takes as
many threads as the CPUs it may use (affinity and cgroup quota), shared among the processes of
a launch on this machine.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState

from segsynth.config import ConfigError


#: /proc/cpuinfo flags of native bf16 arithmetic: AVX512-BF16 dot products, AMX-BF16 tiles.
#: Without them oneDNN emulates bf16 with fp32 instructions plus conversions: slower than fp32.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's CPU (``/proc/cpuinfo``; empty where it is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes in bf16 natively (see :data:`BF16_CPU_FLAGS`), so bf16 autocast pays."""
    if cpu_flags() & BF16_CPU_FLAGS:
        return True
    # where /proc/cpuinfo is missing, torch's own dispatch level tells AMX (AVX512 alone does not mean bf16)
    return torch.backends.cpu.get_cpu_capability().startswith("AMX")


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


def cpu_threads(processes: int | None = None) -> int:
    """Threads for one process: the usable CPUs shared among the ``processes`` on this machine.

    Args:
        processes: processes of this launch on this machine (default: ``LOCAL_WORLD_SIZE``, set by
            ``torchrun`` / ``accelerate launch``; 1 otherwise).
    """
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, usable_cpus() // max(1, processes))


def configure_cpu_threads(processes: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`cpu_threads` unless ``OMP_NUM_THREADS`` says otherwise.

    An explicit ``OMP_NUM_THREADS`` (the user's or a launcher's choice) wins; torch already reads it.

    Returns:
        The thread count in effect.
    """
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(cpu_threads(processes))
    return torch.get_num_threads()


def resolve_mixed_precision(choice: str, cpu_bf16: bool = True) -> str:
    """``auto`` is bf16 on CUDA and on a CPU with native bf16, full precision elsewhere; fp16 needs CUDA.

    Args:
        choice: a ``mixed_precision`` setting.
        cpu_bf16: False keeps ``auto`` at full precision on a CPU, for a stage whose bf16 means
            more than autocast (the ControlNet trainer then also stores its frozen backbone in bf16).

    Raises:
        ConfigError: fp16 without a CUDA device.
    """
    if choice == "auto":
        return "bf16" if torch.cuda.is_available() or (cpu_bf16 and cpu_has_native_bf16()) else "no"
    if choice == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision fp16 needs a CUDA device")
    return choice


def _allow_precision(precision: str) -> None:
    """Let this process build an accelerator of ``precision`` after one of another precision.

    accelerate keeps one mixed-precision setting per process and refuses a second; but one
    process may run stages one after another whose ``auto`` and explicit settings differ (a
    benchmark trains the denoiser in bf16 and a segmentation run with ``no``). A module prepared
    earlier keeps the autocast wrapper it was prepared with, so only the precision record is
    reset; the process group and device (``PartialState``) stay.
    """
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def make_accelerator(mixed_precision: str, **kwargs: object) -> Accelerator:
    """The run's :class:`Accelerator`, on gloo when a multi-process launch finds no accelerator device.

    ``torchrun`` and ``accelerate launch --multi_gpu`` set ``WORLD_SIZE``; on a machine without
    CUDA, ``accelerate`` then sets up the process group only when told to run on the CPU (else
    every process would train alone, each thinking it is rank 0 of 1, and all would write the
    same run folder). A launch that still ends up with another process count is refused.

    Args:
        mixed_precision: a ``train.mixed_precision`` value (``auto``, ``no``, ``bf16``, ``fp16``).
        kwargs: further :class:`Accelerator` arguments (e.g. ``log_with``).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    configure_cpu_threads()
    device_api = getattr(torch, "accelerator", None)  # torch >= 2.6 knows every device type
    has_device = device_api.is_available() if device_api is not None else torch.cuda.is_available()
    precision = resolve_mixed_precision(mixed_precision)
    _allow_precision(precision)
    accelerator = Accelerator(mixed_precision=precision,
                              cpu=world > 1 and not has_device, **kwargs)
    if world > 1 and accelerator.num_processes != world:
        raise ValueError(f"launched as {world} processes (WORLD_SIZE) but accelerate set up "
                         f"{accelerator.num_processes}; on CPU launch with ACCELERATE_USE_CPU=true")
    return accelerator


def inference_device() -> torch.device:
    """The device of this process (its own GPU under a launcher, else the first one, else the CPU)."""
    return PartialState().device
