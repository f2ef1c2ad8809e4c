"""The console every command and the demo print to, fit for a terminal and for a job log.

On a terminal a wide table wraps to the window, as rich does. When the output is not a terminal (a
file, a pipe, a CI or ``nohup`` log) rich assumes a fixed width and squeezes a table into it, which
cuts cells ("ΔDi…", "+0.…"): the numbers of a benchmark would be lost exactly where results are
kept. A log has no width, so there a table prints at its natural width; other text keeps the
console's width.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

#: Width a table is measured against when not on a terminal: wider than any table segsynth prints.
MEASURE_WIDTH = 10_000


class LogConsole(Console):
    """A rich :class:`~rich.console.Console` whose tables never lose a cell off a terminal."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: D102 (rich's signature and docs)
        tables = [obj for obj in objects if isinstance(obj, Table)]
        if self.is_terminal or not tables:
            super().print(*objects, **kwargs)
            return
        options = self.options.update_width(MEASURE_WIDTH)
        natural = max(Measurement.get(self, options, table).maximum for table in tables)
        if natural <= self.width:
            super().print(*objects, **kwargs)
            return
        width = self.width
        self.width = natural
        try:
            super().print(*objects, **kwargs)
        finally:
            self.width = width
