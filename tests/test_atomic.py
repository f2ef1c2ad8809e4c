"""Atomic writes leave no temporaries and give files the permissions a plain write would."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from segsynth.io.atomic import atomic_directory, atomic_write_json, atomic_write_text


def test_atomic_files_and_folders_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "f.txt", "x")
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "g.txt").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "d", "f.txt", "g.txt"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
