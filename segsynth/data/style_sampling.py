"""Style samplers: which reference images describe the style of a training (or generation) anchor.

STEDM conditions the denoiser on N style references and shows that *how* they are drawn decides
what the style encoder learns: copies of the target image itself teach it to copy content, other
patches of the same slide (case) teach it stain, scanner and texture. Every sampler here has the
signature ``sampler(dataset, anchor, n, rng) -> (images (N, C, H, W) float32 in [0, 1], ids)``:

- ``augmented``: N geometrically augmented copies of the anchor image (the one sampler whose
  references are the anchor by definition: chosen knowingly, e.g. for cases of a single image).
- ``nearby``: the anchor's nearest neighbours by sample id within its case (neighbouring tiles or
  slices of the same slide or volume).
- ``multi_patch``: N random other images of the anchor's case.

In training the anchor is the *target*, and ``nearby`` / ``multi_patch`` never return it: a case
of one image has no reference to give, and :meth:`StyleSampler.check_targets` refuses such a
training set up front, naming the cases. Neither stand-in keeps what the sampler promises: the
target itself would teach the encoder to copy content, an image of another case would teach it
that the references say nothing about the target's style. At generation the anchor is only a pool
image that picks the style (``anchor_is_target=False``): it may be a reference itself, so pools of
single-image cases work.

With ``patch_size`` set, each reference is a random ``patch_size`` crop of its image (reflect-padded
when smaller), so references of different sizes stack and a large slide yields many patches.
Only spatial augmentation is used: an intensity change would alter the very style the references
are meant to carry.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod

import numpy as np

from segsynth.artifacts.names import DATASET_JSON
from segsynth.config import ConfigError
from segsynth.data.loader import SegDataset

class StyleSampler(ABC):
    """A style sampler: index the dataset by case once, select indices, load and crop references.

    Args:
        patch_size: crop every reference to ``patch_size x patch_size`` (None keeps full images,
            which must then all have the same shape).
        augment: apply a random flip / 90-degree rotation to every reference.
        anchor_is_target: the anchor is the image being trained on, so it is never one of its own
            references (training); False when it only picks the style from a pool (generation).
    """

    name = ""

    def __init__(self, patch_size: int | None = None, augment: bool = False, anchor_is_target: bool = True) -> None:
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"patch_size must be >= 1 or None, got {patch_size}")
        self.patch_size = patch_size
        self.augment = augment
        self.anchor_is_target = anchor_is_target
        self._cases: weakref.WeakKeyDictionary[SegDataset, tuple[dict[str, list[int]], list[int]]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(patch_size={self.patch_size}, augment={self.augment}, "
                f"anchor_is_target={self.anchor_is_target})")

    def _index(self, dataset: SegDataset) -> tuple[dict[str, list[int]], list[int]]:
        """Case id -> its indices sorted by sample id, and each index's position in its case (built once)."""
        if dataset not in self._cases:
            by_case: dict[str, list[int]] = {}
            for index in sorted(range(len(dataset)), key=lambda i: dataset.refs[i].id):
                by_case.setdefault(dataset.refs[index].case_id, []).append(index)
            position = [0] * len(dataset)
            for members in by_case.values():
                for pos, index in enumerate(members):
                    position[index] = pos
            self._cases[dataset] = (by_case, position)
        return self._cases[dataset]

    def case_members(self, dataset: SegDataset, anchor: int) -> tuple[list[int], int]:
        """Indices of the anchor's case, sorted by sample id, and the anchor's position among them."""
        by_case, position = self._index(dataset)
        return by_case[dataset.refs[anchor].case_id], position[anchor]

    def require_others(self, dataset: SegDataset, anchor: int, members: list[int]) -> None:
        """Raise :class:`ConfigError` when the anchor is the target and ``members``, its case, holds nothing else."""
        if self.anchor_is_target and len(members) == 1:
            raise ConfigError(self._single_image_message([dataset.refs[anchor].case_id]))

    def check_targets(self, dataset: SegDataset) -> None:
        """Refuse, before any training, a set with a case that has no reference besides the target.

        Raises:
            ConfigError: naming every case of one image.
        """
        if not self.anchor_is_target:
            return
        single = sorted(case for case, members in self._index(dataset)[0].items() if len(members) == 1)
        if single:
            raise ConfigError(f"{dataset.root / DATASET_JSON}: {self._single_image_message(single)}")

    def _single_image_message(self, cases: list[str]) -> str:
        shown = ", ".join(map(repr, cases[:5])) + (f" and {len(cases) - 5} more" if len(cases) > 5 else "")
        return (
            f"data.style_sampler {self.name!r} takes a training image's style references from the other "
            f"images of its case, but case(s) {shown} hold a single image. Group images that share a "
            "style (slide, scanner, site, volume) under one case id in dataset.json, leave those cases "
            "out, or set data.style_sampler: augmented to train on augmented copies of the target itself"
        )

    @abstractmethod
    def select(self, dataset: SegDataset, anchor: int, n: int, rng: np.random.Generator) -> list[int]:
        """Dataset indices of the ``n`` references of ``anchor``."""

    def __call__(
        self, dataset: SegDataset, anchor: int, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[str]]:
        """Draw ``n`` references for sample ``anchor`` of ``dataset``.

        Returns:
            ``(images, ids)``: float32 ``(N, C, H, W)`` in [0, 1] and the sample id of each reference.
        """
        if not 0 <= anchor < len(dataset):
            raise ValueError(f"anchor {anchor} out of range for a dataset of {len(dataset)} samples")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        indices = self.select(dataset, anchor, n, rng)
        images = [self._prepare(dataset.load_arrays(i)[0], rng) for i in indices]
        ids = [dataset.refs[i].id for i in indices]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise ValueError(
                f"style references {ids} have different shapes {sorted(shapes)}; set a patch_size to crop them"
            )
        return np.stack(images).astype(np.float32, copy=False), ids

    def _prepare(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.patch_size is not None:
            image = random_patch(image, self.patch_size, rng)
        if self.augment:
            image = np.rot90(image, k=int(rng.integers(4)), axes=(1, 2))
            if rng.random() < 0.5:
                image = image[:, :, ::-1]
        return np.ascontiguousarray(image)


def random_patch(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size x size`` crop of ``image`` ``(C, H, W)``, reflect-padded first if it is smaller."""
    _, height, width = image.shape
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)), "symmetric")
        _, height, width = image.shape
    top = int(rng.integers(height - size + 1))
    left = int(rng.integers(width - size + 1))
    return image[:, top : top + size, left : left + size]


class AugmentedSampler(StyleSampler):
    """N augmented copies of the anchor image (flips, 90-degree rotations, random crops)."""

    name = "augmented"

    def __init__(self, patch_size: int | None = None, augment: bool = True, anchor_is_target: bool = True) -> None:
        super().__init__(patch_size, augment, anchor_is_target)

    def check_targets(self, dataset: SegDataset) -> None:
        """Nothing to refuse: the copies of the target are this sampler's stated choice."""

    def select(self, dataset: SegDataset, anchor: int, n: int, rng: np.random.Generator) -> list[int]:
        return [anchor] * n


class NearbySampler(StyleSampler):
    """The anchor's nearest neighbours by sample id within its case (cycled if the case is small);
    the anchor itself only when it is not the target."""

    name = "nearby"

    def select(self, dataset: SegDataset, anchor: int, n: int, rng: np.random.Generator) -> list[int]:
        members, pos = self.case_members(dataset, anchor)
        self.require_others(dataset, anchor, members)
        by_distance = sorted(range(len(members)), key=lambda p: (abs(p - pos), p))[self.anchor_is_target:]
        return [members[by_distance[k % len(by_distance)]] for k in range(n)]


class MultiPatchSampler(StyleSampler):
    """N random other images of the anchor's case (drawn with replacement when the case has fewer);
    a pool anchor (not a target) alone in its case is its own reference."""

    name = "multi_patch"

    def select(self, dataset: SegDataset, anchor: int, n: int, rng: np.random.Generator) -> list[int]:
        members, _ = self.case_members(dataset, anchor)
        self.require_others(dataset, anchor, members)
        others = [m for m in members if m != anchor] or [anchor]
        return [int(i) for i in rng.choice(others, size=n, replace=len(others) < n)]


STYLE_SAMPLERS: dict[str, type[StyleSampler]] = {
    cls.name: cls for cls in (AugmentedSampler, NearbySampler, MultiPatchSampler)
}


def make_style_sampler(
    name: str, patch_size: int | None = None, augment: bool | None = None, anchor_is_target: bool = True
) -> StyleSampler:
    """Build the style sampler called ``name`` (see :data:`STYLE_SAMPLERS`).

    Args:
        name: ``"augmented"``, ``"nearby"`` or ``"multi_patch"``.
        patch_size: crop each reference to this size (the model's image size); None keeps full images.
        augment: random flips / rotations of each reference; default on for ``augmented`` only.
        anchor_is_target: True in training (the anchor is never its own reference); False when
            the anchor only picks a style from a pool.
    """
    if name not in STYLE_SAMPLERS:
        raise ValueError(f"unknown style sampler {name!r}; choose one of {sorted(STYLE_SAMPLERS)}")
    cls = STYLE_SAMPLERS[name]
    if augment is None:
        return cls(patch_size, anchor_is_target=anchor_is_target)
    return cls(patch_size, augment, anchor_is_target)
