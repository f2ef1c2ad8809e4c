"""Progress in a job log: plain periodic lines (step/total, values, it/s, ETA) when not on a terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from segsynth import progress as progress_module
from segsynth.progress import StepProgress


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def _log() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_plain_lines_every_interval_with_rate_and_eta(clock: Clock) -> None:
    console, buffer = _log()
    with StepProgress("train-seg", total=100, console=console, completed=20, every_s=10.0) as progress:
        for step in range(21, 101):
            clock.now += 0.5  # 2 it/s
            progress.update(step, loss=0.25, val_dice=0.5)
            progress.update(step)  # as the trainers do: values on log steps, then the count
    lines = buffer.getvalue().splitlines()
    # 40 s of training: a line every 10 s and one at the end, no bar drawn
    assert len(lines) == 4, lines
    assert lines[0] == "train-seg 40/100 loss 0.2500 val dice 0.5000 | 2.00 it/s | ETA 0:00:30"
    assert lines[-1].startswith("train-seg 100/100 ") and lines[-1].endswith("ETA 0:00:00")
    assert "━" not in buffer.getvalue()


def test_advance_counts_steps_and_nothing_shows_without_console(clock: Clock) -> None:
    console, buffer = _log()
    with StepProgress("generate", total=3, console=console, every_s=3600) as progress:
        for _ in range(3):
            clock.now += 1.0
            progress.advance()
    assert buffer.getvalue().splitlines() == ["generate 3/3 | 1.00 it/s | ETA 0:00:00"]
    with StepProgress("quiet", total=2, console=None) as progress:
        progress.update(2)
    assert progress.completed == 2


def test_terminal_gets_a_rich_bar(clock: Clock) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with StepProgress("train-diffusion", total=4, console=console) as progress:
        for step in range(1, 5):
            clock.now += 1.0
            progress.update(step, loss=0.5)
    out = buffer.getvalue()
    assert "train-diffusion" in out and "4/4" in out and "━" in out
