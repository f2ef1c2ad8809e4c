"""The diffusion trainers' data: which samples, in which order, and what each training example holds.

The data order is a pure function of ``(seed, epoch, rank)`` (:class:`BatchPlan`) and every
random draw of an example is seeded by ``(seed, epoch, index)`` (:class:`TrainingSamples`), so a
run resumed from the sample position of its checkpoint sees exactly the examples an
uninterrupted run would, whatever the number of DataLoader workers. Both the layout- and
style-conditioned denoiser and the ControlNet trainer draw their crops here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import RandSpatialCropd, SpatialPadd
from torch.utils.data import Dataset

from segsynth.data.augment import PlainCompose, paired_augmentation
from segsynth.data.edges import edge_map
from segsynth.data.format import DatasetSpec
from segsynth.data.loader import SampleRef, SegDataset, index_dataset, sample_seed
from segsynth.data.style_sampling import StyleSampler, make_style_sampler, random_patch
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.autoencoder.cache import LatentCache


@dataclass(frozen=True)
class SampleSettings:
    """What :class:`TrainingSamples` needs to make an example.

    Attributes:
        image_size: the training crop.
        channels: the model's image channels (single-channel images are repeated to it).
        augmentation: the paired augmentation preset of image and layout.
        seed: seeds every draw.
        num_refs: style references per example; 0 draws none (a model without a style encoder).
        style_sampler: how references are drawn (see :mod:`segsynth.data.style_sampling`).
        style_augment: flips / rotations of every reference (None: the sampler's default).
        edge: add the edge map of the augmented layout.
        edge_sigma: its Gaussian width.
        edge_image_prob: the fraction of examples whose edge map also holds the image's edges.
        include_unlabeled: add every dataset's unlabelled images as examples without a layout.
    """

    image_size: int
    channels: int
    augmentation: str
    seed: int
    num_refs: int = 0
    style_sampler: str = "augmented"
    style_augment: bool | None = None
    edge: bool = False
    edge_sigma: float = 1.0
    edge_image_prob: float = 0.0
    include_unlabeled: bool = False

    @classmethod
    def of(cls, cfg: DiffusionTrainConfig) -> SampleSettings:
        """The settings of a layout- and style-conditioned denoiser's run."""
        return cls(image_size=cfg.model.image_size, channels=cfg.model.image_channels, augmentation=cfg.data.augmentation,
                   seed=cfg.train.seed, num_refs=cfg.model.style.num_refs, style_sampler=cfg.data.style_sampler,
                   style_augment=cfg.data.style_augment, edge=cfg.model.edge, edge_sigma=cfg.model.edge_sigma,
                   edge_image_prob=cfg.data.edge_image_prob, include_unlabeled=cfg.data.include_unlabeled)


@dataclass(frozen=True)
class PseudoPairs:
    """Image/layout pairs from outside the labelled set that a denoiser trains on like labelled samples.

    The benchmark's fold generator gets unlabelled images its baseline network labelled
    (:mod:`segsynth.benchmark.generator_data`): each ref's ``mask_path`` is its layout. They come in
    made, so this stage does not depend on how; ``layouts`` and ``teacher`` say where from and are
    recorded in ``training_data.json`` with the ids, so a resumed run refuses other pairs.

    Attributes:
        refs: the pairs (image of the data folder, layout file), without ``slice_index``.
        layouts: the folder of the layout files.
        teacher: the run whose predictions the layouts are.
    """

    refs: tuple[SampleRef, ...]
    layouts: Path
    teacher: Path

    def record(self) -> dict[str, Any]:
        """What ``training_data.json`` keeps of them (``pseudo_labelled``)."""
        return {"ids": [r.id for r in self.refs], "layouts": str(self.layouts.resolve()),
                "teacher": str(self.teacher.resolve())}


def select_refs(data: Path, spec: DatasetSpec, train_ids: Sequence[str] | None) -> list[SampleRef]:
    """The labelled samples to train on: all of ``data``, or exactly ``train_ids``."""
    refs = index_dataset(data, "labeled", spec)
    if not refs:
        raise ValueError(f"{data}: no labelled images to train on")
    if train_ids is None:
        return refs
    by_id = {ref.id: ref for ref in refs}
    missing = sorted(set(train_ids) - set(by_id))
    if missing:
        raise ValueError(f"{data}: train_ids not in the labelled set: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return [by_id[i] for i in sorted(set(train_ids))]


def epoch_order(num_samples: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """This process's share of the seeded permutation of epoch ``epoch`` (equal length on every rank)."""
    perm = np.random.default_rng([seed, epoch]).permutation(num_samples)
    per_rank = num_samples // world
    return perm[rank::world][:per_rank]


class BatchPlan:
    """Batches of ``(epoch, index)`` from sample ``position`` on: the data order as a pure function.

    A run that stops at any step and restarts from ``position`` sees exactly the batches it would
    have seen, whatever the number of DataLoader workers (no stateful sampler is involved).

    Rank ``r`` of ``world`` takes every ``world``-th entry of each epoch's permutation, from ``r``
    on, so its ``i``-th sample of a step is entry ``r + world * i`` of the batch one process of
    ``world * batch_size`` would take (when ``world`` divides ``num_samples``, epochs end at the
    same samples too). :func:`~segsynth.diffusion.objective.diffusion_loss` relies on this to give
    every sample the random draws of its global position.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, position: int, num_batches: int,
                 rank: int = 0, world: int = 1) -> None:
        if num_samples < world:
            raise ValueError(f"{num_samples} training samples cannot be shared by {world} processes")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.position, self.num_batches, self.rank, self.world = position, num_batches, rank, world
        self.per_rank = num_samples // world

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position, cached = self.position, (-1, np.empty(0, dtype=np.int64))
        for _ in range(self.num_batches):
            batch = []
            for _ in range(self.batch_size):
                epoch, offset = divmod(position, self.per_rank)
                if cached[0] != epoch:
                    cached = (epoch, epoch_order(self.num_samples, self.seed, epoch, self.rank, self.world))
                batch.append((epoch, int(cached[1][offset])))
                position += 1
            yield batch


class TrainingSamples(Dataset):
    """``(epoch, index) -> {"image", "mask", "id"[, "style_images"][, "edge"][, "text"]}``, all randomness seeded.

    Image and layout get one paired augmentation and one random ``image_size`` crop; the style
    references (when ``settings.num_refs`` asks for some) come from the style sampler with a
    generator seeded by ``(seed, epoch, index)``. For edge models the edge map is computed *after*
    that draw, from the augmented mask (and, with probability ``edge_image_prob``, the augmented
    image), so it is aligned with both. For text
    models each sample carries the prompt embedding of its dataset.

    Several datasets (``extra`` sources) are indexed one after another; style references are
    drawn within a sample's own dataset, and single-channel images are repeated to the model's
    channel count. With ``include_unlabeled`` every dataset's unlabelled images follow the
    labelled ones; their examples carry an all-background ``mask`` and ``"labelled": False``, which
    the objective turns into a dropped layout and edge map (every example then has ``"labelled"``).

    Args:
        root: the (first) dataset folder.
        refs: its samples to train on.
        settings: crop, augmentation, reference and edge settings.
        text: ``(num_datasets, text_dim)`` prompt embeddings, one row per dataset (text models).
        extra: further ``(root, refs)`` datasets.
    """

    def __init__(self, root: Path, refs: Sequence[SampleRef], settings: SampleSettings,
                 text: torch.Tensor | None = None, extra: Sequence[tuple[Path, Sequence[SampleRef]]] = ()) -> None:
        size = settings.image_size
        keys = ["image", "mask"]
        augment = PlainCompose([
            paired_augmentation(settings.augmentation),
            SpatialPadd(keys, spatial_size=(size, size), mode="symmetric", allow_missing_keys=True),
            RandSpatialCropd(keys, roi_size=(size, size), random_size=False, allow_missing_keys=True),
        ])
        sources = [(root, refs), *extra]
        # Dataset 0 keeps the plain seed, so a single-dataset run draws exactly as before.
        self.datasets = [SegDataset(r, "labeled", refs=rf, augment=augment, seed=settings.seed + 7919 * i)
                         for i, (r, rf) in enumerate(sources)]
        self.num_labeled = len(self.datasets)  # datasets [0, num_labeled) are labelled
        self.prompt_of = list(range(len(sources)))  # dataset number -> row of its prompt embedding
        self.include_unlabeled = settings.include_unlabeled
        if settings.include_unlabeled:
            for i, (r, _) in enumerate(sources):
                pool = SegDataset(r, "unlabeled", augment=augment, seed=settings.seed + 7919 * (len(sources) + i))
                if len(pool):
                    self.datasets.append(pool)
                    self.prompt_of.append(i)
        self.dataset = self.datasets[0]
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.sampler: StyleSampler | None = None
        if settings.num_refs:
            self.sampler = make_style_sampler(settings.style_sampler, size, settings.style_augment)
            for dataset in self.datasets:  # a target is never its own reference: refuse now, not mid-run
                self.sampler.check_targets(dataset)
        self.num_refs = settings.num_refs
        self.image_size = size
        self.seed = settings.seed
        self.channels = settings.channels
        self.edge = settings.edge
        self.edge_sigma = settings.edge_sigma
        self.edge_image_prob = settings.edge_image_prob
        self.latent_cache: LatentCache | None = None  # set by the trainer for data.cache_latents
        if text is not None and len(text) != len(sources):
            raise ValueError(f"{len(text)} prompt embeddings for {len(sources)} datasets")
        self.text = text

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_labeled_samples(self) -> int:
        return int(self.offsets[self.num_labeled])

    def unlabeled_ids(self) -> list[str]:
        """``root name/id`` of every unlabelled training image (recorded so a resume trains on the same)."""
        return [f"{d.root.name}/{r.id}" for d in self.datasets[self.num_labeled:] for r in d.refs]

    def locate(self, index: int) -> tuple[int, int]:
        """``(dataset number, index within it)`` of global sample ``index``."""
        source = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return source, index - int(self.offsets[source])

    def verify(self) -> None:
        """Read every sample of every dataset once (see :meth:`SegDataset.verify`)."""
        for dataset in self.datasets:
            dataset.verify()

    def _channels(self, images: torch.Tensor, dim: int) -> torch.Tensor:
        if images.shape[dim] == self.channels:
            return images
        return images.repeat_interleave(self.channels // images.shape[dim], dim=dim)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        source, local = self.locate(index)
        dataset = self.datasets[source]
        if self.latent_cache is not None:
            sample = self._cached_crop(source, local, epoch, index)
        else:
            dataset.set_epoch(epoch)
            sample = dataset[local]
        image = sample["image"]
        mask = sample["mask"] if "mask" in sample else torch.zeros(image.shape[-2:], dtype=torch.long)
        out = {"image": self._channels(image, 0), "mask": mask, "id": sample["id"]}
        if self.include_unlabeled:
            out["labelled"] = torch.tensor(source < self.num_labeled)
        if self.sampler is not None:
            rng = np.random.default_rng(sample_seed(self.seed + 1, epoch, index))
            styles, _ = self.sampler(dataset, local, self.num_refs, rng)
            out["style_images"] = self._channels(torch.from_numpy(styles), 1)
        if self.edge:
            # Its own stream, so edge models leave the other draws of a sample unchanged.
            with_image = np.random.default_rng(sample_seed(self.seed + 3, epoch, index)).random() < self.edge_image_prob
            image = sample["image"].numpy() if with_image else None
            out["edge"] = torch.from_numpy(edge_map(mask.numpy(), image, self.edge_sigma))[None]
        if self.text is not None:
            out["text"] = self.text[self.prompt_of[source]]
        if "latents" in sample:
            out["latents"] = sample["latents"]
        return out

    def _cached_crop(self, source: int, local: int, epoch: int, index: int) -> dict[str, Any]:
        """A random latent-aligned crop of a cached latent with the same window of image and mask."""
        cache = self.latent_cache
        assert cache is not None
        image, mask = cache.padded_arrays(self.datasets[source], local)
        latent, f, size = cache.load(source, local), cache.factor, self.image_size
        rng = np.random.default_rng(sample_seed(self.seed + 4, epoch, index))
        top = f * int(rng.integers((mask.shape[0] - size) // f + 1))
        left = f * int(rng.integers((mask.shape[1] - size) // f + 1))
        rows, cols = slice(top, top + size), slice(left, left + size)
        return {"image": torch.from_numpy(np.ascontiguousarray(image[:, rows, cols])),
                "mask": torch.from_numpy(np.ascontiguousarray(mask[rows, cols])).long(),
                "latents": latent[:, top // f : (top + size) // f, left // f : (left + size) // f].clone(),
                "id": self.datasets[source].refs[local].id}

    def preview_rows(self, rows: int, seed: int) -> dict[str, torch.Tensor]:
        """Fixed, un-augmented rows for the preview grids, spread over the training set.

        Edge models get the layout's boundary (as at generation without a real image); text
        models the prompt of each row's dataset.
        """
        rng = np.random.default_rng(seed)
        layouts, styles, texts = [], [], []
        for index in np.linspace(0, self.num_labeled_samples - 1, rows).round().astype(int):
            source, local = self.locate(int(index))
            dataset = self.datasets[source]
            image, mask = dataset.load_arrays(local)
            stacked = np.concatenate([image, mask[None].astype(np.float32)], 0)
            layouts.append(torch.from_numpy(random_patch(stacked, self.image_size, rng)[-1].astype(np.int64)))
            if self.sampler is not None:
                styles.append(self._channels(torch.from_numpy(self.sampler(dataset, local, self.num_refs, rng)[0]), 1))
            if self.text is not None:
                texts.append(self.text[source])
        out = {"layout": torch.stack(layouts)}
        if styles:
            out["style_images"] = torch.stack(styles)
        if self.edge:
            out["edge"] = torch.stack([torch.from_numpy(edge_map(m.numpy()))[None] for m in out["layout"]])
        if texts:
            out["text"] = torch.stack(texts)
        return out


