"""Atomic writes: a reader (or a resumed run) sees either the old file or the complete new one.

Every file segsynth produces goes through here, so a SIGKILL or a full disk can never leave a
half-written image, mask, manifest or checkpoint behind under its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segsynth.io.oserror import naming


def _fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling file, fsync and ``os.replace``.

    Raises:
        FileExistsError: ``path`` is an existing folder (``-o`` named a folder where a file goes).
    """
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"{path} is an existing folder, not a file; name a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with naming(path), os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON so identical content gives identical bytes."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temporaries(*folders: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden ``.*.tmp`` / ``.*.old`` entries a killed writer left directly in ``folders``.

    Only call this for folders that a single process owns (a run folder being resumed): a
    temporary of a writer that is still alive would be deleted under it.

    Returns:
        What was removed.
    """
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for entry in [*folder.glob(".*.tmp"), *folder.glob(".*.old")]:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place only when complete.

    Args:
        final: where the finished directory must appear.
        overwrite: replace an existing ``final`` (it is removed only after the new one is complete).
            An existing empty folder is replaced without it.

    Yields:
        The temporary directory to fill. On an exception it is deleted, ``final`` is untouched and
        the parent folders this call created are removed again, so a refusal leaves nothing behind.
    """
    final = Path(final)
    if final.exists() and not overwrite and not (final.is_dir() and not any(final.iterdir())):
        raise FileExistsError(f"{final} already exists")
    created = [parent for parent in reversed(final.parents) if not parent.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the folder from collaborators
        with naming(final):  # a failed write inside names at least the folder being written
            yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with naming(os.path.join(root, name)), open(os.path.join(root, name), "rb") as handle:
                    os.fsync(handle.fileno())
        if final.exists():
            trash = final.with_name(f".{final.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):  # deepest first; one that now holds something stays
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
