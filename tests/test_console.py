"""Tables read whole in a log: off a terminal (a file, a pipe, CI, nohup) the benchmark table prints at
its natural width with every number of the results; on a terminal it still fits the window."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

from test_benchmark import _metrics

from segsynth.benchmark.summary import HEADERS, markdown_table, rich_table, summarise
from segsynth.console import LogConsole

SETTINGS = ["baseline", "baseline+heavy-aug", "all-labelled", "ratio:0.5", "merge:0.6", "concat"]


def _results() -> dict[str, Any]:
    """A benchmark summary of 2 folds x 3 cases x 3 seeds whose numbers differ in every column."""
    runs = []
    for fold in (0, 1):
        for seed in (0, 1, 2):
            for k, setting in enumerate(SETTINGS):
                dice = {f"f{fold}c{i}": 0.41 + 0.09 * i + 0.013 * k * (i + 1) + 0.002 * seed for i in range(3)}
                runs.append({"fold": fold, "seed": seed, "setting": setting, "run": setting,
                             "metrics": _metrics(dice, still_rising=seed == k % 3)})
    return summarise(runs, SETTINGS, baseline="baseline", reference="all-labelled")


def _cells(results: dict[str, Any]) -> list[str]:
    """Every cell of the table's rows, as the Markdown results file holds them."""
    rows = [line for line in markdown_table(results).splitlines() if line.startswith("| ") and "---" not in line]
    return [cell.strip() for row in rows[1:] for cell in row.strip("|").split(" | ")]


def test_the_cli_prints_every_number_of_the_table_into_a_pipe(tmp_path: Path) -> None:
    """What ``make demo > log`` and ``segsynth benchmark`` print at the end, with stdout a pipe. The
    table is built here and handed over pickled, so the child imports only the CLI's console."""
    results = _results()
    path = tmp_path / "table.pickle"
    path.write_bytes(pickle.dumps(rich_table(results)))
    script = ("import pickle, sys\n"
              "from segsynth.cli.errors import console\n"
              "console.print(pickle.loads(open(sys.argv[1], 'rb').read()))\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr
    missing = [cell for cell in [*HEADERS, *_cells(results)] if cell not in done.stdout]
    assert not missing and "…" not in done.stdout, (missing, done.stdout)


def test_a_terminal_still_wraps_the_table_to_its_width() -> None:
    results = _results()
    off, on = io.StringIO(), io.StringIO()
    LogConsole(file=off, width=80).print(rich_table(results))
    LogConsole(file=on, width=80, force_terminal=True, color_system=None).print(rich_table(results))
    assert max(map(len, off.getvalue().splitlines())) > 80 and all(cell in off.getvalue() for cell in _cells(results))
    assert max(map(len, on.getvalue().splitlines())) <= 80
