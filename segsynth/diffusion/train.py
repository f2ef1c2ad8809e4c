"""Train the layout- and style-conditioned denoiser on a dataset folder; resumable bit for bit.

:class:`DiffusionTask` is what this stage hands the training engine (:mod:`segsynth.engine`):
the model, its optimiser, LR schedule and EMA, the data, one step of the objective, and the
pipeline it releases. Data order, noise and style draws are pure functions of
``(seed, step or epoch, index, rank)``, so a resumed run needs only the weights, optimiser, EMA,
LR-schedule and RNG states to continue exactly where it stopped, on any number of DataLoader
workers; the engine's accelerator runs the same code on CPU, one GPU or many (data sharded by
process rank; bf16 autocast on CUDA).

Data parallelism does not change what is learned: W processes of ``train.batch_size`` b take
one step on the same samples, with the same noise, timesteps and condition drops, as one process
of batch W * b (rank r holds global positions ``r::W``; see
:class:`~segsynth.diffusion.samples.BatchPlan` and
:func:`~segsynth.diffusion.objective.diffusion_loss`), and DDP's gradient average over processes
of per-process mean losses is the gradient of the global mean. Only float summation order
differs. This holds when the number of training samples is a multiple of W (otherwise each
epoch leaves out its last ``N mod W`` samples of the permutation). Launch with
``accelerate launch`` or ``torchrun``; on a machine without CUDA the processes talk over gloo.

Run folder::

    RUN/config.yaml            resolved config
    RUN/training_data.json     data root, train ids, pseudo-labelled pairs, style sampler, N, content hash of the training files
    RUN/train_log.jsonl        one JSON object per log interval
    RUN/samples/step_*.png     layout | style refs | sample grids (EMA weights)
    RUN/checkpoints/step_*/    resumable state
    RUN/pipeline/              released SegSynthPipeline with EMA weights
    RUN/latent_cache/          latent models with data.cache_latents: one latent per image
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from rich.console import Console
from torch.utils.data import DataLoader

from segsynth.artifacts.names import (
    DATASET_JSON,
    LATENT_CACHE_DIR,
    PIPELINE_DIR,
    SAMPLES_DIR,
    TRAINING_DATA_JSON,
    UNLABELED_DIR,
)
from segsynth.config import ConfigError, load_config
from segsynth.data.format import DatasetSpec, load_spec
from segsynth.fits import Estimate, check_fits, parameter_bytes, saved_activation_bytes, scale_to, training_estimate
from segsynth.data.loader import sample_seed
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.objective import diffusion_loss, make_train_scheduler
from segsynth.diffusion.performance import apply_memory_format, fused_optimizer_options, maybe_compile
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.diffusion.sample_grid import save_sample_grid
from segsynth.diffusion.samples import BatchPlan, PseudoPairs, SampleSettings, TrainingSamples, epoch_order, select_refs
from segsynth.engine import DefaultHooks, Engine, EngineSettings, RunRecord, prepare_run_folder
from segsynth.io.atomic import atomic_directory, remove_stale_temporaries
from segsynth.io.hashing import data_hash, model_hash
from segsynth.io.lock import owns_folder
from segsynth.io.run_log import train_keys
from segsynth.autoencoder.autoencoder import encode_images, latent_factor, load_autoencoder
from segsynth.autoencoder.cache import LatentCache
from segsynth.models import SegSynthModel
from segsynth.models.text import encode_prompts

# Settings that may change when a run is resumed: they decide how long, how fast and how visibly
# it runs, not what a given step computes (the memory format and compilation only up to float rounding).
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "sample_every", "log_every", "num_workers",
                     "channels_last", "compile", "log_with"}


def engine_settings(cfg: DiffusionTrainConfig) -> EngineSettings:
    """The engine's loop settings from the ``train`` section."""
    t = cfg.train
    return EngineSettings(label="train-diffusion", steps=t.steps, log_every=t.log_every,
                          checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints,
                          mixed_precision=t.mixed_precision, log_with=t.log_with)


def fit_config_to_data(cfg: DiffusionTrainConfig, spec: DatasetSpec, data: Path) -> DiffusionTrainConfig:
    """Fill the model's channels and classes from ``dataset.json``; refuse explicit contradictions."""
    wanted = {"image_channels": spec.channels, "num_classes": spec.num_classes}
    for key, value in wanted.items():
        if key in cfg.model.model_fields_set and getattr(cfg.model, key) != value:
            raise ConfigError(
                f"model.{key} is {getattr(cfg.model, key)} but {data / DATASET_JSON} declares {value}"
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
    if cfg.objective.style_consistency > 0:  # refused now, not at the first step
        raise ConfigError("objective.style_consistency needs a pixel model: the style encoder cannot read latents "
                          f"(the autoencoder {folder} was given)")
    wanted = {"latent_channels": vae.config.latent_channels, "latent_factor": latent_factor(vae)}
    for key, value in wanted.items():
        if getattr(cfg.model, key) not in (type(cfg.model).model_fields[key].default, value):
            raise ConfigError(f"model.{key} is {getattr(cfg.model, key)} but the autoencoder {folder} has {value}")
    model = type(cfg.model).model_validate({**cfg.model.model_dump(), **wanted})
    return cfg.model_copy(update={"model": model})



def memory_estimate(cfg: DiffusionTrainConfig, mixed_precision: str = "no") -> Estimate:
    """Peak memory of one training step (a lower bound, see :mod:`segsynth.fits`).

    The denoiser cannot run on the ``meta`` device (it checks the layout's values), so its saved
    activations are measured on a 1-sample CPU probe at the smallest size of at least 32 px that
    its grid takes, with weights left uninitialised, and scaled to ``train.batch_size`` samples of
    ``model.image_size`` (activations grow with the pixel count once the saved weights are left
    out: 25 MiB at 32 px, 100 MiB at 64 px for ``configs/base.yaml``).
    """
    m, b = cfg.model, cfg.train.batch_size
    factor = 2 ** (len(m.block_out_channels) - 1) * m.latent_factor
    side = factor * math.ceil(32 / factor)
    with torch.device("meta"):
        params = parameter_bytes(SegSynthModel.from_config(m))
        probe = SegSynthModel.from_config(m.model_copy(update={"image_size": side}))
    probe = probe.to_empty(device="cpu")
    inner = side // m.latent_factor
    inputs: dict[str, Any] = {
        "noisy": torch.zeros(1, m.latent_channels or m.image_channels, inner, inner),
        "timesteps": torch.zeros(1, dtype=torch.long),
        "layout": torch.zeros(1, side, side, dtype=torch.long),
        "style_images": torch.zeros(1, m.style.num_refs, m.image_channels, side, side),
    }
    if m.edge:
        inputs["edge"] = torch.zeros(1, 1, side, side)
    if m.text:
        inputs["text"] = torch.zeros(1, m.text_dim)
    measured = saved_activation_bytes(lambda: probe(**inputs), list(probe.parameters()))
    pixels = m.image_size * m.image_size
    batch = b * pixels * (4 * m.image_channels * (1 + m.style.num_refs) + 8)
    return training_estimate("train-diffusion", params, scale_to(measured, side * side, b * pixels), batch,
                             weight_copies=5, mixed_precision=mixed_precision,
                             lower=f"train.batch_size ({b}) or model.image_size ({m.image_size})")


class DiffusionTask(DefaultHooks):
    """One training run of the denoiser: model, optimiser, EMA, data and previews (a :class:`~segsynth.engine.TrainTask`).

    Args:
        engine: the run's engine (its accelerator places everything).
        samples: the training examples.
        cfg: the resolved config.
        vae: the frozen autoencoder of latent mode (an input transform: outside the optimiser,
            the EMA and the checkpoints).
    """

    def __init__(self, engine: Engine, samples: TrainingSamples, cfg: DiffusionTrainConfig,
                 vae: AutoencoderKL | None = None) -> None:
        self.cfg, self.out, self.samples = cfg, engine.out, samples
        self.accelerator = engine.accelerator
        torch.manual_seed(cfg.train.seed)
        model = apply_memory_format(SegSynthModel.from_config(cfg.model), cfg.train.channels_last)
        maybe_compile(model, cfg.train.compile, self.accelerator.device)
        self.scheduler = make_train_scheduler(cfg.objective)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                      **fused_optimizer_options(self.accelerator.device))
        self.lr_scheduler = get_scheduler(
            "constant_with_warmup" if cfg.train.lr_schedule == "constant" else "cosine",
            optimizer, num_warmup_steps=cfg.train.warmup, num_training_steps=cfg.train.steps,
        )
        # foreach: one multi-tensor update of the ~200 shadow tensors instead of a Python loop;
        # the shadow weights stay fp32 whatever the autocast precision (they are never autocast)
        self.ema = EMAModel(model.parameters(), decay=cfg.train.ema_decay, foreach=True)
        # Several processes: DDP with its default find_unused_parameters=False (no extra graph walk per
        # step). That holds because a dropped condition is swapped for its learned null by
        # torch.where, so every null embedding and encoder is in every step's graph (with zero
        # gradient where unused). The LR scheduler stays unprepared: prepared, it would step once
        # per process.
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema.to(self.accelerator.device)
        self.vae = vae.to(self.accelerator.device) if vae is not None else None
        self.preview = samples.preview_rows(cfg.sampling.grid_rows, cfg.sampling.seed)

    @property
    def raw_model(self) -> SegSynthModel:
        return self.accelerator.unwrap_model(self.model)

    def epoch(self, step: int) -> int:
        """The epoch the next sample after ``step`` steps belongs to."""
        return step * self.cfg.train.batch_size // (len(self.samples) // self.accelerator.num_processes)

    def state_tree(self, step: int) -> dict[str, Any]:
        epoch = self.epoch(step)
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": self.ema.state_dict(),
            "epoch": epoch,
            "data_order": epoch_order(len(self.samples), self.cfg.train.seed, epoch,
                                      self.accelerator.process_index, self.accelerator.num_processes),
        }

    def load_state_tree(self, tree: dict[str, Any]) -> None:
        self.raw_model.load_state_dict(tree["model"])
        self.optimizer.load_state_dict(tree["optimizer"])
        self.lr_scheduler.load_state_dict(tree["lr_scheduler"])
        self.ema.load_state_dict(tree["ema"])
        self.ema.to(self.accelerator.device)

    def noise_generator(self, step: int) -> torch.Generator:
        """The generator of step ``step``, the same on every process.

        Every process draws the noise of the whole global batch from it and keeps its own rows
        (``share`` of :func:`diffusion_loss`), so the draws do not depend on the number of
        processes. The last seed word stays 0, as it was for the single process, so seeds and
        runs of one process are unchanged.
        """
        seed = sample_seed(self.cfg.train.seed + 2, step, 0)
        return torch.Generator(device=self.accelerator.device).manual_seed(seed)

    def batches(self, step: int) -> Iterator[dict[str, Any]]:
        cfg, acc = self.cfg.train, self.accelerator
        plan = BatchPlan(len(self.samples), cfg.batch_size, cfg.seed, step * cfg.batch_size, cfg.steps - step,
                         acc.process_index, acc.num_processes)
        # A private generator keeps the loader's worker seeding off the global RNG (all randomness
        # of a sample is seeded by (seed, epoch, index) anyway).
        loader = DataLoader(self.samples, batch_sampler=plan, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed), pin_memory=acc.device.type == "cuda")
        for batch in loader:
            yield self.to_latents({k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v
                                   for k, v in batch.items()})

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        self.model.train()
        acc = self.accelerator
        terms = diffusion_loss(self.model, self.scheduler, batch, self.cfg.objective, self.noise_generator(step),
                               share=(acc.process_index, acc.num_processes))
        acc.backward(terms["loss"])
        logged = {name: value.detach() for name, value in terms.items()}
        if self.cfg.train.grad_clip is not None:
            logged["grad_norm"] = torch.as_tensor(acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.raw_model.parameters())
        return logged

    def log_fields(self, step: int) -> dict[str, Any]:
        return {"epoch": self.epoch(step), "lr": self.lr_scheduler.get_last_lr()[0]}

    def after_step(self, step: int, last: bool) -> None:
        every = self.cfg.train.sample_every
        if self.accelerator.is_main_process and ((every and step % every == 0) or last):
            self.write_preview(step)

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.raw_model.named_parameters()

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

    def write_preview(self, step: int) -> None:
        rows, s = self.preview, self.cfg.sampling
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
        save_sample_grid(self.out / SAMPLES_DIR / f"step_{step:09d}.png", rows["layout"], rows["style_images"], images)

    def release(self, step: int) -> None:
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
    pseudo_pairs: PseudoPairs | None = None,
) -> Path:
    """Train (or resume) a diffusion model on the labelled images of ``data``.

    One function on purpose: it builds ``training_data.json`` step by step, and every check
    (config, data files, memory) runs in this order before the run folder is written; split up,
    that order, which resume depends on, would be scattered.

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
        pseudo_pairs: pseudo-labelled image/layout pairs trained on beside ``train_ids`` (one
            dataset only); they share its style-reference pool, so the style encoder meets their
            styles too.

    Returns:
        The run folder; its ``pipeline/`` holds the released model.
    """
    roots = [Path(d).resolve() for d in ([data] if isinstance(data, (str, Path)) else data)]
    if not roots:
        raise ValueError("no dataset folder to train on")
    if len(set(roots)) != len(roots):
        raise ValueError(f"a dataset folder is listed twice: {[str(r) for r in roots]}")
    if len(roots) > 1 and (train_ids is not None or pseudo_pairs is not None):
        raise ValueError("train_ids and pseudo_pairs extend one dataset; they cannot be combined with several datasets")
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
    if pseudo_pairs is not None:
        training_data["pseudo_labelled"] = pseudo_pairs.record()
        refs = [*refs, *pseudo_pairs.refs]
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
    engine = Engine(out, engine_settings(cfg), cfg)  # first: the accelerator sets up the process state
    samples = TrainingSamples(data, refs, SampleSettings.of(cfg), text=text, extra=extra)
    samples.verify()  # a bad file fails now, naming it, before the run folder is touched
    if cfg.data.include_unlabeled:
        training_data["unlabeled_ids"] = samples.unlabeled_ids()
        if not training_data["unlabeled_ids"]:
            raise ConfigError(f"data.include_unlabeled is set but {[str(r / UNLABELED_DIR) for r in roots]} hold no images")
    training_data["data_sha256"] = data_hash(samples.datasets)
    # before the run folder is written: a run that cannot fit is refused with nothing left behind
    check_fits(memory_estimate(cfg, engine.accelerator.mixed_precision), engine.accelerator.device, out)
    if engine.is_main:
        prepare_run_folder(out, cfg, resume, train_keys(RESUMABLE_CHANGES), [RunRecord(
            TRAINING_DATA_JSON, training_data, {
                "train_ids": "the training samples differ from those of the run being resumed",
                "unlabeled_ids": "the unlabelled training images differ from those of the run being resumed",
                "pseudo_labelled": "the pseudo-labelled pairs differ from those of the run being resumed",
                "autoencoder.sha256": "the run being resumed was trained with another autoencoder (or none)",
                "data_sha256": "the training files differ in content from those of the run being resumed"}, added=("data_sha256",))])
    if vae is not None and cfg.data.cache_latents:
        samples.latent_cache = LatentCache(out / LATENT_CACHE_DIR, cfg.model.latent_factor, cfg.model.image_size)
        if engine.is_main:
            remove_stale_temporaries(out / LATENT_CACHE_DIR)
            samples.latent_cache.build(vae, samples.datasets, cfg.model.image_channels)
    engine.accelerator.wait_for_everyone()
    engine.run(DiffusionTask(engine, samples, cfg, vae), resume=resume, console=console)
    return out
