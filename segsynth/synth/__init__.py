"""Synthetic data: layout sources, style sources and the resumable writer of synthetic sets."""

from segsynth.synth.generate import GenerationConfig, GenerationResult, generate, merge_shards, model_hash
from segsynth.synth.layouts import (
    AugmentedLayouts,
    ComposedLayouts,
    CompositionPrior,
    LayoutSource,
    VariantLayouts,
    make_layout_source,
)
from segsynth.synth.manifest import ManifestRecord, read_manifest
from segsynth.synth.styles import ImageFolderPool, StyleSource, open_style_pool

__all__ = [
    "AugmentedLayouts",
    "ComposedLayouts",
    "CompositionPrior",
    "GenerationConfig",
    "GenerationResult",
    "ImageFolderPool",
    "LayoutSource",
    "ManifestRecord",
    "StyleSource",
    "VariantLayouts",
    "generate",
    "make_layout_source",
    "merge_shards",
    "model_hash",
    "open_style_pool",
    "read_manifest",
]
