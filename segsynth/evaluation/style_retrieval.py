"""Style fidelity (zero-shot): is each sample nearer to its own style references than to others'?

The style space is deliberately *not* the generator's style encoder (a generator would trivially
agree with itself): colour / stain statistics (:class:`~segsynth.evaluation.features.StainStatistics`)
and Gram matrices of a fixed, seeded random conv net
(:class:`~segsynth.evaluation.features.RandomConvNet`). Every dimension is standardised over the
reference images, and each of the two parts is divided by the square root of its dimension so
both weigh the same in the Euclidean distance.

A sample's *reference set* is the set of pool images in its manifest ``style_ids``; its descriptor
is the mean descriptor of those images. The gallery is every distinct reference set in the
synthetic set. Two accuracies, each with its chance level:

- top-1: the nearest gallery entry is the sample's own set (chance: 1 / gallery size);
- pairwise: over all (own set, other set) pairs, the own set is nearer (chance: 0.5; ties count
  one half).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from segsynth.evaluation.features import RandomConvNet, StainStatistics, gram_features

SPACE_NAME = "stain statistics + Gram matrices of a fixed random conv net"


class StyleDescriptor:
    """Maps one image ``(C, H, W)`` to its style parts ``{"stain": (Ds,), "gram": (Dg,)}``.

    Args:
        channels: image channels C.
        seed: seed of the random conv net.
    """

    def __init__(self, channels: int, seed: int = 0) -> None:
        self.stain = StainStatistics(channels)
        self.net = RandomConvNet(channels, seed=seed)
        self.seed = seed
        self.name = f"{SPACE_NAME} (widths {list(self.net.widths)}, seed {seed}); not used by the generator"

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Descriptors of images that may differ in size: ``{part: (N, D_part)}``."""
        stain, gram = [], []
        for image in images:
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
            stain.append(self.stain(x)[0].numpy())
            gram.append(gram_features(self.net(x))[0].numpy())
        return {"stain": np.asarray(stain, np.float64), "gram": np.asarray(gram, np.float64)}


def _standardise(parts: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """z-score each part by ``reference`` statistics and divide by sqrt(dimension).

    A dimension's std is floored at 1 % of the part's mean std, so dimensions that hardly vary
    among the references (and would turn rounding noise into distance) are not blown up.
    """
    out = {}
    for name, values in parts.items():
        mean, std = reference[name].mean(0), reference[name].std(0)
        std = np.maximum(std, 0.01 * std.mean() + 1e-12)
        out[name] = (values - mean) / std / np.sqrt(values.shape[1])
    return out


def retrieval_accuracy(
    sample_features: np.ndarray, reference_features: np.ndarray, own: Sequence[int]
) -> dict[str, float]:
    """Top-1 and pairwise retrieval of each sample's own reference set.

    Args:
        sample_features: ``(N, D)`` sample descriptors.
        reference_features: ``(G, D)`` descriptors of the G distinct reference sets.
        own: the index (into the G sets) of each sample's own set.
    """
    own = np.asarray(own)
    distances = np.linalg.norm(sample_features[:, None, :] - reference_features[None, :, :], axis=-1)
    rows = np.arange(len(own))
    own_distance = distances[rows, own]
    gallery = reference_features.shape[0]
    others = np.ones_like(distances, dtype=bool)
    others[rows, own] = False
    nearer = (distances > own_distance[:, None]) & others
    ties = (distances == own_distance[:, None]) & others
    pairwise = (nearer.sum(1) + 0.5 * ties.sum(1)) / max(1, gallery - 1)
    top1 = (distances.argmin(1) == own) & (ties.sum(1) == 0)
    return {
        "top1_accuracy": float(top1.mean()),
        "top1_chance": 1.0 / gallery,
        "pairwise_accuracy": float(pairwise.mean()) if gallery > 1 else float("nan"),
        "pairwise_chance": 0.5,
    }


def style_retrieval(
    samples: Sequence[np.ndarray],
    reference_sets: Sequence[Sequence[Hashable]],
    reference_images: dict[Hashable, np.ndarray],
    channels: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Retrieval accuracy of every sample's own style references (see the module docstring).

    Args:
        samples: synthetic images ``(C, H, W)`` float in [0, 1].
        reference_sets: per sample, the keys of its style reference images (keys are matched by
            their ``str()``, e.g. ``(pool folder, image id)`` tuples).
        reference_images: key -> reference image ``(C, H, W)`` (any size).
        channels: image channels C.
        seed: seed of the random conv net.

    Returns:
        ``{"space", "num_samples", "num_reference_sets", "num_reference_images", top1/pairwise
        accuracy and chance, "by_part": {"stain" | "gram": the same accuracies in that part alone}}``.

    Raises:
        ValueError: no sample, a sample without references, or fewer than two distinct sets.
    """
    if len(samples) != len(reference_sets) or len(samples) == 0:
        raise ValueError(f"need one reference set per sample (and a sample), got {len(samples)} and {len(reference_sets)}")
    sets = [tuple(sorted(map(str, s))) for s in reference_sets]
    if any(not s for s in sets):
        raise ValueError("every sample needs at least one style reference")
    gallery = sorted(set(sets))
    if len(gallery) < 2:
        raise ValueError("retrieval needs at least two distinct reference sets")
    own = [gallery.index(s) for s in sets]
    images = {str(key): image for key, image in reference_images.items()}
    keys = sorted({key for s in sets for key in s})
    missing = [key for key in keys if key not in images]
    if missing:
        raise ValueError(f"no image for style references {missing[:3]}")
    describe = StyleDescriptor(channels, seed)
    ref_parts = describe([images[key] for key in keys])
    sample_parts = describe(list(samples))
    position = {key: i for i, key in enumerate(keys)}
    ref_std = _standardise(ref_parts, ref_parts)
    sample_std = _standardise(sample_parts, ref_parts)
    set_parts = {
        name: np.stack([values[[position[key] for key in s]].mean(0) for s in gallery])
        for name, values in ref_std.items()
    }
    joint = retrieval_accuracy(
        np.concatenate([sample_std["stain"], sample_std["gram"]], 1),
        np.concatenate([set_parts["stain"], set_parts["gram"]], 1),
        own,
    )
    return {
        "space": describe.name,
        "num_samples": len(sets),
        "num_reference_sets": len(gallery),
        "num_reference_images": len(keys),
        **joint,
        "by_part": {name: retrieval_accuracy(sample_std[name], set_parts[name], own) for name in ("stain", "gram")},
    }
