"""Run-folder bookkeeping shared by the training commands: what changed in a config, and a log
cut back to the checkpoint a run resumes from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segsynth.io.atomic import atomic_write_text


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf that differs between two nested dicts (added or removed keys too)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            path
            for key in sorted(set(old) | set(new))
            for path in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [prefix.rstrip(".")]


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after checkpoint ``step`` (and a torn last line) before resuming."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
