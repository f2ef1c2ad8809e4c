"""The recipes shipped inside the package: YAML configs named by their stem (``tiny``, ``base``, ...).

They travel in the wheel as package data and are read through :mod:`importlib.resources`, so
``--config tiny`` and ``segsynth run`` work from any install, not only from a source checkout.
Each file's header says what it is for; ``segsynth recipes`` lists them.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

#: File suffix of a recipe.
SUFFIX = ".yaml"


def _folder() -> Traversable:
    return files(__name__)


def recipe_names() -> list[str]:
    """Every shipped recipe's name, sorted."""
    return sorted(entry.name[: -len(SUFFIX)] for entry in _folder().iterdir() if entry.name.endswith(SUFFIX))


def recipe(name: str) -> Traversable | None:
    """The shipped recipe called ``name`` (``tiny`` or ``tiny.yaml``), or None if there is none."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return _folder() / f"{stem}{SUFFIX}" if stem in recipe_names() else None


def recipe_summary(name: str) -> str:
    """The first sentence of a recipe's header comment: what it is for."""
    found = recipe(name)
    if found is None:
        raise KeyError(name)
    words = []
    for line in found.read_text(encoding="utf-8").splitlines():
        body = line[1:].strip()
        # the header ends at its first non-comment, blank, indented (a command) or bulleted line
        if not line.startswith("# ") or line.startswith("#  ") or not body or body.startswith("-"):
            break
        words.append(body)
    first = " ".join(words).split(". ")[0].rstrip(".:")
    return f"{first}." if first else ""


def config_source(path: str | Path) -> Path | Traversable:
    """Where a ``--config`` value is read from: an existing file wins; otherwise a bare name
    (no folder) that names a shipped recipe is that recipe; otherwise the path itself (whose
    read error then names it)."""
    path = Path(path)
    if path.is_file() or path.parent != Path("."):
        return path
    return recipe(path.name) or path
