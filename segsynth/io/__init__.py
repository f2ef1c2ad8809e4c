"""Crash-safe file output shared by every stage: atomic files and resumable checkpoints.

Names are imported on first use, so writing a JSON file does not load torch (checkpoints do).
"""

from __future__ import annotations

from segsynth.lazy import lazy_exports

_EXPORTS = {
    "CheckpointManager": "segsynth.io.checkpoint",
    "atomic_directory": "segsynth.io.atomic",
    "atomic_write_bytes": "segsynth.io.atomic",
    "atomic_write_json": "segsynth.io.atomic",
    "atomic_write_text": "segsynth.io.atomic",
    "load_state_tree": "segsynth.io.checkpoint",
    "rng_state": "segsynth.io.checkpoint",
    "save_state_tree": "segsynth.io.checkpoint",
    "set_rng_state": "segsynth.io.checkpoint",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
