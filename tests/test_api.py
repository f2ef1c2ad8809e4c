"""The public API in ``segsynth/__init__.py``: every exported name is the object it documents."""

from __future__ import annotations

import importlib
import types

import segsynth


def test_every_export_is_its_object_even_after_its_submodules_are_imported() -> None:
    """A lazily exported function whose name is also a submodule's (``generate``) must not turn into
    that module once the submodule has been imported by someone else."""
    for name, module in segsynth._EXPORTS.items():
        importlib.import_module(module)
        for sub in ("segsynth.synth.generate", "segsynth.seg.evaluate"):
            importlib.import_module(sub)
        value = getattr(segsynth, name)
        assert not isinstance(value, types.ModuleType), f"segsynth.{name} is the module {value.__name__}"
        assert value is getattr(importlib.import_module(module), name)
