"""Recognise an operating-system failure (full disk, I/O error) behind a library's own exception.

safetensors reports a failed write as ``SafetensorError("... No space left on device (os error
28)")``: no ``errno``, no file name, so it would pass for a bug. Turning it back into the
:class:`OSError` it is lets the CLI say "disk full" instead of printing a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

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


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Give an :class:`OSError` raised inside the block ``path`` as its file name if it has none.

    A failed ``write()``/``fsync()`` on an open file (a full disk) carries no file name, so the
    message would not say which file or disk; the writer knows it. A library's wrapper of an OS
    error (safetensors' ``... (os error 28)``) becomes that :class:`OSError`, naming ``path``.
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = os.fspath(path)
        raise
    except Exception as exc:
        match = _OS_ERROR.search(str(exc))
        if match is None:
            raise
        code = int(match.group(1))
        raise OSError(code, os.strerror(code), os.fspath(path)) from exc
