"""Dataset folders: format, file I/O, loading with paired augmentation, checks and built-ins."""

from segsynth.data.augment import paired_augmentation
from segsynth.data.format import DatasetFormatError, DatasetSpec, load_spec, save_spec
from segsynth.data.io import DataReadError, read_image, write_image
from segsynth.data.loader import SampleRef, SegDataset, index_dataset

__all__ = [
    "DataReadError",
    "DatasetFormatError",
    "DatasetSpec",
    "SampleRef",
    "SegDataset",
    "index_dataset",
    "load_spec",
    "paired_augmentation",
    "read_image",
    "save_spec",
    "write_image",
]
