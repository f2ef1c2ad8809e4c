"""The state one report is built in, shared by the modules that fill its sections."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from segsynth.artifacts.detect import Found
from segsynth.report.html import Section, paragraph


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete, parseable lines of a log (a torn last line is skipped)."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _rel(path: Path, roots: Sequence[Path]) -> str:
    """``path`` relative to the given folder it lies in (absolute otherwise)."""
    resolved = path.resolve()
    for root in roots:
        base = root.resolve()
        try:
            relative = resolved.relative_to(base)
        except ValueError:
            continue
        return f"{base.name}/{relative.as_posix()}" if relative.parts else base.name
    return str(resolved)


class ReportContext:
    """What the section builders share while one page is built: the folders given and found, the
    page's sections in order, the datasets met (with their roles) and each run's benchmark setting."""

    def __init__(self, paths: Sequence[Path], found: list[Found], rows_per_grid: int, max_synthetic: int) -> None:
        self.paths = list(paths)
        self.found = found
        self.rows_per_grid = rows_per_grid
        self.max_synthetic = max_synthetic
        self.sections = {
            "answer": Section("answer", "Does synthetic data help?"),
            "samples": Section("samples", "Sample grids"),
            "curves": Section("curves", "Training curves"),
            "benchmark": Section("benchmark", "Benchmark"),
            "fidelity": Section("fidelity", "Generator fidelity"),
            "configs": Section("configs", "Resolved configs"),
            "provenance": Section("provenance", "Data provenance"),
            "overview": Section("overview", "Inventory"),
        }
        self.datasets: dict[Path, set[str]] = {}
        #: run folder -> benchmark setting name, so curves and tables name a setting alike
        self.setting_of: dict[Path, str] = {}

    def of(self, kind: str) -> list[Path]:
        return [f.path for f in self.found if f.kind == kind]

    def rel(self, path: Path) -> str:
        return _rel(path, self.paths)

    def guarded(self, section: str, what: Path, action: Callable[[], None]) -> None:
        """Run one folder's part; a broken folder becomes a note instead of ending the report."""
        try:
            action()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.sections[section].add(paragraph(f"{self.rel(what)}: could not be read ({type(exc).__name__}: {exc})"))

    def dataset(self, root: str | Path | None, role: str) -> None:
        if root:
            self.datasets.setdefault(Path(root).resolve(), set()).add(role)
