"""Recognise an operating-system failure (full disk, I/O error) behind a library's own exception.

safetensors reports a failed write as ``SafetensorError("... No space left on device (os error
28)")``: no ``errno``, no file name, so it would pass for a bug. Turning it back into the
:class:`OSError` it is lets the CLI say "disk full" instead of printing a traceback.
"""

from __future__ import annotations

import os
import re

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_of(exc: BaseException, filename: str | None = None) -> OSError | None:
    """``exc`` itself if it is an :class:`OSError`, the OS error a wrapped one names, or None.

    Follows ``__cause__`` / ``__context__`` too, so an OSError re-raised as another type is found.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        match = _OS_ERROR.search(str(current))
        if match:
            code = int(match.group(1))
            return OSError(code, os.strerror(code), filename)
        current = current.__cause__ or current.__context__
    return None
