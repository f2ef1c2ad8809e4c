"""The typer applications that command modules register on (kept apart to avoid import cycles)."""

from __future__ import annotations

import typer

#: ``-h`` as well as ``--help`` on the app and, through click's context inheritance, every command.
CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="segsynth",
    help="Layout- and style-conditioned diffusion for more segmentation training data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings=CONTEXT,
)
data_app = typer.Typer(help="Dataset folders: check, info, built-in datasets, import.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from segsynth import __version__

        typer.echo(f"segsynth {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, metavar="", help="Print the version and exit."
    ),
) -> None:
    """Layout- and style-conditioned diffusion for more segmentation training data."""
