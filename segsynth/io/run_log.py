"""Run-folder bookkeeping shared by the training commands: whether a run may resume (same config
up to harmless keys, same data and models), and a log cut back to the checkpoint it resumes from."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from segsynth.config import ConfigError
from segsynth.io.atomic import atomic_write_text
from segsynth.io.yaml_file import read_yaml
from segsynth.io.oserror import naming


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


def check_resume(config_path: Path, cfg: BaseModel, resume: bool, may_change: Callable[[str], bool]) -> None:
    """Refuse to start over an existing run without ``resume``, or to resume it with another config.

    A run saved before a config key existed resumes with that key at its default; every other
    difference is named by its dotted key unless ``may_change`` accepts it (settings that decide
    how long or how visibly a run goes, not what a step computes).

    Raises:
        FileExistsError: ``config_path`` exists and ``resume`` is False.
        ConfigError: the saved config differs in keys ``may_change`` refuses.
    """
    if config_path.exists() and not resume:
        raise FileExistsError(f"{config_path.parent} already holds a run; pass --resume to continue it or choose another --out")
    if not (resume and config_path.exists()):
        return
    saved = read_yaml(config_path, ConfigError)
    try:
        saved = type(cfg).model_validate(saved).model_dump(mode="json")
    except ValueError:
        pass  # compare as saved: the changed keys name the difference
    changed = [key for key in changed_keys(saved, cfg.model_dump(mode="json")) if not may_change(key)]
    if changed:
        raise ConfigError(f"{config_path}: cannot resume with a different {', '.join(changed)}")


def train_keys(names: set[str]) -> Callable[[str], bool]:
    """``may_change`` for :func:`check_resume`: the keys ``train.<name>`` for ``name`` in ``names``."""
    return lambda key: key.startswith("train.") and key.removeprefix("train.") in names


def check_same_record(path: Path, key: str, value: Any, problem: str) -> None:
    """Refuse to resume when the JSON record at ``path`` holds another value at dotted ``key``.

    A missing file passes (nothing was recorded yet); a missing key compares as None.

    Raises:
        ValueError: ``path: problem``.
    """
    if not path.exists():
        return
    saved: Any = json.loads(path.read_text(encoding="utf-8"))
    for part in key.split("."):
        saved = saved.get(part) if isinstance(saved, dict) else None
    if saved != value:
        raise ValueError(f"{path}: {problem}")


def append_log_line(path: Path, record: dict[str, Any]) -> None:
    """Append one key-sorted JSON line and fsync it: the line is on disk before the checkpoint that
    follows it, and a kill can leave at most a torn last line, which :func:`truncate_log` drops."""
    with naming(path), path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
