"""Style sources under their historical import path.

A style pool is a set of images read like a dataset, used by the evaluation and the report as well
as by generation, so it lives in :mod:`segsynth.data.styles` (the data layer, below every stage
that uses it, see ``docs/architecture.md``); this module keeps ``segsynth.synth.styles`` imports
working.
"""

from __future__ import annotations

from segsynth.data.styles import ImageFolderPool, StyleSource, open_style_pool

__all__ = ["ImageFolderPool", "StyleSource", "open_style_pool"]
