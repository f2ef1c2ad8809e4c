"""The README holds: its "From Python" example runs as printed (the block is read from README.md, so
the two cannot drift apart), and every test its guarantees table names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(section: str) -> str:
    """The first ```python block under the ``## section`` heading of the README."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", body, re.S)
    assert match, f"README section {section!r} has no python block"
    return match.group(1)


def test_from_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block("From Python"), f"{README}: From Python", "exec"), {"__name__": "__main__"})
    assert re.search(r"test Dice, foreground mean: [01]\.\d+", capsys.readouterr().out)
    assert (tmp_path / "synth" / "nuclei-fluo" / "manifest.jsonl").is_file()
    assert (tmp_path / "runs" / "seg" / "best").is_dir()


def test_every_guarantee_row_names_tests_that_exist() -> None:
    """Each row of "What segsynth guarantees" names ``tests/FILE::NAME`` (or ``::NAME`` in the same
    file); every such test function is defined, so a renamed or removed test cannot leave a
    promise backed by nothing."""
    text = README.read_text(encoding="utf-8")
    table = text.split("\n## What segsynth guarantees\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| guarantee", "|---"))]
    assert len(rows) >= 20
    missing = []
    for row in rows:
        named = re.findall(r"`([^`]*::[^`]+)`", row.split(" | ")[-1])
        assert named, f"a guarantee without a test: {row[:80]}"
        current = None
        for reference in named:
            path, _, name = reference.rpartition("::")
            current = path or current
            source = (README.parent / current).read_text(encoding="utf-8")
            if not re.search(rf"^def {re.escape(name)}\(", source, re.M):
                missing.append(f"{current}::{name}")
    assert not missing, missing
