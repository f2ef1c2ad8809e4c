"""Start-up time of the command line: ``segsynth --help`` and ``segsynth data check DIR``.

Each command runs ``--repeats`` times as a fresh process through the installed console script (what a
user types), timed from spawn to exit; the table shows the best and the median run, and whether the
process imported torch, diffusers or MONAI (checked once per command in a separate run, so the
check costs the timed runs nothing). Load on a shared machine inflates every figure: the load
average at the start is recorded beside them.

Run: ``.venv/bin/python benchmarks/bench_startup.py`` (about 30 s); writes
``benchmarks/results/bench_startup.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from common import processor, record_header, write_json
from rich.console import Console
from rich.table import Table

from segsynth.artifacts.names import IMAGES_DIR, MASKS_DIR
from segsynth.data.format import DatasetSpec, save_spec
from segsynth.data.io import write_image

ROOT = Path(__file__).resolve().parents[1]
#: The console script of the environment running this benchmark.
SEGSYNTH = str(Path(sys.executable).parent / "segsynth")
HEAVY = ("torch", "diffusers", "monai")
#: Runs a command like the console script, then prints which heavy packages it imported.
PROBE = (
    "import sys\nfrom segsynth.cli import main\nsys.argv = ['segsynth', *sys.argv[1:]]\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    f"print('HEAVY', *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n"
)


def tiny_dataset(root: Path, count: int = 8, size: int = 64) -> Path:
    """A valid dataset folder of ``count`` random 8-bit images with disc masks, one case each."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for index in range(count):
        mask = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2).astype(np.uint8)
        write_image(root / IMAGES_DIR / f"s{index}.png", rng.integers(0, 255, (size, size), dtype=np.uint8))
        write_image(root / MASKS_DIR / f"s{index}.png", mask)
    save_spec(root, DatasetSpec(
        name="startup", modality="test", prompt="discs", channels=1, labels={"background": 0, "disc": 1},
        label_provenance="human", licence="CC0-1.0", cases={f"s{i}": f"s{i}" for i in range(count)},
    ))
    return root


def timed(argv: list[str]) -> float:
    """Seconds from spawning ``segsynth ARGV`` to its exit (which must be 0)."""
    tick = time.perf_counter()
    subprocess.run([SEGSYNTH, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - tick


def heavy_imports(argv: list[str]) -> list[str]:
    """The heavy packages ``segsynth ARGV`` imports."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True)
    line = next(line for line in done.stderr.splitlines() if line.startswith("HEAVY"))
    return line.split()[1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_startup.json")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    with TemporaryDirectory() as tmp:
        data = tiny_dataset(Path(tmp) / "data")
        for label, command in (("segsynth --help", ["--help"]), ("segsynth data check DIR", ["data", "check", str(data)])):
            timed(command)  # warm the file cache, as for a user's second call
            seconds = [timed(command) for _ in range(args.repeats)]
            rows.append({"command": label, "seconds": seconds, "best_s": min(seconds),
                         "median_s": statistics.median(seconds), "imports": heavy_imports(command)})
    table = Table(title=f"segsynth start-up, {args.repeats} runs each (load average {load:.1f} on {os.cpu_count()} CPUs)")
    for column in ("command", "best s", "median s", "imports torch / diffusers / MONAI"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for row in rows:
        table.add_row(row["command"], f"{row['best_s']:.2f}", f"{row['median_s']:.2f}", ", ".join(row["imports"]) or "none")
    console = Console(width=120)
    console.print(table)
    record = {
        **record_header("bench_startup", argv),
        "device_name": processor(),
        "cpus": os.cpu_count(),
        "load_average_1min": load,
        "torch": version("torch"),
        "python": platform.python_version(),
        "rows": rows,
    }
    write_json(args.out, record)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
