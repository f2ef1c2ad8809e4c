"""``segsynth demo``: the main job end to end on the built-in real data (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for every artifact of the demo."),
    smoke: bool = typer.Option(False, "--smoke/--no-smoke", metavar="", help="Every stage at toy sizes, in minutes; the numbers mean nothing."),
) -> None:
    """Build the built-in datasets and run the whole loop on CPU."""
    with user_errors():
        from segsynth.demo import run_demo

        run_demo(out, console=console, smoke=smoke)
