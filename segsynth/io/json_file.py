"""Reading the small JSON files that describe datasets, runs and models, with errors that name the file.

These files come from users and from other tools, so the reader refuses what ``json.loads`` would
turn into a crash or a silent surprise: nesting deep enough to exhaust the interpreter's stack, a
key given twice (json keeps the last one without a word), and files too big to be a description.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: No description file is this big; a bigger one is a mistake (or an attack on memory).
MAX_JSON_BYTES = 256 * 1024 * 1024


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def parse_json_text(text: str, where: str, error: type[Exception] = ValueError) -> Any:
    """``json.loads`` with duplicate keys and runaway nesting reported as ``error`` naming ``where``."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise error(f"{where}: {exc}") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply to be a description file") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not readable JSON ({exc})") from None


def read_json_object(path: Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        error: ``path: not readable JSON (...)``, ``path: top level must be an object``, a
            duplicate key, too deep nesting or an oversized file (the caller picks the exception
            type its own callers expect, e.g. a dataset format error).
    """
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise error(f"{path}: {size} bytes, more than any description file holds ({MAX_JSON_BYTES})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not readable JSON ({exc})") from None
    data = parse_json_text(text, str(path), error)
    if not isinstance(data, dict):
        raise error(f"{path}: top level must be an object")
    return data
