"""The experiment: baseline vs synthetic settings on the same case folds and seeds."""

from segsynth.benchmark.config import BenchmarkConfig, quick_profile
from segsynth.benchmark.run import fold_generator, prepare_benchmark, run_benchmark
from segsynth.benchmark.summary import markdown_table, rich_table, summarise

__all__ = [
    "BenchmarkConfig",
    "fold_generator",
    "markdown_table",
    "prepare_benchmark",
    "quick_profile",
    "rich_table",
    "run_benchmark",
    "summarise",
]
