"""One progress display for every long loop (training, generation), fit for a terminal and for a job log.

On a terminal it is a rich bar. When the console is not a terminal (output redirected to a file, a
batch job, a CI log) a live bar cannot redraw, and rich prints it once at the end, so a log shows
nothing for an hour; there it becomes a plain line every ``every_s`` seconds and at the end::

    train-seg 250/600 loss 0.3120 val dice 0.7410 | 3.42 it/s | ETA 0:01:42

The rate and the ETA count only the steps done since this display started, so a resumed run does not
claim the speed of the steps it loaded from a checkpoint.
"""

from __future__ import annotations

import datetime
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

#: Seconds between plain lines when the console is not a terminal.
PLAIN_EVERY_S = 30.0


class StepProgress:
    """Progress of ``total`` steps, used as ``with StepProgress(...) as progress:``.

    Args:
        label: what runs (``train-seg``, ``generate``).
        total: steps in all.
        console: where it shows: a rich bar on a terminal, plain lines otherwise; None shows nothing
            (e.g. a non-main process).
        completed: steps already done (a resumed run).
        every_s: seconds between plain lines when ``console`` is not a terminal.
    """

    def __init__(self, label: str, total: int, console: Console | None, completed: int = 0,
                 every_s: float = PLAIN_EVERY_S) -> None:
        self.label, self.total, self.console, self.every_s = label, total, console, every_s
        self.completed = self._start = completed
        self._started = self._last_line = time.monotonic()
        self._fields = ""
        self._shown = completed
        self._bar: Progress | None = None
        if console is not None and console.is_terminal:
            self._bar = Progress(
                TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), console=console, transient=False,
            )
            self._task = self._bar.add_task(label, total=total, completed=completed, info="")

    def update(self, completed: int, **fields: float | str) -> None:
        """Set the steps done and, optionally, the values shown beside them (``val_dice`` shows as "val dice")."""
        self.completed = completed
        if fields:
            self._fields = " ".join(
                f"{name.replace('_', ' ')} {value:.4f}" if isinstance(value, float) else f"{name.replace('_', ' ')} {value}"
                for name, value in fields.items()
            )
        if self._bar is not None:
            info = " | ".join(filter(None, (self._fields, f"{self._rate():.2f} it/s")))
            self._bar.update(self._task, completed=completed, info=info)
        elif self.console is not None:
            now = time.monotonic()
            due = completed >= self.total or now - self._last_line >= self.every_s
            if due and completed != self._shown:  # a loop may update a step twice (values, then count)
                self.console.print(self.line(), highlight=False, soft_wrap=True)
                self._last_line, self._shown = now, completed

    def advance(self, steps: int = 1) -> None:
        """One more step done (or ``steps``)."""
        self.update(self.completed + steps)

    def _rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return (self.completed - self._start) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The plain status line: label, steps, fields, rate and ETA."""
        rate = self._rate()
        eta = (str(datetime.timedelta(seconds=round((self.total - self.completed) / rate)))
               if rate > 0 else "-:--:--")
        head = f"{self.label} {self.completed}/{self.total}" + (f" {self._fields}" if self._fields else "")
        return f"{head} | {rate:.2f} it/s | ETA {eta}"

    def __enter__(self) -> StepProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
