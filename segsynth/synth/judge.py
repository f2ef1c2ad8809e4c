"""The judge of a filtered synthetic set: a frozen segmentation network trained on real data that
reads each generated image, scored against the layout the image was generated from.

It is the layout-fidelity measure of ``evaluate-synth`` (:mod:`segsynth.evaluation.layout_fidelity`)
applied per sample while the set is written: the same network loading, the same per-image mean
foreground Dice with the same empty-mask conventions, and the image as the set will hold it (the
8-bit pixels written to PNG, scaled by :func:`segsynth.data.dataset.unit_range_image` as training
and evaluation read them). A sample the judge scores below ``min_dice`` teaches a segmenter a
label its image does not show, so it is dropped before anyone trains on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from segsynth.data.dataset import unit_range_image
from segsynth.data.loader import channels_first
from segsynth.evaluation.layout_fidelity import network_predictor, score_layouts
from segsynth.io.hashing import model_hash
from segsynth.seg.predict import network_dir
from segsynth.synth.config import FilterConfig, FilterRecord


class LayoutJudge:
    """Scores generated images against their layouts with a frozen network.

    Raises (on construction, before any output):
        FileNotFoundError: ``filter.judge`` holds no saved network.
        ValueError: the network reads other channels or classes than the set has (naming both).
    """

    def __init__(self, config: FilterConfig, channels: int, class_names: Sequence[str],
                 device: str | torch.device | None = None) -> None:
        self.directory = network_dir(config.judge)
        self.predict, meta = network_predictor(self.directory, device)
        if int(meta["in_channels"]) != channels:
            raise ValueError(f"filter.judge {self.directory}: the network reads {meta['in_channels']} channel(s), "
                             f"the generated images have {channels}")
        if list(meta["class_names"]) != list(class_names):
            raise ValueError(f"filter.judge {self.directory}: the network's classes {list(meta['class_names'])} "
                             f"differ from the layouts' {list(class_names)}")
        self.class_names = list(class_names)
        self.channels = channels
        self.record = FilterRecord(judge=str(self.directory.resolve()), judge_hash=model_hash(self.directory),
                                   min_dice=config.min_dice, max_attempts_factor=config.max_attempts_factor)

    def keeps(self, dice: float) -> bool:
        """Whether a sample of judge Dice ``dice`` stays in the set."""
        return dice >= self.record.min_dice

    def score(self, pixels: Sequence[np.ndarray], layouts: Sequence[np.ndarray], paths: Sequence[Path]) -> list[float]:
        """Mean foreground Dice of the judge's prediction on each image against its layout.

        Args:
            pixels: the images as they are written (uint8 ``(H, W)`` or ``(H, W, C)``).
            layouts: their masks ``(H, W)``.
            paths: where each image goes (named by errors).
        """
        images = np.stack([channels_first(unit_range_image(path, arr), self.channels, path)
                           for arr, path in zip(pixels, paths, strict=True)]).astype(np.float32)
        masks = np.stack([np.asarray(layout, dtype=np.int64) for layout in layouts])
        return score_layouts(images, masks, self.predict, self.class_names)["per_image_dice"]
