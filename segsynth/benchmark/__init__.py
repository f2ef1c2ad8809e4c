"""The experiment: baseline, controls and synthetic settings on the same case folds, seeds and step budget."""

from segsynth.benchmark.compare import compare_generators
from segsynth.benchmark.config import PROFILES, BenchmarkConfig, profile_overrides, quick_profile
from segsynth.benchmark.run import fold_generator, prepare_benchmark, run_benchmark
from segsynth.benchmark.summary import headline, markdown_table, rich_table, summarise

__all__ = [
    "PROFILES",
    "BenchmarkConfig",
    "compare_generators",
    "fold_generator",
    "headline",
    "markdown_table",
    "prepare_benchmark",
    "profile_overrides",
    "quick_profile",
    "rich_table",
    "run_benchmark",
    "summarise",
]
