"""Layout sources: where the masks that condition synthetic images come from.

Every source has one method, ``draw(index, rng) -> (mask (H, W) int64, layout_id | None)``, and
takes all its randomness from ``rng``, so a sample's layout depends only on its own generator (not on
batching, sharding or where a run resumed). Three kinds:

- ``augmented`` (STEDM): a real mask chosen under a class prior, cropped around a pixel of the chosen
  class and heavily augmented (flip, 360-degree rotation, scale, shear, reflect padding).
- ``variants`` (DiffBoost): every real mask ``per_mask`` times in a row, unchanged, so the generator
  varies only the image.
- ``composed``: new layouts whose class fractions follow the dataset's composition prior, drawn as
  smooth random regions.

Masks are brought to the model's size by cropping (reflect-padding when smaller), never by resizing,
so objects keep the pixel scale the model was trained on (training crops patches the same way).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from segsynth.data.augment import paired_augmentation
from segsynth.data.loader import SegDataset


class LayoutSource(ABC):
    """A source of conditioning masks of one size.

    Args:
        size: side of the square masks it draws (the model's image size).
        num_classes: number of labels K; drawn masks hold values in ``0..K-1``.
    """

    name: ClassVar[str]

    def __init__(self, size: int, num_classes: int) -> None:
        if size < 1:
            raise ValueError(f"layout size must be >= 1, got {size}")
        if num_classes < 2:
            raise ValueError(f"a layout needs at least 2 classes (background and one more), got {num_classes}")
        self.size = size
        self.num_classes = num_classes

    @abstractmethod
    def draw(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, str | None]:
        """Layout of sample ``index``.

        Returns:
            ``(mask, layout_id)``: int64 ``(size, size)`` labels and the id of the real sample the
            layout came from (None for layouts that come from no real sample).
        """


def fit_mask(mask: np.ndarray, size: int, center: tuple[int, int] | None = None) -> np.ndarray:
    """Crop ``mask`` ``(H, W)`` to ``size x size`` around ``center`` (default: the middle).

    A mask smaller than ``size`` is first reflect-padded, like the style references
    (:func:`segsynth.data.style_sampling.random_patch`), so scale is never changed.
    """
    return np.ascontiguousarray(_fit_2d(mask, size, center), dtype=np.int64)


def fit_image(image: np.ndarray, size: int, center: tuple[int, int] | None = None) -> np.ndarray:
    """Crop ``image`` ``(C, H, W)`` exactly as :func:`fit_mask` crops its mask (same padding and window)."""
    return np.ascontiguousarray(np.stack([_fit_2d(channel, size, center) for channel in image]), dtype=np.float32)


def _fit_2d(mask: np.ndarray, size: int, center: tuple[int, int] | None) -> np.ndarray:
    height, width = mask.shape
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if pad_h or pad_w:
        mask = np.pad(mask, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)), "symmetric")
        if center is not None:
            center = (center[0] + pad_h // 2, center[1] + pad_w // 2)
        height, width = mask.shape
    cy, cx = center if center is not None else (height // 2, width // 2)
    top = int(np.clip(cy - size // 2, 0, height - size))
    left = int(np.clip(cx - size // 2, 0, width - size))
    return mask[top : top + size, left : left + size]


class _RealMaskLayouts(LayoutSource):
    """Shared by the sources that reuse the labelled masks of a dataset folder."""

    def __init__(self, dataset: SegDataset, size: int) -> None:
        if dataset.split != "labeled":
            raise ValueError(f"{dataset.root}: layouts need labelled masks, got the {dataset.split!r} split")
        if len(dataset) == 0:
            raise ValueError(f"{dataset.root}: no labelled samples to draw layouts from")
        super().__init__(size, dataset.spec.num_classes)
        self.dataset = dataset

    def mask(self, position: int) -> np.ndarray:
        """The un-augmented mask ``(H, W)`` of dataset sample ``position``."""
        mask = self.dataset.load_arrays(position)[1]
        assert mask is not None  # the labelled split always has masks
        return mask


class AugmentedLayouts(_RealMaskLayouts):
    """Real masks, heavily augmented, drawn under a class prior (STEDM).

    A class is drawn from ``class_prior``, then a mask that contains it, then a crop centred on a
    random pixel of that class, so rare classes appear as often as the prior asks (STEDM draws
    background / tumour with 0.5 / 0.5). The crop is augmented with
    ``paired_augmentation("heavy")``: flips, rotation over 360 degrees, scale 0.8-1.2, shear up to
    20 degrees, reflect padding, nearest interpolation.

    Args:
        dataset: labelled dataset whose masks are reused.
        size: side of the drawn masks.
        class_prior: ``{label name: weight}``; default uniform over the classes present in some mask.
            Weights are normalised; classes absent from every mask are an error.
    """

    name = "augmented"

    def __init__(self, dataset: SegDataset, size: int, class_prior: Mapping[str, float] | None = None) -> None:
        super().__init__(dataset, size)
        labels = dataset.spec.labels
        holders: dict[int, list[int]] = {}
        for position in range(len(dataset)):
            for value in np.unique(self.mask(position)).tolist():
                holders.setdefault(int(value), []).append(position)
        if class_prior is None:
            class_prior = {name: 1.0 for name, value in labels.items() if value in holders}
        unknown = sorted(set(class_prior) - set(labels))
        if unknown:
            raise ValueError(f"class prior names unknown labels {unknown}; the dataset has {sorted(labels)}")
        weights = {labels[name]: float(w) for name, w in class_prior.items() if w != 0}
        if any(w < 0 for w in weights.values()) or not weights:
            raise ValueError(f"class prior weights must be >= 0 with a positive total, got {dict(class_prior)}")
        missing = sorted(name for name, value in labels.items() if value in weights and value not in holders)
        if missing:
            raise ValueError(f"{dataset.root}: class prior asks for {missing}, present in no mask")
        self.classes = np.array(sorted(weights), dtype=np.int64)
        total = sum(weights.values())
        self.probabilities = np.array([weights[c] / total for c in self.classes])
        self.holders = {c: holders[c] for c in self.classes.tolist()}
        self.augment = paired_augmentation("heavy", image_keys=("image",), label_keys=("mask",))

    def draw(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, str | None]:
        label = int(rng.choice(self.classes, p=self.probabilities))
        candidates = self.holders[label]
        position = candidates[int(rng.integers(len(candidates)))]
        mask = self.mask(position)
        ys, xs = np.nonzero(mask == label)
        pick = int(rng.integers(len(ys)))
        crop = fit_mask(mask, self.size, (int(ys[pick]), int(xs[pick])))
        self.augment.set_random_state(seed=int(rng.integers(2**31)))
        out = self.augment({"mask": torch.from_numpy(crop[None])})["mask"]
        return torch.as_tensor(out).round().long()[0].numpy(), self.dataset.refs[position].id


class VariantLayouts(_RealMaskLayouts):
    """Each real mask ``per_mask`` times in a row (DiffBoost makes 50 images per training mask).

    Sample ``index`` uses mask ``(index // per_mask) % len(dataset)``, centre-cropped to ``size``; the
    layout is not augmented, so the variants of one mask differ only by noise and style.
    """

    name = "variants"

    def __init__(self, dataset: SegDataset, size: int, per_mask: int = 50) -> None:
        if per_mask < 1:
            raise ValueError(f"per_mask must be >= 1, got {per_mask}")
        super().__init__(dataset, size)
        self.per_mask = per_mask

    def position(self, index: int) -> int:
        """Dataset position of the real sample whose mask sample ``index`` reuses."""
        return (index // self.per_mask) % len(self.dataset)

    def draw(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, str | None]:
        position = self.position(index)
        return fit_mask(self.mask(position), self.size), self.dataset.refs[position].id

    def source_image(self, index: int) -> np.ndarray:
        """The real image ``(C, size, size)`` in [0, 1] behind sample ``index``, cropped like its mask
        (so its edges are aligned with the layout)."""
        return fit_image(self.dataset.load_arrays(self.position(index))[0], self.size)


@dataclass(frozen=True)
class CompositionPrior:
    """How much of an image each class covers: per-image fraction mean and std per class.

    Attributes:
        class_names: label names ordered by value (index 0 is background).
        mean: ``(K,)`` mean fraction of an image covered by each class (sums to 1).
        std: ``(K,)`` standard deviation of that fraction across images.
    """

    class_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.class_names)
        if self.mean.shape != (k,) or self.std.shape != (k,):
            raise ValueError(f"prior needs one mean and one std per class ({k}), got {self.mean.shape}, {self.std.shape}")
        if (self.mean < 0).any() or (self.std < 0).any() or not np.isclose(self.mean.sum(), 1.0, atol=1e-3):
            raise ValueError(f"class fractions must be >= 0 and sum to 1, got {dict(zip(self.class_names, self.mean))}")

    @classmethod
    def from_fingerprint(cls, fingerprint: Mapping, class_names: list[str], source: str = "fingerprint") -> CompositionPrior:
        """Read ``per_image_fractions`` ({name: {mean, std}}) or, failing that, ``class_fractions``.

        A missing background entry is taken as the rest of the image; with ``class_fractions`` only,
        the std is unknown and set to 0 (every layout gets the mean composition).
        """
        per_image = fingerprint.get("per_image_fractions")
        if isinstance(per_image, Mapping) and per_image:
            stats = {name: (float(v["mean"]), float(v.get("std", 0.0))) for name, v in per_image.items()}
        elif isinstance(fingerprint.get("class_fractions"), Mapping):
            stats = {name: (float(v), 0.0) for name, v in fingerprint["class_fractions"].items()}
        else:
            raise ValueError(f"{source}: needs 'per_image_fractions' or 'class_fractions'")
        unknown = sorted(set(stats) - set(class_names))
        if unknown:
            raise ValueError(f"{source}: fractions for unknown labels {unknown}; labels are {class_names}")
        background = class_names[0]
        if background not in stats:
            rest = 1.0 - sum(m for m, _ in stats.values())
            stats[background] = (rest, 0.0)
        mean = np.array([stats.get(name, (0.0, 0.0))[0] for name in class_names])
        std = np.array([stats.get(name, (0.0, 0.0))[1] for name in class_names])
        try:
            return cls(tuple(class_names), mean, std)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_masks(cls, dataset: SegDataset) -> CompositionPrior:
        """Measure the prior on the labelled masks of ``dataset`` (used when no fingerprint exists)."""
        if dataset.split != "labeled" or len(dataset) == 0:
            raise ValueError(f"{dataset.root}: a composition prior needs labelled masks, found none")
        k = dataset.spec.num_classes
        rows = []
        for position in range(len(dataset)):
            mask = dataset.load_arrays(position)[1]
            rows.append(np.bincount(mask.ravel(), minlength=k)[:k] / mask.size)
        fractions = np.stack(rows)
        return cls(tuple(dataset.spec.class_names), fractions.mean(0), fractions.std(0))

    @classmethod
    def for_dataset(cls, dataset: SegDataset) -> CompositionPrior:
        """The prior measured on the masks the layouts are drawn for (:meth:`from_masks`).

        Always measured, never read from a file kept beside the data: a fingerprint there may be
        stale, and would cover held-out cases of a dataset restricted to one fold's training cases.
        """
        return cls.from_masks(dataset)

    def concentration(self) -> float:
        """Dirichlet concentration whose per-class variances best match ``std`` (summed over classes).

        For Dirichlet(c * mean) the variance of class k is ``mean_k (1 - mean_k) / (c + 1)``; matching
        the summed variance gives ``c``. Zero spread means a (nearly) fixed composition.
        """
        spread = float((self.std**2).sum())
        bound = float((self.mean * (1 - self.mean)).sum())
        if spread <= 1e-12:
            return 1e6
        return float(np.clip(bound / spread - 1.0, 1e-2, 1e6))


class ComposedLayouts(LayoutSource):
    """New layouts of smooth random regions whose class fractions follow a :class:`CompositionPrior`.

    Per layout, class fractions are drawn from a Dirichlet distribution with the prior's mean (so
    the mean over many layouts equals the prior exactly) and a spread fitted to its per-image std.
    Each foreground class, in random order, then takes the pixels where its own Gaussian-smoothed
    noise field is highest among the pixels still free, exactly as many as its fraction asks;
    background gets the rest. The smoothing width (drawn log-uniformly from ``smoothness`` times
    ``size`` per class) sets the region scale: small values give nucleus-like blobs, large values
    tissue-like areas.

    Args:
        prior: class composition to follow.
        size: side of the drawn masks.
        smoothness: ``(low, high)`` smoothing width as a fraction of ``size``.
    """

    name = "composed"

    def __init__(self, prior: CompositionPrior, size: int, smoothness: tuple[float, float] = (0.03, 0.12)) -> None:
        super().__init__(size, len(prior.class_names))
        low, high = smoothness
        if not 0 < low <= high:
            raise ValueError(f"smoothness must satisfy 0 < low <= high, got {smoothness}")
        self.prior = prior
        self.smoothness = (float(low), float(high))
        self.present = np.nonzero(prior.mean > 0)[0]
        self.alpha = prior.concentration() * prior.mean[self.present]

    def draw_fractions(self, rng: np.random.Generator) -> np.ndarray:
        """One layout's class fractions ``(K,)`` (sum 1)."""
        fractions = np.zeros(self.num_classes)
        if len(self.present) == 1:
            fractions[self.present] = 1.0
        else:
            fractions[self.present] = rng.dirichlet(self.alpha)
        return fractions

    def draw(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, str | None]:
        pixels = self.size * self.size
        counts = _round_counts(self.draw_fractions(rng), pixels)
        mask = np.zeros(pixels, dtype=np.int64)
        free = np.ones(pixels, dtype=bool)
        low, high = self.smoothness
        for label in rng.permutation(np.arange(1, self.num_classes)).tolist():
            if counts[label] == 0:
                continue
            sigma = self.size * float(np.exp(rng.uniform(np.log(low), np.log(high))))
            field = gaussian_filter(rng.standard_normal((self.size, self.size)), sigma, mode="wrap").ravel()
            candidates = np.flatnonzero(free)
            chosen = candidates[np.argsort(-field[candidates], kind="stable")[: counts[label]]]
            mask[chosen] = label
            free[chosen] = False
        return mask.reshape(self.size, self.size), None


def _round_counts(fractions: np.ndarray, total: int) -> np.ndarray:
    """Integer pixel counts summing to ``total`` (largest-remainder rounding of ``fractions * total``)."""
    raw = fractions * total
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


LAYOUT_SOURCES = ("augmented", "variants", "composed")


def make_layout_source(
    name: str,
    dataset: SegDataset,
    size: int,
    *,
    per_mask: int = 50,
    class_prior: Mapping[str, float] | None = None,
) -> LayoutSource:
    """Build the layout source called ``name`` over the labelled ``dataset``.

    Args:
        name: ``"augmented"``, ``"variants"`` or ``"composed"``.
        dataset: labelled dataset (masks for ``augmented``/``variants``; composition prior for
            ``composed``, measured on its masks).
        size: side of the drawn masks (the model's image size).
        per_mask: images per real mask for ``variants``.
        class_prior: ``{label name: weight}`` for ``augmented``.
    """
    if name == "augmented":
        return AugmentedLayouts(dataset, size, class_prior)
    if name == "variants":
        return VariantLayouts(dataset, size, per_mask)
    if name == "composed":
        return ComposedLayouts(CompositionPrior.for_dataset(dataset), size)
    raise ValueError(f"unknown layout source {name!r}; choose one of {', '.join(LAYOUT_SOURCES)}")
