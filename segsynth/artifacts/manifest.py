"""``manifest.jsonl``: one JSON line per synthetic sample, saying exactly how it was made.

Lines are appended with flush + fsync after the sample's image and mask are in place, so a line
is the commit record of its sample. A kill can leave at most a torn last line; resuming detects it
and cuts it off (:func:`read_manifest` with ``repair=True``). A torn line anywhere else, or a line
that is not a valid record, is corruption and is reported with its file and line number.

:func:`read_manifest` is the one parser of the file: generation, segmentation training, the
evaluation and the nnU-Net export all read records through it (typed as
:class:`segsynth.artifacts.schemas.ManifestRecord`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Protocol, TypeVar

from segsynth.artifacts.names import MANIFEST_JSONL, REJECTED_JSONL
from segsynth.artifacts.schemas import ManifestRecord, RejectedRecord, validate_record
from segsynth.io.atomic import atomic_write_text
from segsynth.io.json_file import parse_json_text
from segsynth.io.oserror import naming


def manifest_name(shard: int = 0, num_shards: int = 1) -> str:
    """``manifest.jsonl`` for a single process, ``manifest.shard-I-of-N.jsonl`` for shard I of N."""
    if num_shards == 1:
        return MANIFEST_JSONL
    return f"manifest.shard-{shard}-of-{num_shards}.jsonl"


def rejected_name(shard: int = 0, num_shards: int = 1) -> str:
    """``rejected.jsonl`` (the draws a filter dropped), ``rejected.shard-I-of-N.jsonl`` for shard I of N."""
    if num_shards == 1:
        return REJECTED_JSONL
    return f"rejected.shard-{shard}-of-{num_shards}.jsonl"


class Line(Protocol):
    def to_line(self) -> str: ...


L = TypeVar("L", ManifestRecord, RejectedRecord)


def read_manifest(path: str | Path, repair: bool = False, model: type[L] = ManifestRecord) -> list[L]:  # type: ignore[assignment]
    """Parse a manifest (missing file: no records).

    Args:
        path: the ``.jsonl`` file.
        repair: cut a torn last line (bytes after the last newline) off the file in place, as left
            by a kill during an append. Without it, such a line is an error.
        model: the record of a line: :class:`ManifestRecord`, or :class:`RejectedRecord` for the
            ``rejected.jsonl`` of a filtered set (written and repaired the same way).

    Raises:
        ValueError: a line that is not a valid record, naming the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    records = [_parse_line(raw, f"{path}: line {number}", model) for number, raw in enumerate(complete, start=1)]
    # A line is committed only with its newline (it is written in one call ending in one), so
    # bytes after the last newline are the remains of an interrupted append.
    if tail:
        if not repair:
            raise ValueError(f"{path}: line {len(complete) + 1}: incomplete (no newline); resume to repair it")
        keep = sum(len(raw) + 1 for raw in complete)
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    return records


def _parse_line(raw: bytes, where: str, model: type[L]) -> L:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not JSON ({exc})") from None
    obj = parse_json_text(text, where)
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object")
    return validate_record(model, obj, where)


def write_manifest(path: str | Path, records: Iterable[Line]) -> Path:
    """Write a whole manifest atomically (merging shards, dropping lines of missing samples)."""
    return atomic_write_text(path, "".join(record.to_line() for record in records))


class ManifestWriter:
    """Appends records to a manifest, each one flushed and fsynced before :meth:`append` returns.

    Use as a context manager; the file is created if missing and never truncated.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle: IO[bytes] | None = None

    def __enter__(self) -> ManifestWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "ab")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            with naming(self.path):
                handle.close()

    def append(self, record: Line) -> None:
        """Commit ``record``: after this returns, a kill cannot lose or tear its line."""
        if self._handle is None:
            raise RuntimeError("ManifestWriter.append called outside its 'with' block")
        with naming(self.path):
            self._handle.write(record.to_line().encode("utf-8"))
            self._handle.flush()
            os.fsync(self._handle.fileno())
