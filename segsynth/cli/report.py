"""``segsynth report``: one self-contained HTML page about runs, benchmarks and synthetic sets."""

from __future__ import annotations

from pathlib import Path

import typer

from segsynth.artifacts.names import REPORT_HTML
from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors


@app.command("report")
def report_command(
    paths: list[Path] = typer.Argument(..., help="Benchmark, run, synthetic set or evaluate-synth folders (or a folder holding them, e.g. a demo output)."),
    out: Path = typer.Option(Path(REPORT_HTML), "--out", "-o", help="The HTML file to write."),
    title: str = typer.Option("segsynth report", "--title", help="Page title."),
) -> None:
    """Build a single HTML file (images embedded) with sample grids, curves, benchmark, fidelity, configs, provenance."""
    with user_errors():
        from segsynth.artifacts.detect import discover
        from segsynth.report import build_report

        found = discover(paths)
        counts: dict[str, int] = {}
        for item in found:
            counts[item.kind] = counts.get(item.kind, 0) + 1
        console.print("found: " + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items()))
        written = build_report(paths, out, title)
        console.print(f"[green]report[/]: {written.resolve()}")
