"""One self-contained HTML report of runs, benchmarks, synthetic sets and their evaluation."""

from segsynth.report.build import build_report
from segsynth.report.detect import KINDS, Found, detect, discover

__all__ = ["KINDS", "Found", "build_report", "detect", "discover"]
