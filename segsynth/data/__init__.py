"""Dataset folders: format, file I/O, loading with paired augmentation, checks and built-ins.

Names are imported on first use, so reading a ``dataset.json`` does not load torch or MONAI.
"""

from __future__ import annotations

from segsynth.lazy import lazy_exports

_EXPORTS = {
    "DataReadError": "segsynth.data.io",
    "DatasetFormatError": "segsynth.artifacts.dataset_format",
    "DatasetSpec": "segsynth.artifacts.dataset_format",
    "SampleRef": "segsynth.data.loader",
    "SegDataset": "segsynth.data.loader",
    "index_dataset": "segsynth.data.loader",
    "load_spec": "segsynth.artifacts.dataset_format",
    "paired_augmentation": "segsynth.data.augment",
    "read_image": "segsynth.data.io",
    "save_spec": "segsynth.artifacts.dataset_format",
    "write_image": "segsynth.data.io",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
