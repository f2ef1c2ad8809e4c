"""Paired augmentation: one random draw applied to image, mask (and any other spatial key).

Built from MONAI dictionary transforms, which draw once and apply the same geometry to every key,
so image and layout can never drift apart. Masks use nearest interpolation; intensity transforms
touch the image only. They run as :class:`PlainCompose`: without MONAI's ``MetaTensor`` bookkeeping,
which the training loops never read and which cost more than half of a light augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)


class PlainCompose(Compose):
    """A ``Compose`` whose transforms return plain tensors instead of ``MetaTensor`` s.

    Same draws and values as a ``Compose`` (``tests/test_data_loader.py`` checks it), at half the
    per-sample cost: a training example's affine history and metadata are never read, yet tracking
    them ran for every example of every step. MONAI's tracking switch is process-wide, so it is
    turned off only while these transforms run.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            set_track_meta(tracking)


def paired_augmentation(
    strength: str = "light",
    image_keys: Sequence[str] = ("image",),
    label_keys: Sequence[str] = ("mask",),
) -> PlainCompose:
    """Return a :class:`PlainCompose` of paired spatial (and image-only intensity) transforms.

    Args:
        strength: ``"none"``, ``"light"`` (flips, 90-degree rotations, mild contrast) or ``"heavy"``
            (adds rotation over 360 degrees, scale 0.8-1.2 and shear up to 20 degrees with reflect
            padding -- STEDM's layout augmentation -- and, on images, nnU-Net-style intensity
            changes: wider gamma, brightness/contrast scaling, Gaussian noise and blur). Heavy
            augmentation is what a user gets for free, so benchmarks report it as a control.
        image_keys: continuous-valued keys (bilinear interpolation).
        label_keys: label keys (nearest interpolation).
    """
    if strength not in {"none", "light", "heavy"}:
        raise ValueError(f"strength must be 'none', 'light' or 'heavy', got {strength!r}")
    keys = [*image_keys, *label_keys]
    if not keys:
        raise ValueError("paired_augmentation needs at least one image or label key")
    transforms: list = []
    if strength != "none":
        transforms += [
            RandFlipd(keys, prob=0.5, spatial_axis=0, allow_missing_keys=True),
            RandFlipd(keys, prob=0.5, spatial_axis=1, allow_missing_keys=True),
            RandRotate90d(keys, prob=0.5, max_k=3, allow_missing_keys=True),
        ]
    if strength == "heavy":
        shear = math.tan(math.radians(20))
        transforms.append(
            RandAffined(
                keys,
                prob=0.8,
                rotate_range=(math.pi,),
                scale_range=(0.2, 0.2),
                shear_range=(shear, shear),
                mode=["bilinear"] * len(image_keys) + ["nearest"] * len(label_keys),
                padding_mode="reflection",
                allow_missing_keys=True,
            )
        )
    images = list(image_keys)
    if strength == "light" and images:  # layouts alone (no image key) get geometry only
        transforms.append(RandAdjustContrastd(images, prob=0.3, gamma=(0.8, 1.25), allow_missing_keys=True))
    if strength == "heavy" and images:
        transforms += [
            RandAdjustContrastd(images, prob=0.3, gamma=(0.7, 1.5), allow_missing_keys=True),
            RandScaleIntensityd(images, factors=0.25, prob=0.3, allow_missing_keys=True),
            RandShiftIntensityd(images, offsets=0.1, prob=0.3, allow_missing_keys=True),
            RandGaussianNoised(images, prob=0.15, std=0.05, allow_missing_keys=True),
            RandGaussianSmoothd(images, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=0.15, allow_missing_keys=True),
        ]
    return PlainCompose(transforms)
