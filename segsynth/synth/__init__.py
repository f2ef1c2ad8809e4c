"""Synthetic data: layout sources, style sources and the resumable writer of synthetic sets.

Names are imported on first use, so building a :class:`GenerationConfig` (the command line does,
before anything runs) does not load torch. The writer itself, :func:`segsynth.generate`, lives in
the submodule of the same name (``segsynth.synth.generate.generate``), so it is not exported here:
a package attribute cannot be both that submodule and the function.
"""

from __future__ import annotations

from segsynth.lazy import lazy_exports
from segsynth.renamed import renamed_attributes

_EXPORTS = {
    "AugmentedLayouts": "segsynth.synth.layouts",
    "ComposedLayouts": "segsynth.synth.layouts",
    "CompositionPrior": "segsynth.synth.layouts",
    "FilterConfig": "segsynth.synth.config",
    "FilterSettings": "segsynth.synth.config",
    "GenerationConfig": "segsynth.synth.config",
    "GenerationRecipe": "segsynth.synth.config",
    "GenerationResult": "segsynth.synth.generate",
    "ImageFolderPool": "segsynth.data.styles",
    "LayoutJudge": "segsynth.synth.judge",
    "LayoutSource": "segsynth.synth.layouts",
    "ManifestRecord": "segsynth.artifacts.schemas",
    "StyleSource": "segsynth.data.styles",
    "VariantLayouts": "segsynth.synth.layouts",
    "make_layout_source": "segsynth.synth.layouts",
    "merge_shards": "segsynth.synth.generate",
    "model_hash": "segsynth.synth.generate",
    "open_style_pool": "segsynth.data.styles",
    "read_manifest": "segsynth.artifacts.manifest",
}

__all__ = sorted(_EXPORTS)
_lazy_getattr, __dir__ = lazy_exports(__name__, _EXPORTS)
__getattr__ = renamed_attributes(__name__, {"GenerationRecord": "GenerationRecipe"}, fallback=_lazy_getattr)
