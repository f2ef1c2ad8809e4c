"""The experiment: baseline vs synthetic settings on the same case folds and seeds."""

from segsynth.benchmark.config import BenchmarkConfig, quick_profile
from segsynth.benchmark.run import run_benchmark
from segsynth.benchmark.summary import markdown_table, rich_table

__all__ = ["BenchmarkConfig", "markdown_table", "quick_profile", "rich_table", "run_benchmark"]
