"""One way every trainer and every inference picks its device, precision and CPU threads: accelerate.

A run is placed by :class:`accelerate.Accelerator` (CUDA, MPS or CPU; one process or a
``torchrun`` / ``accelerate launch`` process group), with bf16 autocast where the device has it:
on CUDA, and on a CPU with native bf16 instructions (AVX512-BF16 or AMX-BF16), where
``benchmarks/cpu_defaults.py`` measured it faster than fp32. CPU threads are not chosen here:
the console entry point picks them once, before torch starts (:mod:`segsynth.cpus`), and a
Python caller keeps whatever ``torch.set_num_threads`` it chose.
"""

from __future__ import annotations

import contextlib
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


def sampling_precision(choice: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: the precision a ``mixed_precision`` choice samples in on ``device``.

    ``auto`` is bf16 on CUDA and on a CPU with native bf16 (where it pays), fp32 elsewhere.
    """
    if choice == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return "bf16" if native else "fp32"
    return "bf16" if choice == "bf16" else "fp32"


def sampling_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision`` ``bf16``; a context that changes nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
