"""Resumable training state stored as safetensors + JSON (no pickle anywhere).

A training state is a nested tree of dicts, lists, tuples, tensors and JSON scalars: model and
optimizer ``state_dict()``s, EMA shadow weights, RNG states, the step and the data order. It is
split into one ``state.safetensors`` (every tensor, under a path-like key) and one ``state.json``
(the structure, with tensors replaced by references), so loading it can never execute code.

:class:`CheckpointManager` writes each checkpoint into a temporary directory, marks it complete,
renames it into place and only then deletes the older ones: a kill at any moment leaves at least
one complete checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from segsynth.artifacts.names import CHECKPOINTS_DIR
from segsynth.io.atomic import atomic_directory
from segsynth.io.oserror import naming, os_error_of

COMPLETE_MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d{9})$")


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} at {key!r} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
        raise ValueError(f"unknown node in checkpoint structure: {sorted(obj)}")
    return obj


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the run's model (another run's step folder, a changed
    network): named with the checkpoint and the first keys that differ, instead of torch's
    ``Error(s) in loading state_dict`` that names neither."""


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, (torch.Tensor, np.ndarray)) else None


def tree_mismatches(expected: Any, found: Any, key: str = "", limit: int = 5) -> list[str]:
    """The first ``limit`` differences between the state a run expects and a checkpoint's: keys
    one side lacks, tensors of another shape (``model/conv.weight: (16, 1, 3, 3) in the checkpoint,
    (8, 1, 3, 3) in this run``). Dicts are compared by key, lists and tuples by position; an empty
    dict on the run's side (a fresh optimiser's state) accepts whatever the checkpoint holds."""
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in a:
                if k not in b:
                    out.append(f"{where}{k}: missing from the checkpoint")
                else:
                    walk(a[k], b[k], f"{where}{k}/")
                if len(out) >= limit:
                    return
            if a:  # a fresh optimiser has no moments yet: an empty dict expects nothing in particular
                out.extend(f"{where}{k}: in the checkpoint, not in this run" for k in b if k not in a)
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                out.append(f"{where.rstrip('/')}: {len(b)} entries in the checkpoint, {len(a)} in this run")
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}{i}/")
        elif _shape(a) is not None and _shape(b) is not None and _shape(a) != _shape(b):
            out.append(f"{where.rstrip('/')}: {_shape(b)} in the checkpoint, {_shape(a)} in this run")

    walk(expected, found, key)
    return out[:limit]


def save_state_tree(directory: str | Path, tree: Any) -> None:
    """Write ``tree`` as ``state.safetensors`` + ``state.json`` inside ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, "root", tensors)
    path = directory / "state.safetensors"
    try:
        save_file(tensors, str(path))
    except SafetensorError as exc:  # a failed write (full disk, I/O error) arrives wrapped
        failure = os_error_of(exc, str(path))
        if failure is None:
            raise
        raise failure from exc
    with naming(directory / "state.json"):
        (directory / "state.json").write_text(json.dumps(structure), encoding="utf-8")


def load_state_tree(directory: str | Path) -> Any:
    """Inverse of :func:`save_state_tree`; raises ``ValueError`` naming the file if it is corrupt."""
    directory = Path(directory)
    try:
        tensors = load_file(str(directory / "state.safetensors"))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{directory / 'state.safetensors'}: unreadable checkpoint tensors ({exc})") from exc
    try:
        structure = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{directory / 'state.json'}: unreadable checkpoint structure ({exc})") from exc
    return _decode(structure, tensors)


class CheckpointManager:
    """Numbered, complete-or-absent checkpoints under ``run_dir/checkpoints``.

    Args:
        run_dir: the run folder.
        keep: how many complete checkpoints to retain (older ones are deleted after a new one lands).
    """

    def __init__(self, run_dir: str | Path, keep: int = 1) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.keep = keep

    def complete_steps(self) -> list[int]:
        """Steps of every complete checkpoint, ascending. Half-written ones are ignored."""
        if not self.root.is_dir():
            return []
        steps = []
        for child in self.root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / COMPLETE_MARKER).is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:09d}"

    def save(self, step: int, tree: Any, extra_files: dict[str, bytes] | None = None) -> Path:
        """Write checkpoint ``step`` atomically, then prune older complete ones.

        Args:
            step: the optimisation step the state belongs to.
            tree: nested state (see module docstring).
            extra_files: small side files (e.g. the resolved config) stored with the state.
        """
        final = self.path(step)
        self.remove_stale()
        with atomic_directory(final, overwrite=True) as tmp:
            save_state_tree(tmp, tree)
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
            (tmp / COMPLETE_MARKER).write_text(f"{step}\n", encoding="utf-8")
        for old in self.complete_steps()[: -self.keep]:
            shutil.rmtree(self.path(old), ignore_errors=True)
        return final

    def remove_stale(self) -> None:
        """Delete what a killed save left behind: hidden ``.step_*.tmp`` folders (never complete).

        Only one process writes a run's checkpoints, so any such folder belongs to a dead writer.
        """
        if self.root.is_dir():
            for child in self.root.glob(".step_*.tmp"):
                shutil.rmtree(child, ignore_errors=True)

    def latest(self) -> tuple[int, Any] | None:
        """The newest complete checkpoint as ``(step, tree)``, or ``None`` when there is none."""
        steps = self.complete_steps()
        if not steps:
            return None
        return steps[-1], load_state_tree(self.path(steps[-1]))


def rng_state() -> dict[str, Any]:
    """Every RNG a CPU training loop draws from, for bit-for-bit resume."""
    import random

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import random

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
