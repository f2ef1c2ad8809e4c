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
"""

from __future__ import annotations

import math
from fractions import Fraction
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandSpatialCropd, SpatialPadd
from torch.utils.data import Dataset

from segsynth.data.augment import paired_augmentation
from segsynth.artifacts.names import DATASET_JSON, MANIFEST_JSONL
from segsynth.artifacts.schemas import ManifestRecord
from segsynth.data.format import DatasetFormatError
from segsynth.data.io import name_key, split_ext
from segsynth.data.loader import SegDataset, sample_seed
from segsynth.renamed import renamed_attributes
from segsynth.seg.config import MixConfig
from segsynth.artifacts.manifest import read_manifest

#: ``(source, index)``: source 0 is the real training set, ``s >= 1`` the s-th synthetic set.
SampleKey = tuple[int, int]
#: One training example: a sample and (``merge`` only) its synthetic partner.
PlanItem = tuple[SampleKey, SampleKey | None]


@dataclass
class SyntheticTrainingSet:
    """A synthetic dataset folder plus, per sample, the real sample id its layout came from.

    Attributes:
        root: the folder (dataset.json, images/, masks/, manifest.jsonl).
        dataset: its labelled samples, un-augmented.
        layout_ids: ``layout_ids[i]`` for ``dataset.refs[i]``; ``None`` for composed layouts or
            images the manifest does not describe.
        has_manifest: whether ``manifest.jsonl`` exists (without it no sample can be paired or
            checked for leakage).
        layout_sources: per sample, how its layout was made (``augmented``, ``variants``,
            ``composed``; ``None`` when the manifest does not say).
    """

    root: Path
    dataset: SegDataset
    layout_ids: list[str | None]
    has_manifest: bool
    layout_sources: list[str | None]
    excluded: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dataset)

    def without_layouts(self, forbidden: set[str]) -> SyntheticTrainingSet:
        """A copy without the samples whose layout was drawn from a ``forbidden`` real id.

        Used to keep synthetic images made from validation or test masks out of training.
        """
        keep = [i for i, lid in enumerate(self.layout_ids) if lid not in forbidden]
        dropped = [self.dataset.refs[i].id for i in range(len(self)) if self.layout_ids[i] in forbidden]
        dataset = SegDataset(self.root, refs=[self.dataset.refs[i] for i in keep])
        return SyntheticTrainingSet(
            self.root, dataset, [self.layout_ids[i] for i in keep], self.has_manifest,
            [self.layout_sources[i] for i in keep], dropped,
        )


def records_by_image(root: Path) -> dict[str, ManifestRecord] | None:
    """Records of ``root/manifest.jsonl`` keyed by the stem of their ``image`` path (None if absent).

    Parsed by the one manifest parser (:func:`segsynth.artifacts.manifest.read_manifest`), so a manifest
    train-seg accepts is exactly one ``generate`` could have written; this adds what pairing images
    with their records needs: each id and each image appears once.

    Raises:
        DatasetFormatError: a line that is not a valid record, or two records with one ``id`` or
            one image (naming the file and the line).
    """
    path = root / MANIFEST_JSONL
    if not path.is_file():
        return None
    try:
        records = read_manifest(path)
    except ValueError as exc:
        raise DatasetFormatError(str(exc)) from None
    by_stem: dict[str, ManifestRecord] = {}
    ids: set[str] = set()
    for number, record in enumerate(records, start=1):
        stem = name_key(split_ext(Path(record.image).name)[0])  # the form of the set's sample ids
        if record.id in ids or stem in by_stem:
            what = f"id {record.id!r}" if record.id in ids else f"image {record.image!r}"
            raise DatasetFormatError(f"{path}: line {number}: duplicate {what}; each sample must appear once")
        ids.add(record.id)
        by_stem[stem] = record
    return by_stem


def load_synthetic_set(root: str | Path, real: SegDataset, *, layouts_independent: bool = False) -> SyntheticTrainingSet:
    """Open a synthetic set and check it is compatible with the real dataset ``real``.

    Leakage can only be ruled out for samples whose manifest row names the real layout they were
    drawn from (or says it was composed, from no real mask). A set without ``manifest.jsonl``, or
    with samples it does not account for so, is refused: its images may have been drawn from
    validation or test masks, and nothing could tell.

    Args:
        root: the synthetic set's folder.
        real: the real training data.
        layouts_independent: the caller declares that the set's layouts do not come from this real
            data (made elsewhere or by hand); then unaccounted samples are used as they are.

    Raises:
        DatasetFormatError: different labels or channel count than the real data, no samples, or
            (without ``layouts_independent``) a missing manifest or samples without a layout.
    """
    root = Path(root)
    dataset = SegDataset(root)
    spec_path = root / DATASET_JSON
    if dataset.spec.labels != real.spec.labels:
        raise DatasetFormatError(f"{spec_path}: labels {dataset.spec.labels} differ from the real data's {real.spec.labels}")
    if dataset.spec.channels != real.spec.channels:
        raise DatasetFormatError(
            f"{spec_path}: {dataset.spec.channels} channels, the real data has {real.spec.channels}"
        )
    if len(dataset) == 0:
        raise DatasetFormatError(f"{root}: the synthetic set holds no image/mask pairs")
    manifest = records_by_image(root)
    records = [None if manifest is None else manifest.get(r.id) for r in dataset.refs]
    if not layouts_independent:
        unaccounted = [ref.id for ref, record in zip(dataset.refs, records)
                       if record is None or (record.layout_id is None and record.layout_source != "composed")]
        if manifest is None:
            problem = "missing, so no sample's layout can be checked against the validation and test cases"
        elif unaccounted:
            problem = (f"{len(unaccounted)} sample(s) without a row naming their layout (layout_id), "
                       f"e.g. {unaccounted[:3]}; they may have been drawn from validation or test masks")
        else:
            problem = None
        if problem is not None:
            raise DatasetFormatError(
                f"{root / MANIFEST_JSONL}: {problem}. If the set's layouts are independent of this real data, "
                "declare it explicitly to use it anyway (train-seg --layouts-independent, mix.layouts_independent: true)"
            )
    # in the form of the real sample ids they are compared with (a set written before ids were NFC)
    layout_ids = [None if record is None or record.layout_id is None else name_key(record.layout_id) for record in records]
    sources = [None if record is None else record.layout_source for record in records]
    return SyntheticTrainingSet(root, dataset, layout_ids, manifest is not None, sources)


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


class PlanDataset(Dataset):
    """The examples of one stretch of the example stream, loaded and augmented.

    Augmentation is drawn once per example (seeded by ``(seed, position)``) and applied to the
    image, the mask and, for paired plans, the partner image and mask, so a real image and its
    synthetic variant see the same geometry.

    Args:
        sources: real training set first, then the synthetic sets (all without augmentation).
        plan: :data:`PlanItem` examples.
        positions: the stream position of each example (its augmentation seed), e.g. the rows of
            one process of a multi-process run.
        paired: whether to emit ``partner_image``/``partner_mask``/``has_partner``.
        augment: ``"none"``, ``"light"`` or ``"heavy"`` (see :func:`paired_augmentation`).
        patch_size: random square crop (padding smaller images) applied before augmentation.
        seed: the augmentation draw.
    """

    def __init__(
        self,
        sources: list[SegDataset],
        plan: list[PlanItem],
        positions: Sequence[int],
        paired: bool,
        augment: str,
        patch_size: int | None,
        seed: int,
    ) -> None:
        self.sources = sources
        if len(positions) != len(plan):
            raise ValueError(f"{len(plan)} examples but {len(positions)} stream positions")
        self.plan = plan
        self.positions = list(positions)
        self.paired = paired
        self.seed = seed
        image_keys = ["image", "partner_image"] if paired else ["image"]
        label_keys = ["mask", "partner_mask"] if paired else ["mask"]
        steps: list = []
        if patch_size is not None:
            roi = (patch_size, patch_size)
            steps += [
                SpatialPadd(image_keys + label_keys, roi),
                RandSpatialCropd(image_keys + label_keys, roi, random_size=False),
            ]
        steps.append(paired_augmentation(augment, image_keys, label_keys))
        self.transform = Compose(steps)

    def __len__(self) -> int:
        return len(self.plan)

    def _arrays(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.sources[key[0]].load_arrays(key[1])
        return torch.from_numpy(image.copy()), torch.from_numpy(mask[None].copy())

    def __getitem__(self, position: int) -> dict[str, Any]:
        primary, partner = self.plan[position]
        sample: dict[str, Any] = {}
        sample["image"], sample["mask"] = self._arrays(primary)
        if self.paired:
            if partner is None:
                sample["partner_image"], sample["partner_mask"] = sample["image"].clone(), sample["mask"].clone()
            else:
                sample["partner_image"], sample["partner_mask"] = self._arrays(partner)
                ref = self.sources[partner[0]].refs[partner[1]]
                if sample["partner_image"].shape != sample["image"].shape:
                    raise ValueError(
                        f"{ref.image_path}: shape {tuple(sample['partner_image'].shape)} differs from its real "
                        f"layout image {tuple(sample['image'].shape)}; merge needs equal sizes"
                    )
                if not torch.equal(sample["partner_mask"], sample["mask"]):
                    raise ValueError(
                        f"{ref.mask_path}: differs from the mask of its real image; merge pairs a real image only "
                        f"with variants of its own unchanged mask (`{VARIANTS_HINT}`)"
                    )
        self.transform.set_random_state(seed=sample_seed(self.seed, 0, self.positions[position]))
        sample = self.transform(sample)
        out: dict[str, Any] = {"source": primary[0]}
        for key, value in sample.items():
            tensor = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
            if key.endswith("image"):
                out[key] = tensor.float().clamp(0.0, 1.0)
            else:
                out[key] = tensor.round().long()[0]
        if self.paired:
            out["has_partner"] = partner is not None
        return out


__getattr__ = renamed_attributes(__name__, {"SyntheticSet": "SyntheticTrainingSet"})
