"""Reading the small JSON files that describe datasets, runs and models, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_object(path: Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        error: ``path: not readable JSON (...)`` or ``path: top level must be an object`` (the
            caller picks the exception type its own callers expect, e.g. a dataset format error).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: top level must be an object")
    return data
