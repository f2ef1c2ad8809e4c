"""The README's "From Python" example runs as printed (the block is read from README.md, so the two
cannot drift apart)."""

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
