"""Train the layout- and style-conditioned denoiser on a dataset folder; resumable bit for bit.

The loop is deliberately short: data order, noise and style draws are pure functions of
``(seed, step or epoch, index, rank)``, so a resumed run needs only the weights, optimiser, EMA,
LR-schedule and RNG states plus the sample position to continue exactly where it stopped, on
any number of DataLoader workers. ``accelerate`` makes the same code run on CPU, one GPU or many
(data sharded by process rank; bf16 autocast on CUDA).

Data parallelism does not change what is learned: W processes of ``train.batch_size`` b take
one step on the same samples, with the same noise, timesteps and condition drops, as one process
of batch W * b (rank r holds global positions ``r::W``; see :class:`BatchPlan` and
:func:`~segsynth.diffusion.objective.diffusion_loss`), and DDP's gradient average over processes
of per-process mean losses is the gradient of the global mean. Only float summation order
differs. This holds when the number of training samples is a multiple of W (otherwise each
epoch leaves out its last ``N mod W`` samples of the permutation). Launch with
``accelerate launch`` or ``torchrun``; on a machine without CUDA the processes talk over gloo.

Run folder::

    RUN/config.yaml            resolved config
    RUN/training_data.json     data root, train ids, style sampler, N
    RUN/train_log.jsonl        one JSON object per log interval
    RUN/samples/step_*.png     layout | style refs | sample grids (EMA weights)
    RUN/checkpoints/step_*/    resumable state (CheckpointManager)
    RUN/pipeline/              released SegSynthPipeline with EMA weights
    RUN/latent_cache/          latent models with data.cache_latents: one latent per image
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from monai.transforms import Compose, RandSpatialCropd, SpatialPadd
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from segsynth.config import ConfigError, load_config, save_resolved_config
from segsynth.data.augment import paired_augmentation
from segsynth.data.edges import edge_map
from segsynth.data.format import DatasetSpec, load_spec
from segsynth.data.loader import SampleRef, SegDataset, index_dataset, sample_seed
from segsynth.data.style_sampling import StyleSampler, make_style_sampler, random_patch
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.objective import diffusion_loss, make_train_scheduler
from segsynth.diffusion.performance import apply_memory_format, maybe_compile
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.diffusion.sample_grid import save_sample_grid
from segsynth.device import make_accelerator
from segsynth.io.atomic import atomic_directory, atomic_write_json, remove_stale_temporaries
from segsynth.io.checkpoint import CheckpointManager, rng_state, set_rng_state
from segsynth.io.run_log import check_resume, check_same_record, train_keys, truncate_log
from segsynth.io.hashing import model_hash
from segsynth.io.lock import owns_folder
from segsynth.io.finite import check_losses, check_weights
from segsynth.latent.autoencoder import encode_images, latent_factor, load_autoencoder
from segsynth.latent.cache import LatentCache
from segsynth.models import SegSynthModel
from segsynth.models.text import encode_prompts
from segsynth.progress import StepProgress
from segsynth.tracking import PROJECT, flat_config, make_trackers

CONFIG_YAML = "config.yaml"
TRAINING_DATA_JSON = "training_data.json"
TRAIN_LOG = "train_log.jsonl"
SAMPLES_DIR = "samples"
PIPELINE_DIR = "pipeline"
LATENT_CACHE_DIR = "latent_cache"

# Settings that may change when a run is resumed: they decide how long, how fast and how visibly
# it runs, not what a given step computes (the memory format and compilation only up to float rounding).
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "sample_every", "log_every", "num_workers",
                     "channels_last", "compile", "log_with"}


def fit_config_to_data(cfg: DiffusionTrainConfig, spec: DatasetSpec, data: Path) -> DiffusionTrainConfig:
    """Fill the model's channels and classes from ``dataset.json``; refuse explicit contradictions."""
    wanted = {"image_channels": spec.channels, "num_classes": spec.num_classes}
    for key, value in wanted.items():
        if key in cfg.model.model_fields_set and getattr(cfg.model, key) != value:
            raise ConfigError(
                f"model.{key} is {getattr(cfg.model, key)} but {data / 'dataset.json'} declares {value}"
            )
    model = type(cfg.model).model_validate({**cfg.model.model_dump(), **wanted})
    return cfg.model_copy(update={"model": model})


def fit_config_to_datasets(cfg: DiffusionTrainConfig, specs: Sequence[DatasetSpec],
                           roots: Sequence[Path]) -> DiffusionTrainConfig:
    """Several datasets (one model for several modalities): the model draws the largest channel
    count (single-channel images are repeated to it) and the largest label count."""
    if len(specs) == 1:
        return fit_config_to_data(cfg, specs[0], roots[0])
    channels = sorted({spec.channels for spec in specs})
    if len(channels) > 1 and channels[:-1] != [1]:
        raise ConfigError(f"datasets {[str(r) for r in roots]} mix {channels} channels; only 1-channel data can be "
                          "combined with data of another channel count (it is repeated)")
    wanted = {"image_channels": channels[-1], "num_classes": max(spec.num_classes for spec in specs)}
    for key, value in wanted.items():
        if key in cfg.model.model_fields_set and getattr(cfg.model, key) != value:
            raise ConfigError(f"model.{key} is {getattr(cfg.model, key)} but the datasets need {value}")
    model = type(cfg.model).model_validate({**cfg.model.model_dump(), **wanted})
    return cfg.model_copy(update={"model": model})


def fit_config_to_autoencoder(cfg: DiffusionTrainConfig, vae: AutoencoderKL, folder: Path) -> DiffusionTrainConfig:
    """Latent mode: take the latent channels and factor from the autoencoder; refuse contradictions."""
    if vae.config.in_channels != cfg.model.image_channels:
        raise ConfigError(f"{folder}: the autoencoder codes {vae.config.in_channels}-channel images, "
                          f"the data has {cfg.model.image_channels}")
    wanted = {"latent_channels": vae.config.latent_channels, "latent_factor": latent_factor(vae)}
    for key, value in wanted.items():
        if getattr(cfg.model, key) not in (type(cfg.model).model_fields[key].default, value):
            raise ConfigError(f"model.{key} is {getattr(cfg.model, key)} but the autoencoder {folder} has {value}")
    model = type(cfg.model).model_validate({**cfg.model.model_dump(), **wanted})
    return cfg.model_copy(update={"model": model})


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
    """``(epoch, index) -> {"image", "mask", "style_images", "id"[, "edge"][, "text"]}``, all randomness seeded.

    Image and layout get one paired augmentation and one random ``image_size`` crop; the style
    references come from ``sampler`` with a generator seeded by ``(seed, epoch, index)``. For edge
    models the edge map is computed *after* that draw, from the augmented mask (and, with
    probability ``data.edge_image_prob``, the augmented image), so it is aligned with both. For text
    models each sample carries the prompt embedding of its dataset.

    Several datasets (``extra`` sources) are indexed one after another; style references are
    drawn within a sample's own dataset, and single-channel images are repeated to the model's
    channel count.

    Args:
        root: the (first) dataset folder.
        refs: its samples to train on.
        cfg: the training config.
        text: ``(num_datasets, text_dim)`` prompt embeddings, one row per dataset (text models).
        extra: further ``(root, refs)`` datasets.
    """

    def __init__(self, root: Path, refs: Sequence[SampleRef], cfg: DiffusionTrainConfig,
                 text: torch.Tensor | None = None, extra: Sequence[tuple[Path, Sequence[SampleRef]]] = ()) -> None:
        size = cfg.model.image_size
        keys = ["image", "mask"]
        augment = Compose([
            paired_augmentation(cfg.data.augmentation),
            SpatialPadd(keys, spatial_size=(size, size), mode="symmetric"),
            RandSpatialCropd(keys, roi_size=(size, size), random_size=False),
        ])
        sources = [(root, refs), *extra]
        # Dataset 0 keeps the plain seed, so a single-dataset run draws exactly as before.
        self.datasets = [SegDataset(r, "labeled", refs=rf, augment=augment, seed=cfg.train.seed + 7919 * i)
                         for i, (r, rf) in enumerate(sources)]
        self.dataset = self.datasets[0]
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.sampler: StyleSampler = make_style_sampler(cfg.data.style_sampler, size, cfg.data.style_augment)
        for dataset in self.datasets:  # a target is never its own reference: refuse now, not mid-run
            self.sampler.check_targets(dataset)
        self.num_refs = cfg.model.style.num_refs
        self.image_size = size
        self.seed = cfg.train.seed
        self.channels = cfg.model.image_channels
        self.edge = cfg.model.edge
        self.edge_sigma = cfg.model.edge_sigma
        self.edge_image_prob = cfg.data.edge_image_prob
        self.latent_cache: LatentCache | None = None  # set by the trainer for data.cache_latents
        if text is not None and len(text) != len(self.datasets):
            raise ValueError(f"{len(text)} prompt embeddings for {len(self.datasets)} datasets")
        self.text = text

    def __len__(self) -> int:
        return int(self.offsets[-1])

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
        rng = np.random.default_rng(sample_seed(self.seed + 1, epoch, index))
        styles, _ = self.sampler(dataset, local, self.num_refs, rng)
        out = {"image": self._channels(sample["image"], 0), "mask": sample["mask"],
               "style_images": self._channels(torch.from_numpy(styles), 1), "id": sample["id"]}
        if self.edge:
            # Its own stream, so edge models leave the other draws of a sample unchanged.
            with_image = np.random.default_rng(sample_seed(self.seed + 3, epoch, index)).random() < self.edge_image_prob
            image = sample["image"].numpy() if with_image else None
            out["edge"] = torch.from_numpy(edge_map(sample["mask"].numpy(), image, self.edge_sigma))[None]
        if self.text is not None:
            out["text"] = self.text[source]
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
        for index in np.linspace(0, len(self) - 1, rows).round().astype(int):
            source, local = self.locate(int(index))
            dataset = self.datasets[source]
            image, mask = dataset.load_arrays(local)
            stacked = np.concatenate([image, mask[None].astype(np.float32)], 0)
            layouts.append(torch.from_numpy(random_patch(stacked, self.image_size, rng)[-1].astype(np.int64)))
            styles.append(self._channels(torch.from_numpy(self.sampler(dataset, local, self.num_refs, rng)[0]), 1))
            if self.text is not None:
                texts.append(self.text[source])
        out = {"layout": torch.stack(layouts), "style_images": torch.stack(styles)}
        if self.edge:
            out["edge"] = torch.stack([torch.from_numpy(edge_map(m.numpy()))[None] for m in out["layout"]])
        if texts:
            out["text"] = torch.stack(texts)
        return out


@dataclass
class Position:
    """Where training stands: optimiser steps done and samples consumed (per process)."""

    step: int = 0
    samples: int = 0


def prepare_run_dir(out: Path, cfg: DiffusionTrainConfig, resume: bool, training_data: dict[str, Any]) -> None:
    """Create the run folder, or check that a resumed run trains the same model on the same data."""
    config_path, data_path = out / CONFIG_YAML, out / TRAINING_DATA_JSON
    check_resume(config_path, cfg, resume, train_keys(RESUMABLE_CHANGES))
    if resume:
        check_same_record(data_path, "train_ids", training_data["train_ids"],
                          "the training samples differ from those of the run being resumed")
        check_same_record(data_path, "autoencoder.sha256", training_data.get("autoencoder", {}).get("sha256"),
                          "the run being resumed was trained with another autoencoder (or none)")
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, config_path)
    atomic_write_json(data_path, training_data)


class Trainer:
    """One training run: model, optimiser, EMA, data and bookkeeping; see :func:`train_diffusion`."""

    def __init__(self, data: Path, cfg: DiffusionTrainConfig, out: Path, refs: list[SampleRef],
                 text: torch.Tensor | None = None, extra: Sequence[tuple[Path, Sequence[SampleRef]]] = (),
                 vae: AutoencoderKL | None = None) -> None:
        self.cfg, self.out = cfg, out
        self.accelerator = make_accelerator(cfg.train.mixed_precision,
                                            log_with=make_trackers(cfg.train.log_with, out) or None)
        torch.manual_seed(cfg.train.seed)
        model = apply_memory_format(SegSynthModel.from_config(cfg.model), cfg.train.channels_last)
        maybe_compile(model, cfg.train.compile, self.accelerator.device)
        self.scheduler = make_train_scheduler(cfg.objective)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.lr_scheduler = get_scheduler(
            "constant_with_warmup" if cfg.train.lr_schedule == "constant" else "cosine",
            optimizer, num_warmup_steps=cfg.train.warmup, num_training_steps=cfg.train.steps,
        )
        self.ema = EMAModel(model.parameters(), decay=cfg.train.ema_decay)
        # Several processes: DDP with its default find_unused_parameters=False (no extra graph walk per
        # step). That holds because a dropped condition is swapped for its learned null by
        # torch.where, so every null embedding and encoder is in every step's graph (with zero
        # gradient where unused). The LR scheduler stays unprepared: prepared, it would step once
        # per process.
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema.to(self.accelerator.device)
        self.samples = TrainingSamples(data, refs, cfg, text=text, extra=extra)
        # Frozen and outside the optimiser, EMA and checkpoints: it is an input transform here.
        self.vae = vae.to(self.accelerator.device) if vae is not None else None
        self.checkpoints = CheckpointManager(out, keep=cfg.train.keep_checkpoints)
        self.position = Position()

    @property
    def epoch(self) -> int:
        """The epoch the next sample belongs to."""
        return self.position.samples // (len(self.samples) // self.accelerator.num_processes)

    @property
    def raw_model(self) -> SegSynthModel:
        return self.accelerator.unwrap_model(self.model)

    def state_tree(self) -> dict[str, Any]:
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": self.ema.state_dict(),
            "rng": rng_state(),
            "step": self.position.step,
            "samples": self.position.samples,
            "epoch": self.epoch,
            "data_order": epoch_order(len(self.samples), self.cfg.train.seed, self.epoch,
                                      self.accelerator.process_index, self.accelerator.num_processes),
        }

    def load_state_tree(self, tree: dict[str, Any]) -> None:
        self.raw_model.load_state_dict(tree["model"])
        self.optimizer.load_state_dict(tree["optimizer"])
        self.lr_scheduler.load_state_dict(tree["lr_scheduler"])
        self.ema.load_state_dict(tree["ema"])
        self.ema.to(self.accelerator.device)
        set_rng_state(tree["rng"])
        self.position = Position(step=int(tree["step"]), samples=int(tree["samples"]))

    def noise_generator(self, step: int) -> torch.Generator:
        """The generator of step ``step``, the same on every process.

        Every process draws the noise of the whole global batch from it and keeps its own rows
        (``share`` of :func:`diffusion_loss`), so the draws do not depend on the number of
        processes. The last seed word stays 0, as it was for the single process, so seeds and
        runs of one process are unchanged.
        """
        seed = sample_seed(self.cfg.train.seed + 2, step, 0)
        return torch.Generator(device=self.accelerator.device).manual_seed(seed)

    def batches(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg.train
        plan = BatchPlan(len(self.samples), cfg.batch_size, cfg.seed, self.position.samples,
                         cfg.steps - self.position.step, self.accelerator.process_index, self.accelerator.num_processes)
        # A private generator keeps the loader's worker seeding off the global RNG (all randomness
        # of a sample is seeded by (seed, epoch, index) anyway).
        loader = DataLoader(self.samples, batch_sampler=plan, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed),
                            pin_memory=self.accelerator.device.type == "cuda")
        device = self.accelerator.device
        for batch in loader:
            yield {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        self.model.train()
        acc = self.accelerator
        terms = diffusion_loss(self.model, self.scheduler, batch, self.cfg.objective,
                               self.noise_generator(self.position.step), share=(acc.process_index, acc.num_processes))
        self.accelerator.backward(terms["loss"])
        logged = {name: value.detach() for name, value in terms.items()}
        if self.cfg.train.grad_clip is not None:
            logged["grad_norm"] = torch.as_tensor(
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.raw_model.parameters())
        self.position.step += 1
        self.position.samples += self.cfg.train.batch_size
        reduced = {k: float(self.accelerator.reduce(v.float().reshape(1), "mean")) for k, v in logged.items()}
        # Checked after the reduction, so every process stops at the same step (none waits forever).
        check_losses({name: reduced[name] for name in terms}, self.position.step, "train-diffusion")
        return reduced

    @torch.no_grad()
    def to_latents(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Latent models: add the autoencoder's latents of the batch's images (unchanged otherwise).

        Encoded on the fly because every sample is a fresh augmented crop; the posterior mean
        makes the code of a given crop deterministic, so resumption stays exact.
        """
        if self.vae is None or "latents" in batch:
            return batch
        with self.accelerator.autocast():
            return {**batch, "latents": encode_images(self.vae, batch["image"]).float()}

    def ema_pipeline(self) -> SegSynthPipeline:
        """A pipeline sharing the live modules (swap the EMA weights in first), without a progress bar."""
        pipeline = SegSynthPipeline.from_model(self.raw_model, self.scheduler, self.vae)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def write_preview(self, rows: dict[str, torch.Tensor]) -> None:
        s = self.cfg.sampling
        self.ema.store(self.raw_model.parameters())
        self.ema.copy_to(self.raw_model.parameters())
        try:
            device = self.accelerator.device
            generators = [torch.Generator(device=device).manual_seed(s.seed + i) for i in range(len(rows["layout"]))]
            with torch.no_grad(), self.accelerator.autocast():
                images = self.ema_pipeline()(
                    rows["layout"].to(device), rows["style_images"].to(device), num_inference_steps=s.steps,
                    sampler=s.sampler, style_guidance_scale=s.style_guidance_scale,
                    layout_guidance_scale=s.layout_guidance_scale, guidance_rescale=s.guidance_rescale,
                    generator=generators,
                    **({"edge": rows["edge"].to(device), "edge_guidance_scale": s.edge_guidance_scale}
                       if "edge" in rows else {}),
                    **({"prompt_embeds": rows["text"].to(device), "text_guidance_scale": s.text_guidance_scale}
                       if "text" in rows else {}),
                ).images
        finally:
            self.ema.restore(self.raw_model.parameters())
        save_sample_grid(self.out / SAMPLES_DIR / f"step_{self.position.step:09d}.png",
                         rows["layout"], rows["style_images"], images)

    def release(self) -> None:
        """Write ``RUN/pipeline`` with the EMA weights swapped in (atomically)."""
        self.ema.store(self.raw_model.parameters())
        self.ema.copy_to(self.raw_model.parameters())
        try:
            with atomic_directory(self.out / PIPELINE_DIR, overwrite=True) as tmp:
                self.ema_pipeline().save_pretrained(tmp)
        finally:
            self.ema.restore(self.raw_model.parameters())


@owns_folder("out")
def train_diffusion(
    data: str | Path | Sequence[str | Path],
    config: DiffusionTrainConfig | str | Path | None,
    out: str | Path,
    resume: bool = False,
    train_ids: Sequence[str] | None = None,
    console: Console | None = None,
    autoencoder: str | Path | None = None,
) -> Path:
    """Train (or resume) a diffusion model on the labelled images of ``data``.

    Args:
        data: dataset folder (``dataset.json``, ``images/``, ``masks/``), or a list of them to train
            one model on several datasets (e.g. several modalities told apart by their prompts
            with ``model.text``); ``training_data.json`` then names the first as ``data_root``.
        config: a :class:`DiffusionTrainConfig`, a YAML path, or None for the defaults.
        out: run folder (see the module docstring for its contents).
        resume: continue from the newest complete checkpoint in ``out``.
        train_ids: restrict training to these sample ids (e.g. one fold's training cases).
        console: rich console for a progress bar; None trains quietly.
        autoencoder: a ``train-autoencoder`` folder: latent mode. The denoiser works on the
            autoencoder's latents (``model.image_size`` stays the image crop, the layout is pooled
            to the latent grid), and the released pipeline carries the autoencoder to decode.

    Returns:
        The run folder; its ``pipeline/`` holds the released model.
    """
    roots = [Path(d).resolve() for d in ([data] if isinstance(data, (str, Path)) else data)]
    if not roots:
        raise ValueError("no dataset folder to train on")
    if len(set(roots)) != len(roots):
        raise ValueError(f"a dataset folder is listed twice: {[str(r) for r in roots]}")
    if len(roots) > 1 and train_ids is not None:
        raise ValueError("train_ids select samples of one dataset; they cannot be combined with several datasets")
    data, out = roots[0], Path(out)
    cfg = config if isinstance(config, DiffusionTrainConfig) else load_config(DiffusionTrainConfig, config)
    specs = [load_spec(root) for root in roots]
    spec = specs[0]
    cfg = fit_config_to_datasets(cfg, specs, roots)
    vae = None
    if autoencoder is not None:
        vae, vae_dir = load_autoencoder(autoencoder)
        cfg = fit_config_to_autoencoder(cfg, vae, vae_dir)
    elif cfg.model.latent_channels or cfg.data.cache_latents:
        raise ConfigError("model.latent_channels / data.cache_latents are set but no autoencoder was given "
                          "(train-diffusion --autoencoder AE)")
    refs = select_refs(data, spec, train_ids)
    extra = [(root, select_refs(root, s, None)) for root, s in zip(roots[1:], specs[1:])]
    training_data = {"data_root": str(data), "train_ids": [ref.id for ref in refs],
                     "style_sampler": cfg.data.style_sampler, "num_refs": cfg.model.style.num_refs}
    if extra:
        training_data["datasets"] = [{"data_root": str(root), "train_ids": [r.id for r in rf], "prompt": s.prompt}
                                     for (root, rf), s in zip([(data, refs), *extra], specs)]
    text = None
    if cfg.model.text:
        text = encode_prompts([s.prompt for s in specs])
        if text.shape[1] != cfg.model.text_dim:
            raise ConfigError(f"model.text_dim is {cfg.model.text_dim} but the text encoder makes {text.shape[1]}-d embeddings")
        training_data["prompts"] = [s.prompt for s in specs]
    if vae is not None:
        training_data["autoencoder"] = {"path": str(vae_dir.resolve()), "sha256": model_hash(vae_dir)}
    trainer = Trainer(data, cfg, out, refs, text=text, extra=extra, vae=vae)
    trainer.samples.verify()  # a bad file fails now, naming it, before the run folder is touched
    main = trainer.accelerator.is_main_process
    if main:
        prepare_run_dir(out, cfg, resume, training_data)
    if vae is not None and cfg.data.cache_latents:
        trainer.samples.latent_cache = LatentCache(out / LATENT_CACHE_DIR, cfg.model.latent_factor, cfg.model.image_size)
        if main:
            remove_stale_temporaries(out / LATENT_CACHE_DIR)
            trainer.samples.latent_cache.build(vae, trainer.samples.datasets, cfg.model.image_channels)
    trainer.accelerator.wait_for_everyone()
    latest = trainer.checkpoints.latest() if resume else None
    if latest is not None:
        trainer.load_state_tree(latest[1])
    if main and resume:
        truncate_log(out / TRAIN_LOG, trainer.position.step)
        remove_stale_temporaries(out, out / SAMPLES_DIR, out / "checkpoints")
    preview = trainer.samples.preview_rows(cfg.sampling.grid_rows, cfg.sampling.seed)
    _run(trainer, preview, console if main else None)
    return out


def _run(trainer: Trainer, preview: dict[str, torch.Tensor], console: Console | None) -> None:
    cfg, acc = trainer.cfg.train, trainer.accelerator
    window: dict[str, float] = {}
    count, tick = 0, time.perf_counter()
    shown = console if acc.is_main_process else None
    acc.init_trackers(PROJECT, config=flat_config(trainer.cfg))
    with StepProgress("train-diffusion", cfg.steps, shown, trainer.position.step) as progress:
        for batch in trainer.batches():
            terms = trainer.train_step(trainer.to_latents(batch))
            for name, value in terms.items():
                window[name] = window.get(name, 0.0) + value
            count += 1
            step = trainer.position.step
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - tick
                record = {"step": step, "epoch": trainer.epoch,
                          "lr": trainer.lr_scheduler.get_last_lr()[0],
                          **{name: total / count for name, total in window.items()},
                          "it_per_s": count / elapsed if elapsed > 0 else None}
                if acc.is_main_process:
                    with (trainer.out / TRAIN_LOG).open("a", encoding="utf-8") as log:
                        log.write(json.dumps(record) + "\n")
                acc.log({k: v for k, v in record.items() if k != "step"}, step=step)
                progress.update(step, loss=record["loss"])
                window, count, tick = {}, 0, time.perf_counter()
            progress.update(step)
            last = step == cfg.steps
            if acc.is_main_process and ((cfg.sample_every and step % cfg.sample_every == 0) or last):
                trainer.write_preview(preview)
            if step % cfg.checkpoint_every == 0 or last:
                check_weights(trainer.raw_model.named_parameters(), step, "train-diffusion")
                tree = trainer.state_tree()
                if acc.is_main_process:
                    trainer.checkpoints.save(step, tree)
                acc.wait_for_everyone()
        if acc.is_main_process:
            trainer.release()
        acc.wait_for_everyone()
    if acc.trackers:
        acc.end_training()
