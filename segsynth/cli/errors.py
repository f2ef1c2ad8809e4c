"""One place that turns expected user errors into a red one-line message and exit code 2."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from segsynth.config import ConfigError
from segsynth.data.format import DatasetFormatError
from segsynth.data.io import DataReadError
from segsynth.io.finite import NonFiniteError
from segsynth.io.lock import FolderInUseError

#: Tables (benchmark, dataset summary) need ~120 columns; when output goes to a file or a CI log
#: (no terminal, where rich would assume 80) print them that wide instead of wrapping every cell.
console = Console() if Console().is_terminal else Console(width=120)
err_console = Console(stderr=True)

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DatasetFormatError,
    DataReadError,
    FolderInUseError,
    NonFiniteError,
    FileNotFoundError,
    FileExistsError,
    ValueError,
)


#: Environment problems a user fixes outside segsynth (then re-runs with --resume): no traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Report a bad input as ``error: <file>: <problem>`` and exit 2 instead of a traceback."""
    try:
        yield
    except USER_ERRORS as exc:
        # escaped: a message may hold brackets (paths, "pip install 'segsynth[backbone]'") that are not markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(
            f"[bold red]error:[/] {where}{exc.strerror}; completed work is kept, fix this and re-run with --resume",
            highlight=False, soft_wrap=True,
        )
        raise typer.Exit(2) from None
