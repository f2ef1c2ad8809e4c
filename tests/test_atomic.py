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


def test_a_failed_folder_leaves_no_parent_behind_and_an_empty_folder_is_taken(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "new" / "deeper" / "out") as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("refused half way")
    assert list(tmp_path.iterdir()) == []  # the parents it made are gone again
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as tmp:  # an empty folder is no output to protect
        (tmp / "f.txt").write_text("y")
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["f.txt"]
    with pytest.raises(FileExistsError), atomic_directory(tmp_path / "empty"):
        pass


def test_a_file_is_not_written_over_a_folder(tmp_path: Path) -> None:
    (tmp_path / "out.json").mkdir()
    with pytest.raises(FileExistsError, match="out.json is an existing folder"):
        atomic_write_json(tmp_path / "out.json", {})
    assert list((tmp_path / "out.json").iterdir()) == []
