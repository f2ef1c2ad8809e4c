#!/usr/bin/env python3
"""Screenshot a segsynth HTML report with headless Chromium, to check it renders and to look at it.

    python scripts/render_report.py report.html --out report.png [--width 1400] [--height 6000]

Needs Debian's ``chromium`` (``apt-get install chromium``) or another Chromium on PATH. The page
is opened from disk with networking irrelevant: a segsynth report embeds everything it shows.
Exit status 3 when no browser is found.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The first Chromium-family browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def render(report: Path, out: Path, width: int = 1400, height: int = 6000, timeout: float = 120.0) -> Path:
    """Write a PNG screenshot of ``report`` (the top ``height`` pixels at ``width``) to ``out``.

    Raises:
        FileNotFoundError: no browser, or the report does not exist.
        RuntimeError: the browser failed or wrote no screenshot.
    """
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(f"no headless browser found (tried {', '.join(BROWSERS)})")
    report = Path(report).resolve()
    if not report.is_file():
        raise FileNotFoundError(f"{report}: no such report")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segsynth-chromium-") as profile:
        command = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
            f"--screenshot={out}", report.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"{browser} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: next to the report)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=6000)
    args = parser.parse_args(argv)
    out = args.out or args.report.with_suffix(".png")
    try:
        written = render(args.report, out, args.width, args.height)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
