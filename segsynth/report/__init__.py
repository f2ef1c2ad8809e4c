"""One self-contained HTML report of runs, benchmarks, synthetic sets and their evaluation.

The folders are recognised by :func:`segsynth.artifacts.detect.discover`; ``detect`` and
``discover`` are offered here too, as the report's way of saying what it will show.
"""

from segsynth.artifacts.detect import KINDS, Found, detect, discover
from segsynth.report.build import build_report

__all__ = ["KINDS", "Found", "build_report", "detect", "discover"]
