"""``segsynth recipes``: the shipped recipes, by the name ``--config`` takes, and what each is for."""

from __future__ import annotations

from rich.table import Table

from segsynth.cli.app import app
from segsynth.cli.errors import console


@app.command()
def recipes() -> None:
    """List the recipes shipped with segsynth (use one as --config NAME; a file of that name wins)."""
    from segsynth.recipes import recipe_names, recipe_summary

    table = Table(title="shipped recipes (--config NAME)")
    table.add_column("name")
    table.add_column("what it is for")
    for name in recipe_names():
        table.add_row(name, recipe_summary(name))
    console.print(table)
