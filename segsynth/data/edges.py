"""Edge maps, the structure condition of DiffBoost (Zhang et al., 2025): mask boundary ∪ image edges.

DiffBoost feeds a ControlNet with HED edges of the image plus the boundary of the mask. HED needs
weights we do not have, so image edges here are Canny edges (scikit-image) of the image's channel
mean. The map is binary, ``float32`` ``(H, W)`` in {0, 1}.

In training the map is computed from the *augmented* image and mask (after the paired draw), so it
is aligned with both by construction. At generation it comes from the layout alone (its boundary),
or, for variants of a real mask, from the real image as well.
"""

from __future__ import annotations

import numpy as np
from skimage.feature import canny

#: Where edge maps can come from at generation: the layout's boundary only, or also a real image's edges.
EDGE_SOURCES = ("layout", "image")


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` ``(H, W)`` with a 4-neighbour of another label (both sides of a border).

    Returns:
        float32 ``(H, W)`` in {0, 1}.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    edge = np.zeros(mask.shape, dtype=bool)
    vertical = mask[1:, :] != mask[:-1, :]
    horizontal = mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge.astype(np.float32)


def image_edges(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Canny edges of ``image`` ``(C, H, W)`` in [0, 1] (its channel mean).

    Args:
        image: float image, channels first.
        sigma: Gaussian smoothing of the Canny detector (pixels); larger keeps only coarse edges.

    Returns:
        float32 ``(H, W)`` in {0, 1}.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    grey = np.asarray(image, dtype=np.float64).mean(0)
    return canny(grey, sigma=sigma, low_threshold=0.1, high_threshold=0.2).astype(np.float32)


def edge_map(mask: np.ndarray, image: np.ndarray | None = None, sigma: float = 1.0) -> np.ndarray:
    """The edge condition: ``mask_boundary(mask)``, united with ``image_edges(image)`` if an image is given.

    Args:
        mask: int labels ``(H, W)``.
        image: float ``(C, H, W)`` in [0, 1] aligned with ``mask``, or None (layout edges only).
        sigma: Canny smoothing of the image edges.

    Returns:
        float32 ``(H, W)`` in {0, 1}.
    """
    edge = mask_boundary(np.asarray(mask))
    if image is not None:
        image = np.asarray(image)
        if image.shape[1:] != edge.shape:
            raise ValueError(f"image {image.shape} and mask {edge.shape} are not aligned")
        edge = np.maximum(edge, image_edges(image, sigma))
    return edge
