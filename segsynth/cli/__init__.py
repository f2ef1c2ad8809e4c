"""``segsynth`` command line: thin commands, each parsing arguments and calling one API function."""

from __future__ import annotations

from segsynth.cli.app import app

# Each module below registers its commands on ``app`` (or a sub-app) when imported.
from segsynth.cli import demo as _demo  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
