"""How synthetic image/mask pairs enter segmentation training: one interface, three strategies.

A strategy maps positions of the run's *example stream* to :data:`PlanItem`
``(primary, partner)`` where each element is ``(source, index)`` -- source 0 is the real
training set, source ``s >= 1`` the ``s``-th synthetic set -- and ``partner`` is the synthetic
variant paired with a real image (``merge`` only). A run of S steps of batch B consumes positions
``0 .. S*B`` under every strategy, so synthetic data changes what the batches hold, never how
many there are. Plans depend only on ``(seed, positions)``, so a resumed run replays exactly what
it missed.

* :class:`ConcatMixing` -- plain union of real and synthetic samples (with no synthetic set: the
  real-only baseline).
* :class:`RatioMixing` -- STEDM: a fixed real:synthetic proportion of the examples
  (default 0.2 : 0.8).
* :class:`MergeMixing` + :func:`random_merge` -- DiffBoost's random merging: a real image and one
  of its synthetic variants (its own mask, unchanged) go through the network under the same
  augmentation, and a Bernoulli(alpha) grid of square cells decides, per cell, whether the real
  or the synthetic prediction and label enter the loss.

The sets a strategy draws from are opened by :mod:`segsynth.seg.synthetic_sets`; a plan's examples
are loaded and augmented by :class:`segsynth.seg.plan_dataset.PlanDataset`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Protocol

import numpy as np
import torch

from segsynth.artifacts.names import MANIFEST_JSONL
from segsynth.data.format import DatasetFormatError
from segsynth.data.loader import SegDataset
from segsynth.renamed import renamed_attributes
from segsynth.seg.config import MixConfig
# the synthetic sets the strategies draw from (their public names also answer here, as before the move)
from segsynth.seg.synthetic_sets import SyntheticTrainingSet, load_synthetic_set  # noqa: F401

#: ``(source, index)``: source 0 is the real training set, ``s >= 1`` the s-th synthetic set.
SampleKey = tuple[int, int]
#: One training example: a sample and (``merge`` only) its synthetic partner.
PlanItem = tuple[SampleKey, SampleKey | None]


class MixingStrategy(Protocol):
    """What the training loop needs from a strategy."""

    #: Whether plan items carry a synthetic partner (and the loss must merge predictions).
    paired: bool

    def plan(self, start: int, count: int) -> list[PlanItem]:
        """Training examples at positions ``start .. start+count`` of the run's example stream.

        A pure function of the seed and the positions: a run of S steps of batch B consumes
        positions ``0 .. S*B``, whatever the strategy, and a resumed run replays exactly the
        positions it missed.
        """
        ...


def _stream(n: int, start: int, count: int, seed: int, tag: int) -> list[int]:
    """Positions ``start .. start+count`` of an endless sequence of seeded permutations of ``range(n)``.

    Walking one stream across the run means every item is used once before any is reused.
    """
    out: list[int] = []
    perms: dict[int, np.ndarray] = {}
    for pos in range(start, start + count):
        cycle = pos // n
        if cycle not in perms:
            perms[cycle] = np.random.default_rng([seed, tag, cycle]).permutation(n)
        out.append(int(perms[cycle][pos % n]))
    return out


def _flat_keys(sizes: list[int]) -> list[SampleKey]:
    return [(source, i) for source, size in enumerate(sizes) for i in range(size)]


class ConcatMixing:
    """Plain union: the real and synthetic samples form one pool, walked in seeded permutations.

    With no synthetic set this is the real-only baseline: every real image once per pass.

    Args:
        sizes: number of samples of the real set (first) and of each synthetic set.
        seed: base seed of the permutations.
    """

    paired = False

    def __init__(self, sizes: list[int], seed: int = 0) -> None:
        if not sizes or sizes[0] < 1:
            raise ValueError("concat mixing needs at least one real training sample")
        self.keys = _flat_keys(sizes)
        self.seed = seed

    def plan(self, start: int, count: int) -> list[PlanItem]:
        return [(self.keys[i], None) for i in _stream(len(self.keys), start, count, self.seed, 0)]


class RatioMixing:
    """STEDM's fixed proportion: a share ``synthetic_fraction`` of the examples is synthetic.

    Position ``p`` is synthetic when ``floor((p+1)·f) > floor(p·f)`` (exact rational ``f``), so
    every window of positions, and hence every batch, holds the proportion to within one
    example. Real and synthetic examples each walk their own stream of seeded permutations (all
    synthetic sets pooled), so every sample is used before any repeats.

    Args:
        sizes: number of samples of the real set (first) and of each synthetic set.
        synthetic_fraction: share of synthetic examples, in [0, 1).
        seed: base seed.
    """

    paired = False

    def __init__(self, sizes: list[int], synthetic_fraction: float, seed: int = 0) -> None:
        if not sizes or sizes[0] < 1:
            raise ValueError("ratio mixing needs at least one real training sample")
        if not 0.0 <= synthetic_fraction < 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1), got {synthetic_fraction}")
        self.synthetic = _flat_keys([0, *sizes[1:]])
        if synthetic_fraction > 0 and not self.synthetic:
            raise ValueError("ratio mixing with a synthetic fraction > 0 needs a non-empty synthetic set")
        self.n_real = sizes[0]
        self.fraction = Fraction(str(synthetic_fraction)).limit_denominator(10_000)
        self.seed = seed

    def _synthetic_before(self, position: int) -> int:
        return math.floor(position * self.fraction)

    def plan(self, start: int, count: int) -> list[PlanItem]:
        syn_start, syn_end = self._synthetic_before(start), self._synthetic_before(start + count)
        real_start = start - syn_start
        real = iter(_stream(self.n_real, real_start, count - (syn_end - syn_start), self.seed, 0))
        syn = iter(_stream(len(self.synthetic), syn_start, syn_end - syn_start, self.seed, 1) if self.synthetic else [])
        items: list[PlanItem] = []
        for position in range(start, start + count):
            is_synthetic = self._synthetic_before(position + 1) > self._synthetic_before(position)
            items.append((self.synthetic[next(syn)] if is_synthetic else (0, next(real)), None))
        return items


class MergeMixing:
    """DiffBoost pairing: every example is a real sample with one of its own same-mask variants.

    Real samples walk a stream of seeded permutations; the variant of position ``p`` is drawn
    with the seed ``(seed, p)``.

    Args:
        variants: ``variants[i]`` are the synthetic keys whose layout is real sample ``i``'s mask
            (may be empty: that real image then trains alone, with an all-real grid).
        seed: base seed of the order and of the variant choice.
    """

    paired = True

    def __init__(self, variants: list[list[SampleKey]], seed: int = 0) -> None:
        if not variants:
            raise ValueError("merge mixing needs at least one real training sample")
        if not any(variants):
            raise ValueError(
                "merge mixing found no synthetic variant of any real training image "
                "(manifest.jsonl rows whose layout_id is a training sample id)"
            )
        self.variants = variants
        self.seed = seed

    def plan(self, start: int, count: int) -> list[PlanItem]:
        plan: list[PlanItem] = []
        for position, i in enumerate(_stream(len(self.variants), start, count, self.seed, 0), start=start):
            options = self.variants[i]
            pick = int(np.random.default_rng([self.seed, 2, position]).integers(len(options))) if options else 0
            plan.append(((0, i), options[pick] if options else None))
        return plan


#: How to make a set that merge mixing accepts (named in its refusal).
VARIANTS_HINT = "segsynth generate RUN --layouts variants --per-mask N --out SET"


def _check_variant_sets(synthetic: list[SyntheticTrainingSet]) -> None:
    """Merge needs sets drawn from the real masks unchanged (``generate --layouts variants``)."""
    for s in synthetic:
        if not s.has_manifest:
            raise DatasetFormatError(f"{s.root / MANIFEST_JSONL}: missing; merge mixing pairs images through it")
        other = sorted({str(src) for src in s.layout_sources if src != "variants"})
        if other:
            raise DatasetFormatError(
                f"{s.root}: merge pairs a real image only with variants of its own unchanged mask, but this set's "
                f"layouts are {', '.join(other)}; make a valid set with `{VARIANTS_HINT}`"
            )


def make_mixing(cfg: MixConfig, real: SegDataset, synthetic: list[SyntheticTrainingSet], seed: int) -> MixingStrategy:
    """Build the strategy named by ``cfg.strategy`` over ``real`` and ``synthetic``.

    Raises:
        ValueError: a strategy that needs synthetic data without any, or synthetic sets given
            with ``none``.
        DatasetFormatError: ``merge`` with a set that has no manifest or was not made from the
            real masks unchanged (``variants``).
    """
    sizes = [len(real), *(len(s) for s in synthetic)]
    if cfg.strategy == "none":
        if synthetic:
            raise ValueError("synthetic sets were given but mix.strategy is 'none'; choose ratio, merge or concat")
        return ConcatMixing(sizes, seed)
    if not synthetic:
        raise ValueError(f"mix.strategy {cfg.strategy!r} needs at least one synthetic set")
    if cfg.strategy == "concat":
        return ConcatMixing(sizes, seed)
    if cfg.strategy == "ratio":
        return RatioMixing(sizes, cfg.synthetic_fraction, seed)
    _check_variant_sets(synthetic)
    index_of = {ref.id: i for i, ref in enumerate(real.refs)}
    variants: list[list[SampleKey]] = [[] for _ in real.refs]
    for source, s in enumerate(synthetic, start=1):
        for j, layout_id in enumerate(s.layout_ids):
            if layout_id in index_of:
                variants[index_of[layout_id]].append((source, j))
    return MergeMixing(variants, seed)


def merge_cell_size(image_side: int, cell: int = 64, reference_side: int = 384) -> int:
    """Cell side for an image of ``image_side`` pixels: the same fraction of the image as
    ``cell`` px at ``reference_side`` px (DiffBoost: 64 at 384), at least 1 px."""
    return max(1, round(cell * image_side / reference_side))


def merge_grid(
    batch: int, height: int, width: int, alpha: float, cell: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boolean ``(B, 1, H, W)`` grid: each ``cell``-px square is True (take the real image) with
    probability ``alpha``; partial cells at the right/bottom border follow their cell."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if cell < 1:
        raise ValueError(f"cell must be >= 1, got {cell}")
    cells = torch.rand((batch, 1, math.ceil(height / cell), math.ceil(width / cell)), generator=generator) < alpha
    return cells.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)[..., :height, :width]


def random_merge(
    real_logits: torch.Tensor,
    synthetic_logits: torch.Tensor,
    real_mask: torch.Tensor,
    synthetic_mask: torch.Tensor,
    grid: torch.Tensor,
    has_partner: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge predictions and labels of paired real/synthetic images by one grid (DiffBoost).

    Args:
        real_logits, synthetic_logits: ``(B, K, H, W)``.
        real_mask, synthetic_mask: ``(B, H, W)`` integer labels.
        grid: ``(B, 1, H, W)`` bool, True where the real image is taken (see :func:`merge_grid`).
        has_partner: ``(B,)`` bool; rows without a synthetic variant use the all-real grid.

    Returns:
        ``(logits (B, K, H, W), mask (B, H, W))``: the same cells come from the same image in both.
    """
    if real_logits.shape != synthetic_logits.shape or real_mask.shape != synthetic_mask.shape:
        raise ValueError("real and synthetic tensors must have the same shapes")
    take_real = grid | ~has_partner.view(-1, 1, 1, 1).to(grid.device)
    logits = torch.where(take_real, real_logits, synthetic_logits)
    mask = torch.where(take_real[:, 0], real_mask, synthetic_mask)
    return logits, mask


__getattr__ = renamed_attributes(__name__, {"SyntheticSet": "SyntheticTrainingSet"})
