"""segsynth: turn a small labelled medical-imaging dataset plus unlabelled images into a better
segmentation model, with layout- and style-conditioned diffusion (STEDM) and text/edge guidance
(DiffBoost)."""

from segsynth.config import ConfigError, load_config
from segsynth.data import (
    DataReadError,
    DatasetFormatError,
    DatasetSpec,
    SampleRef,
    SegDataset,
    index_dataset,
    load_spec,
    paired_augmentation,
    read_image,
    save_spec,
    write_image,
)
from segsynth.io import CheckpointManager

__version__ = "0.1.0"

__all__ = [
    "CheckpointManager",
    "ConfigError",
    "DataReadError",
    "DatasetFormatError",
    "DatasetSpec",
    "SampleRef",
    "SegDataset",
    "__version__",
    "index_dataset",
    "load_config",
    "load_spec",
    "paired_augmentation",
    "read_image",
    "save_spec",
    "write_image",
]
