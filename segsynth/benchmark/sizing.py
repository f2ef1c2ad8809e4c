"""A benchmark sized to the folder it is given (nnU-Net manners): the generator's image size and
the segmentation step budget, planned from the data.

* The generator draws images at the data's own size: ``model.image_size`` is the median side of
  the labelled images unless the diffusion config names one; channels and classes always come
  from ``dataset.json`` (see :mod:`segsynth.diffusion.train`). A generator size that differs from
  the images is refused before any training when segmentation stacks whole images.
* The segmentation budget is one number of optimiser steps for every run of the benchmark:
  ``SEG_PASSES`` passes over the largest real training set the benchmark uses (the
  ``all_labelled`` control when present), never fewer than ``SEG_STEP_FLOOR``, rounded up to whole
  validation intervals. The floor is what the low-label baselines of the built-in datasets need
  before their smoothed validation Dice stops rising (``training.json`` records it per run).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from segsynth.artifacts.names import IMAGES_DIR
from segsynth.config import ConfigError
from segsynth.data.format import load_spec
from segsynth.data.loader import index_dataset
from segsynth.data.io import image_shape
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.seg.config import SegTrainConfig

#: Fewest optimiser steps of any benchmark segmentation run. At 400 steps of batch 8 (64 px, default
#: UNet, cosine schedule) the low-label baselines of nuclei-fluo and histo-he had stopped rising in
#: every run, and brain-mri's in 5 of 6 (``benchmarks/results/downstream-*.json``, "still_rising").
SEG_STEP_FLOOR = 400
#: Passes over the largest real training set (batches of ``train.batch_size``).
SEG_PASSES = 40


def segmentation_steps(largest_training_set: int, batch_size: int, val_every: int) -> int:
    """The benchmark's step budget for a largest training set of ``largest_training_set`` images."""
    steps = max(SEG_STEP_FLOOR, math.ceil(SEG_PASSES * largest_training_set / batch_size))
    return math.ceil(steps / val_every) * val_every


def image_side(data: Path) -> int:
    """Median of the shorter side of the labelled images of ``data``."""
    spec = load_spec(data)
    shapes = [image_shape(ref.image_path)[:2] for ref in index_dataset(data, "labeled", spec)]
    if not shapes:
        raise ValueError(f"{data / IMAGES_DIR}: no labelled images")
    return int(np.median([min(h, w) for h, w in shapes]))


def fit_generator(dcfg: DiffusionTrainConfig, side: int, seg: SegTrainConfig, source: str) -> DiffusionTrainConfig:
    """``dcfg`` at the data's image size unless it names its own, then refuse a misfit.

    Raises:
        ConfigError: the generator's size differs from the images' and segmentation has no
            ``train.patch_size`` (a batch could not stack real and synthetic images).
    """
    if "image_size" not in dcfg.model.model_fields_set:
        # Only what was set travels: a default re-validated as a value would read as the user's
        # choice, and the data's channels and classes could no longer replace it.
        data = dcfg.model_dump(mode="json", exclude_unset=True)
        data.setdefault("model", {})["image_size"] = side
        dcfg = DiffusionTrainConfig.model_validate(data)
    size = dcfg.model.image_size
    if size != side and seg.train.patch_size is None:
        raise ConfigError(
            f"{source}: model.image_size {size} differs from the data's {side} px images; synthetic images could not "
            f"be batched with real ones. Remove model.image_size (the data's size is used), set it to {side}, "
            "or give the segmentation a train.patch_size"
        )
    return dcfg
