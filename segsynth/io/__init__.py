"""Crash-safe file output shared by every stage: atomic files and resumable checkpoints."""

from segsynth.io.atomic import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text
from segsynth.io.checkpoint import (
    CheckpointManager,
    load_state_tree,
    rng_state,
    save_state_tree,
    set_rng_state,
)

__all__ = [
    "CheckpointManager",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_state_tree",
    "rng_state",
    "save_state_tree",
    "set_rng_state",
]
