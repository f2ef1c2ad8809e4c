"""Exclusive ownership of an output folder: one writer per run folder, synthetic set or shard.

Two processes writing the same folder interleave manifests, checkpoints and configs into a state
neither would produce alone, and every file still looks whole. A lock file created with
``O_CREAT | O_EXCL`` (atomic on every local filesystem and on NFSv3+) names the owner (pid, host,
process start time); a second writer fails at once with :class:`FolderInUseError` naming the folder
and the owner. A lock whose owner is gone (killed, crashed) is *stale*: on the same host that is
decided by the pid and its start time (so neither a zombie nor a recycled pid keeps it alive) and
the lock is taken over; a lock from another host is never broken automatically.

While a lock is held, SIGTERM (``kill``, ``timeout``, a job scheduler) unwinds the process like an
error would, so the lock is released and an output folder the command created but left empty is
removed, instead of both staying behind for the next run to puzzle over.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from segsynth.io.oserror import naming

P = ParamSpec("P")
R = TypeVar("R")

#: Name of the lock of a whole folder (a run folder, a synthetic set's bookkeeping).
FOLDER_LOCK = ".segsynth.lock"


class FolderInUseError(RuntimeError):
    """Another live process owns the folder; the message names the folder, the owner and what to do."""


@dataclass(frozen=True)
class Owner:
    """Who holds a lock, as written into the lock file."""

    pid: int
    host: str
    started: str | None  # process start time (from /proc), None where the platform does not tell
    token: str
    since: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid}@{self.host} (since {when})"


def _stat_fields(pid: int) -> list[str]:
    """Fields 3.. of ``/proc/PID/stat`` (state first), or [] where there is no such file."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return stat.rsplit(")", 1)[-1].split()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of ``/proc/PID/stat``), or None when unknown."""
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else None


def _alive(owner: Owner) -> bool:
    """Whether the owner process still runs (only decidable for a lock of this host)."""
    if owner.host != socket.gethostname():
        return True
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to another user
    if _stat_fields(owner.pid)[:1] in (["Z"], ["X"]):
        return False  # killed, not yet reaped by its parent
    started = _start_time(owner.pid)
    return owner.started is None or started is None or started == owner.started


def _read_owner(path: Path) -> Owner | None:
    """The lock's owner, or None when the file is gone or unreadable (a writer killed mid-write)."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        return Owner(pid=int(data["pid"]), host=str(data["host"]), started=data.get("started"),
                     token=str(data["token"]), since=float(data["since"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return Owner(pid=-1, host="?", started=None, token="", since=0.0)


def _try_create(path: Path, me: Owner) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with naming(path), os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"pid": me.pid, "host": me.host, "started": me.started, "token": me.token, "since": me.since}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _break_stale(path: Path, stale: Owner) -> None:
    """Remove ``path`` if it still holds ``stale``'s lock (not one a rival took over meanwhile).

    The file is first renamed away (atomic), then checked: a live lock taken by a rival between our
    read and the rename is linked back into place.
    """
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read_owner(aside)
    if moved is not None and moved.token and moved.token != stale.token:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def _unreadable(owner: Owner) -> bool:
    return owner.pid == -1


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM while a lock is held: leave through the ``finally`` blocks (exit status as if killed)."""
    raise SystemExit(128 + signum)


def _unwind_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise :class:`SystemExit` until the returned function is called.

    Only where SIGTERM still has its default action (which would end the process without releasing
    anything) and only from the main thread, the one Python delivers signals to.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None
    signal.signal(signal.SIGTERM, _terminate)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)


class FolderLock:
    """An exclusive lock on ``folder`` held through the lock file ``folder / name``.

    Args:
        folder: the folder to own (created if missing).
        name: the lock file's name; different names lock independent parts (shards of one set).
        wait: seconds to wait for a live owner to let go (0: fail at once).
    """

    def __init__(self, folder: str | os.PathLike[str], name: str = FOLDER_LOCK, *, wait: float = 0.0) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.wait = wait
        self._me: Owner | None = None
        self._created: list[Path] = []
        self._restore_sigterm: Callable[[], None] = lambda: None

    def acquire(self) -> FolderLock:
        """Take the lock, taking over a stale one.

        Raises:
            FolderInUseError: a live process (or one on another host) holds it.
        """
        self._created = [f for f in (*reversed(self.folder.parents), self.folder) if not f.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        me = Owner(pid=os.getpid(), host=socket.gethostname(), started=_start_time(os.getpid()),
                   token=uuid.uuid4().hex, since=time.time())
        deadline = time.monotonic() + self.wait
        while not _try_create(self.path, me):
            owner = _read_owner(self.path)
            if owner is None:
                continue  # released between our attempts
            if _unreadable(owner):
                # Empty or torn: a live writer fills it within microseconds of creating it, so one
                # that stays so for a second was killed in between.
                if time.time() - self._mtime() > 1:
                    _break_stale(self.path, owner)
                else:
                    time.sleep(0.05)
                continue
            if not _alive(owner):
                _break_stale(self.path, owner)
                continue
            if time.monotonic() >= deadline:
                self._remove_if_created()
                raise FolderInUseError(self._busy_message(owner))
            time.sleep(0.05)
        self._me = me
        self._restore_sigterm = _unwind_on_sigterm()
        return self

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _busy_message(self, owner: Owner) -> str:
        hint = "" if owner.host == socket.gethostname() else f"; if that process is gone, delete {self.path}"
        return f"{self.folder}: in use by {owner.describe()}; wait for it to finish or choose another output folder{hint}"

    def release(self) -> None:
        """Remove the lock file if it is still ours (never another owner's), and the folder (with
        the parents) this lock created if the work left nothing in it (a command refused before
        writing)."""
        if self._me is None:
            return
        owner = _read_owner(self.path)
        if owner is not None and owner.token == self._me.token:
            self.path.unlink(missing_ok=True)
        self._me = None
        self._remove_if_created()
        self._restore_sigterm()
        self._restore_sigterm = lambda: None

    def _remove_if_created(self) -> None:
        for folder in reversed(self._created):  # deepest first
            try:
                folder.rmdir()  # fails, as it should, when anything is inside
            except OSError:
                break

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def launch_rank() -> int:
    """This process's global rank under ``accelerate launch`` / ``torchrun`` (0 when started alone):
    only rank 0 owns a multi-process run's folder, the others write through it."""
    return int(os.environ.get("RANK", "0"))


def owns_folder(param: str = "out") -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a command function so it runs holding the lock of its ``param`` folder (rank 0 only)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: P.args, **kwargs: P.kwargs) -> R:
            folder = signature.bind(*args, **kwargs).arguments[param]
            with folder_lock(folder, enabled=launch_rank() == 0):
                return fn(*args, **kwargs)

        return locked

    return decorate


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], name: str = FOLDER_LOCK, *, wait: float = 0.0,
                enabled: bool = True) -> Iterator[FolderLock | None]:
    """``with folder_lock(out):`` own ``out`` for the block; ``enabled=False`` (a non-main process of
    a multi-process run, whose main process holds the lock) does nothing."""
    if not enabled:
        yield None
        return
    with FolderLock(folder, name, wait=wait) as lock:
        yield lock
