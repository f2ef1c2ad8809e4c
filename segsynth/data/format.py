"""The dataset format under its historical import path.

``dataset.json`` is a contract between stages, so its model lives with the other contracts in
:mod:`segsynth.artifacts.dataset_format` (the contracts layer sits below every stage, see
``docs/architecture.md``); this module keeps ``segsynth.data.format`` imports working.
"""

from __future__ import annotations

from segsynth.artifacts.dataset_format import DatasetFormatError, DatasetSpec, load_spec, save_spec

__all__ = ["DatasetFormatError", "DatasetSpec", "load_spec", "save_spec"]
