"""``segsynth`` command line: thin commands, each parsing arguments and calling one API function.

Command modules import nothing heavy at module level: torch, diffusers and MONAI are imported inside
the command that needs them, so ``segsynth --help`` and ``segsynth data check`` start at once
(``tests/test_cli_dialect.py`` holds both to that, and walks every command for the shared flags of
:mod:`segsynth.cli.options`).
"""

from __future__ import annotations

import sys

from segsynth.cli.app import app

# Each module below registers its commands on ``app`` (or a sub-app) when imported.
from segsynth.cli import demo as _demo  # noqa: E402,F401
from segsynth.cli import generate as _generate  # noqa: E402,F401
from segsynth.cli import seg as _seg  # noqa: E402,F401
from segsynth.cli import data_builtin as _data_builtin  # noqa: E402,F401
from segsynth.cli import data as _data  # noqa: E402,F401
from segsynth.cli import export as _export  # noqa: E402,F401
from segsynth.cli import diffusion as _diffusion  # noqa: E402,F401
from segsynth.cli import autoencoder as _autoencoder  # noqa: E402,F401
from segsynth.cli import benchmark as _benchmark  # noqa: E402,F401
from segsynth.cli import evaluate_synth as _evaluate_synth  # noqa: E402,F401
from segsynth.cli import report as _report  # noqa: E402,F401
from segsynth.cli import run as _run  # noqa: E402,F401
from segsynth.cli import recipes as _recipes  # noqa: E402,F401


def main() -> None:
    """Console-script entry point, inside the error boundary (no traceback reaches a user)."""
    from segsynth.cli.errors import command_stage, error_boundary
    from segsynth.cpu_share import share_cpus

    share_cpus()
    with error_boundary(command_stage(sys.argv[1:], {group.name for group in app.registered_groups if group.name})):
        app()


__all__ = ["app", "main"]
