"""Refuse what cannot fit before anything starts: memory for training and generation, disk for outputs.

A run that needs more memory than the machine has used to die minutes in, in whatever allocation
came first (a padding, a layout array), with a traceback that named neither the setting nor the
limit, and with the run folder already half written. Each stage therefore builds an
:class:`Estimate` of what it will hold at its peak, *before* it writes anything, and
:func:`check_memory` refuses it with exit code 2 when the estimate exceeds the memory available,
showing both numbers and the setting to lower.

The estimates count only what a step certainly holds, so a refusal errs towards letting a run
start, never towards refusing one that fits: activations are what autograd saves for the backward
pass of the configured network (measured by running it under
:func:`torch.autograd.graph.saved_tensors_hooks`, on the ``meta`` device at the real size where
the network allows that, otherwise on a small CPU probe scaled by the pixel count, which
``tests/test_fits.py`` holds to within 25% of a full-size measurement), plus the parameters,
their gradients and the optimiser's moments. Allocator overhead, workspace, gradients of the
activations and fragmentation come on top, so a run that passes may still need more.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GIB = 2**30


class DoesNotFitError(ValueError):
    """A run needs more memory or disk than there is; raised before any output is written."""


def format_bytes(n: float) -> str:
    """``1.5 GiB`` / ``12.0 MiB``: the unit that keeps the number readable."""
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class Estimate:
    """What a stage holds at its peak, by part (bytes), and the settings that make it smaller.

    Args:
        what: the stage, as the user ran it (``train-seg``).
        parts: name of each part (``activations (batch 8 of 1x256x256)``) -> bytes.
        lower: the settings to lower if it does not fit.
        writes: bytes the stage writes to its output folder at least (0: not estimated).
        writes_what: what those bytes are, for the message.
    """

    what: str
    parts: dict[str, int] = field(default_factory=dict)
    lower: str = ""
    writes: int = 0
    writes_what: str = ""

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {format_bytes(n)}" for name, n in self.parts.items() if n)


def _cgroup_limit() -> int | None:
    """Memory the container may still take (cgroup v2 or v1), or None outside a limited cgroup."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:  # v1 writes a huge number for "none"
            return None
        return max(int(limit) - usage, 0)
    return None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(device: torch.device | str | None = None) -> tuple[int, str]:
    """Bytes a new allocation on ``device`` can still get, and where that number comes from.

    CUDA: the device's free memory. Otherwise the host's available memory (``psutil`` if it is
    installed, else ``/proc/meminfo``), capped by the container's cgroup limit when there is one.
    When nothing can be read it answers ``(2**63, "unknown")``: no run is refused on a number that
    was never measured.
    """
    if device is not None and str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"free memory of {device}"
    candidates: list[tuple[int, str]] = []
    try:
        import psutil

        candidates.append((int(psutil.virtual_memory().available), "available host memory"))
    except ImportError:
        meminfo = _meminfo_available()
        if meminfo is not None:
            candidates.append((meminfo, "MemAvailable of /proc/meminfo"))
    cgroup = _cgroup_limit()
    if cgroup is not None:
        candidates.append((cgroup, "the container's cgroup memory limit"))
    return min(candidates) if candidates else (2**63, "unknown")


def check_memory(estimate: Estimate, device: torch.device | str | None = None) -> None:
    """Refuse ``estimate`` if it exceeds the memory available on ``device``.

    Raises:
        DoesNotFitError: naming the estimate by part, the limit and its source, and what to lower.
    """
    available, source = available_memory(device)
    if estimate.total > available:
        lower = f"; lower {estimate.lower}" if estimate.lower else ""
        raise DoesNotFitError(
            f"{estimate.what} needs at least {format_bytes(estimate.total)} of memory ({estimate.describe()}) "
            f"but only {format_bytes(available)} is available ({source}){lower}"
        )


def check_fits(estimate: Estimate, device: torch.device | str | None, out: str | os.PathLike[str]) -> None:
    """:func:`check_memory`, then :func:`check_disk` for what the stage writes to ``out``."""
    check_memory(estimate, device)
    if estimate.writes:
        check_disk(out, estimate.writes, f"{estimate.what} ({estimate.writes_what})")


def check_disk(path: str | os.PathLike[str], needed: int, what: str) -> None:
    """Refuse to start writing ``needed`` bytes under ``path`` when its file system has less free.

    ``path`` need not exist yet: its nearest existing parent tells the file system.

    Raises:
        DoesNotFitError: naming ``path``, the need and the free space.
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # not measurable (e.g. a path component is a file): the writer reports its own error
    if needed > free:
        raise DoesNotFitError(f"{path}: {what} needs about {format_bytes(needed)} of disk but only "
                              f"{format_bytes(free)} is free there")


def saved_activation_bytes(forward: Callable[[], object], weights: Iterable[torch.Tensor] = ()) -> int:
    """Bytes autograd saves for the backward pass of ``forward()`` (works on ``meta`` tensors too).

    Saved ``weights`` (or views of them, such as the transpose a linear layer saves) are left out:
    they are counted with the parameters. A storage saved twice counts once.
    """
    import torch

    seen: dict[object, int] = {}
    weight_ids = {id(w) for w in weights}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in weight_ids and id(base) not in weight_ids:
            key: object = id(tensor) if tensor.device.type == "meta" else tensor.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(seen.values())


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s trainable parameters."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)


def training_estimate(what: str, params: int, activations: int, batch_data: int, *, weight_copies: int,
                      mixed_precision: str, lower: str) -> Estimate:
    """Peak of a training step: ``weight_copies`` times the parameters (weights, gradients, AdamW's
    two moments: 4; an EMA adds one), the saved activations (measured in float32: half of that under
    ``bf16``/``fp16`` autocast, the accelerator's ``mixed_precision``) and the loaded batch (twice:
    the samples and their collated stack).

    On disk it writes at least one checkpoint (every weight copy but the gradients) and the released
    weights; from the second checkpoint on, two stand side by side while the new one is completed.
    """
    parts = {
        "parameters, gradients and optimiser state": params * weight_copies,
        "activations": activations // 2 if mixed_precision in ("bf16", "fp16") else activations,
        "batch": 2 * batch_data,
    }
    return Estimate(what, parts, lower, writes=params * (weight_copies - 1) + params,
                    writes_what="a checkpoint and the released weights")


def scale_to(measured: int, measured_pixels: int, pixels: int) -> int:
    """A probe's bytes scaled from ``measured_pixels`` to ``pixels`` (activations grow with the area)."""
    return math.ceil(measured * pixels / max(measured_pixels, 1))
