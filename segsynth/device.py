"""One way every trainer and every inference picks its device and precision: accelerate.

A run is placed by :class:`accelerate.Accelerator` (CUDA, MPS or CPU; one process or a
``torchrun`` / ``accelerate launch`` process group), with bf16 autocast where the device has it.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState

from segsynth.config import ConfigError


def resolve_mixed_precision(choice: str) -> str:
    """``auto`` is bf16 on CUDA and full precision elsewhere; fp16 needs CUDA.

    Raises:
        ConfigError: fp16 without a CUDA device.
    """
    if choice == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    if choice == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision fp16 needs a CUDA device")
    return choice


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
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision),
                              cpu=world > 1 and not has_device, **kwargs)
    if world > 1 and accelerator.num_processes != world:
        raise ValueError(f"launched as {world} processes (WORLD_SIZE) but accelerate set up "
                         f"{accelerator.num_processes}; on CPU launch with ACCELERATE_USE_CPU=true")
    return accelerator


def inference_device() -> torch.device:
    """The device of this process (its own GPU under a launcher, else the first one, else the CPU)."""
    return PartialState().device
