"""One place that turns expected user errors into a red one-line message and exit code 2."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from segsynth.config import ConfigError
from segsynth.console import LogConsole
from segsynth.data.format import DatasetFormatError
from segsynth.data.io import DataReadError
from segsynth.fits import DoesNotFitError
from segsynth.io.finite import NonFiniteError
from segsynth.io.atomic import atomic_write_text
from segsynth.io.display import visible
from segsynth.io.lock import FolderInUseError
from segsynth.io.oserror import os_error_of


class SafeConsole(LogConsole):
    """The log-friendly console (:class:`segsynth.console.LogConsole`) that also shows control
    characters in the text it prints as escapes (:func:`segsynth.io.display.visible`): a file name
    cannot drive the terminal.

    Every string rich prints, table cells and panel bodies included, passes through
    :meth:`render_str`, so escaping there covers what the commands print without each command
    having to remember it.
    """

    def render_str(self, text: str, **kwargs) -> Text:  # type: ignore[override]
        return super().render_str(visible(text), **kwargs)


#: When output goes to a file or a CI log (no terminal, where rich would assume 80 columns) text wraps
#: at 120 and tables print at their natural width, never with a cell cut (:mod:`segsynth.console`).
console = SafeConsole() if Console().is_terminal else SafeConsole(width=120)
err_console = SafeConsole(stderr=True)

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DatasetFormatError,
    DataReadError,
    FolderInUseError,
    NonFiniteError,
    DoesNotFitError,
    FileNotFoundError,
    FileExistsError,
    ValueError,
)


#: Environment problems a user fixes outside segsynth (then runs the command again): no traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}

#: Where :func:`error_boundary` writes the full traceback of an unexpected error (default: the temp folder).
CRASH_DIR_ENV = "SEGSYNTH_CRASH_DIR"


def _print_error(text: str) -> None:
    # escaped: a message may hold brackets (paths, "pip install 'segsynth[backbone]'") that are not markup;
    # err_console shows control characters in it (a file name's) as escapes
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def environment_message(failure: OSError, resumable: bool) -> str:
    """``<file>: <what failed>; <what to do>`` for a full disk, a read-only or unwritable place, an
    I/O error; ``--resume`` is advised only by a command that has it (``resumable``). Without a
    file name (a library that dropped it) the message says so rather than pointing nowhere."""
    where = f"{failure.filename}: " if failure.filename else "(the failing file was not named by the system) "
    advice = ("completed work is kept, fix this and re-run with --resume" if resumable
              else "fix this and run the command again")
    return f"{where}{failure.strerror or os.strerror(failure.errno or 0)}; {advice}"


def _report_expected(exc: Exception, resumable: bool = False) -> bool:
    """Print ``exc`` as one line if it is a bad input or a failing environment; False otherwise."""
    if isinstance(exc, USER_ERRORS):
        _print_error(str(exc))
        return True
    failure = os_error_of(exc)  # also behind safetensors' wrapper of a failed write
    if failure is None or failure.errno not in ENVIRONMENT_ERRNOS:
        return False
    _print_error(environment_message(failure, resumable))
    return True


@contextlib.contextmanager
def user_errors(resumable: bool = False) -> Iterator[None]:
    """Report a bad input as ``error: <file>: <problem>`` and exit 2 instead of a traceback.

    Args:
        resumable: the command has ``--resume`` (only then does a full-disk message advise it).
    """
    try:
        yield
    except Exception as exc:
        if not _report_expected(exc, resumable):
            raise
        raise typer.Exit(2) from None


def command_stage(argv: Sequence[str], groups: Collection[str]) -> str:
    """``segsynth data check`` / ``segsynth generate``: the command an argument list runs, for messages."""
    words = ["segsynth"]
    for arg in argv[:2]:
        if arg.startswith("-") or (len(words) == 2 and words[1] not in groups):
            break
        words.append(arg)
    return " ".join(words)


def _log_traceback(exc: Exception, stage: str) -> Path | None:
    """Write the full traceback to a new file under :data:`CRASH_DIR_ENV`; None if that fails too."""
    folder = Path(os.environ.get(CRASH_DIR_ENV) or Path(tempfile.gettempdir()) / "segsynth-crashes")
    path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.time_ns() % 10**9:09d}.log"
    text = f"{stage}\nargv: {sys.argv!r}\n\n" + "".join(traceback.format_exception(exc))
    try:
        return atomic_write_text(path, text)
    except OSError:
        return None


@contextlib.contextmanager
def error_boundary(stage: str) -> Iterator[None]:
    """Outermost guard of the console script: no traceback reaches a user.

    Expected errors print as in :func:`user_errors` (exit 2); anything else prints one line,
    ``error: <file or stage>: <what>`` and where the full traceback was logged, and exits 1.
    """
    try:
        yield
    except Exception as exc:
        if _report_expected(exc):
            raise SystemExit(2) from None
        log = _log_traceback(exc, stage)
        failure = os_error_of(exc)
        where = failure.filename if failure is not None and failure.filename else stage
        what = (str(exc).strip().splitlines() or [""])[0]
        logged = f"full traceback in {log}" if log is not None else "the traceback could not be logged"
        _print_error(f"{where}: unexpected {type(exc).__name__}: {what} ({logged}; please report it)")
        raise SystemExit(1) from None
