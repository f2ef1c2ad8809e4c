"""The ControlNet hint: a 3-channel image made from the layout (and, optionally, the real image).

Channel layout, every channel float32 in [0, 1] (a ControlNet's hint is an RGB-like image):

====  =============  ==============================================================================
 ch    name           content
====  =============  ==============================================================================
 0     ``labels``     the label map divided by ``num_classes - 1`` (background 0, the last class 1)
 1     ``edges``      the edge map: mask boundary ∪ Canny edges of the image
                      (:func:`segsynth.data.edges.edge_map`); the mask boundary alone when no image
                      is given (generation from a layout)
 2     ``boundary``   the mask boundary alone (:func:`segsynth.data.edges.mask_boundary`)
====  =============  ==============================================================================

In training the edges channel holds the image edges for a fraction ``data.edge_image_prob`` of the
samples, computed after the paired augmentation and crop, so it is aligned with image and mask.
"""

from __future__ import annotations

import numpy as np
import torch

from segsynth.data.edges import edge_map, mask_boundary

#: Names of the hint channels, in order.
HINT_CHANNELS = ("labels", "edges", "boundary")


def make_hint(mask: torch.Tensor | np.ndarray, edge: torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    """One hint from a mask ``(H, W)`` of labels ``0..num_classes-1`` and its edge map ``(H, W)`` or ``(1, H, W)``.

    Returns:
        float32 ``(3, H, W)`` in [0, 1], channels as in :data:`HINT_CHANNELS`.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    labels = torch.as_tensor(np.asarray(mask)).long()
    if labels.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(labels.shape)}")
    edges = torch.as_tensor(np.asarray(edge, dtype=np.float32)).reshape(labels.shape)
    boundary = torch.from_numpy(mask_boundary(labels.numpy()))
    scaled = labels.float().clamp(0, num_classes - 1) / (num_classes - 1)
    return torch.stack([scaled, edges, boundary])


def hints_from_layouts(masks: torch.Tensor | np.ndarray, num_classes: int, images: torch.Tensor | np.ndarray | None = None,
                       sigma: float = 1.0) -> torch.Tensor:
    """Hints for generation: ``(B, H, W)`` masks, optionally with aligned ``(B, C, H, W)`` images in [0, 1]
    whose Canny edges join the edges channel (variants of a real image, DiffBoost's setting).

    Returns:
        float32 ``(B, 3, H, W)``.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W), got shape {masks.shape}")
    if images is not None:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or len(images) != len(masks) or images.shape[2:] != masks.shape[1:]:
            raise ValueError(f"images {images.shape} are not (B, C, H, W) aligned with masks {masks.shape}")
    hints = [make_hint(mask, edge_map(mask, None if images is None else images[i], sigma), num_classes)
             for i, mask in enumerate(masks)]
    return torch.stack(hints)
