"""The typer applications that command modules register on (kept apart to avoid import cycles)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="segsynth",
    help="Layout- and style-conditioned diffusion for more segmentation training data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Dataset folders: check, info, built-in datasets, import.", no_args_is_help=True)
app.add_typer(data_app, name="data")
