"""Which part of a synthetic set a process writes: ``--shard i/n``, or the rank a multi-process launch
gives it, and the contiguous index range of each shard; also the lock names that keep two writers
of one shard apart and the device a loaded pipeline samples on (both read from the launcher's
environment)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from rich.console import Console

from segsynth.artifacts.schemas import ManifestRecord


@dataclass(frozen=True)
class ShardJob:
    """What one call of the writer does: which shard, whether it continues one, and who hears of it.

    Attributes:
        shard: ``(index, count)``.
        resume: continue the shard's samples already on disk (else a shard with output is refused).
        console: where progress shows (None: quietly).
        on_sample: called with each sample's record as it is committed.
    """

    shard: tuple[int, int]
    resume: bool
    console: Console | None = None
    on_sample: Callable[[ManifestRecord], None] | None = None


#: How long a shard waits for another to finish claiming or merging the set (each takes moments).
SET_LOCK_WAIT_S = 120.0


def shard_lock_name(index: int, count: int) -> str:
    """Lock file of one shard: shards of a set run side by side, a shard never twice."""
    return f".shard-{index}-of-{count}.lock"


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)``: shard 1 (counting from 0) of 4."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like 'i/n' (e.g. 0/4), got {text!r}") from None
    check_shard((index, count))
    return index, count


def default_device(env: Mapping[str, str] | None = None) -> str:
    """Where a loaded pipeline samples: this process's GPU (``LOCAL_RANK`` under a multi-process
    launch, so each process of a node takes its own) when there is one, else the CPU."""
    env = os.environ if env is None else env
    return f"cuda:{int(env.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def launched_shard(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when a launcher started several processes, else None.

    ``accelerate launch`` and ``torchrun`` start the same command once per process and tell each
    its place only through these variables; generation needs no process group, so taking shard
    RANK of WORLD_SIZE is all it takes for the processes to split the set between them.
    """
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if "RANK" not in env:
        raise ValueError(f"WORLD_SIZE is {world} but RANK is not set; launch with accelerate launch or torchrun")
    shard = (int(env["RANK"]), world)
    check_shard(shard)
    return shard


def resolve_shard(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The shard of this process: ``--shard`` if given, else the launcher's, else the whole set.

    Raises:
        ValueError: ``--shard`` names another shard than the multi-process launch gives this
            process (the processes would write the same part, or leave parts undone).
    """
    launched = launched_shard(env)
    if text is None:
        return launched or (0, 1)
    shard = parse_shard(text)
    if launched is not None and shard != launched:
        raise ValueError(
            f"--shard {text} contradicts the launch: this is process {launched[0]} of {launched[1]} "
            f"(RANK, WORLD_SIZE), which takes shard {launched[0]}/{launched[1]}; leave out --shard under a "
            "multi-process launch"
        )
    return shard


def check_shard(shard: tuple[int, int]) -> None:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard i/n needs n >= 1 and 0 <= i < n, got {index}/{count}")


def shard_range(n: int, shard: tuple[int, int]) -> range:
    """Contiguous index range of ``shard`` when ``n`` samples are split into ``shard[1]`` parts."""
    index, count = shard
    return range(index * n // count, (index + 1) * n // count)
