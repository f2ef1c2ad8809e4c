"""The typer applications that command modules register on (kept apart to avoid import cycles)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from typer.core import TyperGroup, TyperOption

if TYPE_CHECKING:  # typer's own click, for annotations only
    from typer._click import Command, Context, Parameter

#: ``-h`` as well as ``--help`` on the app and, through click's context inheritance, every command.
CONTEXT = {"help_option_names": ["-h", "--help"]}


def _untyped(param: Parameter | None) -> Parameter | None:
    """A flag takes no value, so its help shows no type (typer would print ``<bool>``)."""
    if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
        param.metavar = ""
    return param


class FlagsWithoutTypes(TyperGroup):
    """typer's help shows every option's type, a flag's too (``<bool>``, on ``-h/--help`` of every
    screen). This group shows flags without one: its own help option, and each command's options
    and help option as the command is looked up to run or to show its help."""

    def get_help_option(self, ctx: Context) -> Parameter | None:
        return _untyped(super().get_help_option(ctx))

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not isinstance(command, TyperGroup):
            for param in [*command.params, command.get_help_option(ctx)]:
                _untyped(param)
        return command


app = typer.Typer(
    cls=FlagsWithoutTypes,
    name="segsynth",
    help="Layout- and style-conditioned diffusion for more segmentation training data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings=CONTEXT,
)
data_app = typer.Typer(cls=FlagsWithoutTypes, help="Dataset folders: check, info, built-in datasets, import.", no_args_is_help=True)
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
