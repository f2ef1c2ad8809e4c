"""Train a ControlNet on a frozen, user-supplied Stable Diffusion backbone (DiffBoost's setup); resumable.

The ControlNet starts as a copy of the backbone UNet's encoder (``ControlNetModel.from_unet``,
zero-initialised output convolutions, as in Zhang et al., 2023) and learns to steer the frozen
UNet with a hint made from the mask and the edge map (:mod:`segsynth.backbone.hint`); the
prompt is the dataset's ``dataset.json`` prompt, replaced by the empty prompt with probability
``data.prompt_drop``. VAE, UNet and text encoder never change. Training crops come from
:class:`segsynth.diffusion.train.TrainingSamples` (paired augmentation, random crop, edge map
after the augmentation; single-channel images repeated to RGB), in the data order of
:class:`~segsynth.diffusion.train.BatchPlan`, and every random draw of a step (VAE posterior
sample, noise, timesteps, prompt drops) comes from a generator seeded by the step, so a resumed
run replays exactly (bit for bit on the CPU).

Run folder::

    RUN/config.yaml            resolved BackboneTrainConfig
    RUN/backbone.json          backbone path, variant and sha256 of its safetensors
    RUN/training_data.json     data roots, train ids, prompts, classes, channels
    RUN/train_log.jsonl        one JSON object per log interval
    RUN/checkpoints/step_*/    resumable state (CheckpointManager): ControlNet, optimiser, LR schedule, RNG
    RUN/controlnet/            the trained ControlNetModel (save_pretrained, safetensors)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDPMScheduler
from diffusers.optimization import get_scheduler
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from segsynth.backbone.config import BackboneTrainConfig
from segsynth.backbone.hint import HINT_CHANNELS, make_hint
from segsynth.backbone.load import Backbone, BackboneError, load_backbone
from segsynth.backbone.prompts import encode_prompts
from segsynth.config import ConfigError, load_config, save_resolved_config
from segsynth.data.format import DatasetSpec, load_spec
from segsynth.data.loader import sample_seed
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.train import BatchPlan, TrainingSamples, select_refs
from segsynth.io.atomic import atomic_directory, atomic_write_json, remove_stale_temporaries
from segsynth.io.checkpoint import CheckpointManager, rng_state, set_rng_state
from segsynth.io.hashing import model_hash
from segsynth.io.run_log import check_resume, check_same_record, train_keys, truncate_log
from segsynth.io.lock import owns_folder
from segsynth.io.finite import check_losses, check_weights
from segsynth.progress import StepProgress
from segsynth.tracking import tracked

CONFIG_YAML = "config.yaml"
BACKBONE_JSON = "backbone.json"
TRAINING_DATA_JSON = "training_data.json"
TRAIN_LOG = "train_log.jsonl"
CONTROLNET_DIR = "controlnet"

#: ``train.*`` settings that may change when a run is resumed (how long, how visibly, how memory-hungry).
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers", "gradient_checkpointing",
                     "log_with"}
#: ControlNet's hint encoder widths (Zhang et al., 2023), made for a factor-8 VAE.
DEFAULT_HINT_WIDTHS = (16, 32, 96, 256)


def hint_widths(cfg: BackboneTrainConfig, vae_factor: int) -> tuple[int, ...]:
    """The ControlNet's ``conditioning_embedding_out_channels``: it must halve the hint to the latent grid."""
    levels = int(math.log2(vae_factor)) + 1
    widths = cfg.controlnet.conditioning_embedding_out_channels
    if widths is None:
        if levels > len(DEFAULT_HINT_WIDTHS):
            raise ConfigError(f"the backbone's VAE factor {vae_factor} needs controlnet.conditioning_embedding_out_channels "
                              f"with {levels} widths")
        return DEFAULT_HINT_WIDTHS[:levels]
    if len(widths) != levels:
        raise ConfigError(f"controlnet.conditioning_embedding_out_channels has {len(widths)} widths (downsampling "
                          f"{2 ** (len(widths) - 1)}x) but the backbone's VAE factor is {vae_factor}: give {levels} widths")
    return widths


def samples_config(cfg: BackboneTrainConfig, num_classes: int) -> DiffusionTrainConfig:
    """The settings :class:`TrainingSamples` reads, as a :class:`DiffusionTrainConfig`.

    Images are repeated to 3 channels (RGB), edge maps are on; the model section is otherwise a
    stub (TrainingSamples only reads its sizes), and style references, which it draws for every
    sample, come from the cheap ``augmented`` sampler (one reference) and are not used.
    """
    return DiffusionTrainConfig.model_validate({
        "model": {"image_size": cfg.data.image_size, "image_channels": 3, "num_classes": num_classes,
                  "block_out_channels": [8], "attention_levels": [True],
                  "style": {"encoder_channels": [8], "num_refs": 1},
                  "edge": True, "edge_sigma": cfg.data.edge_sigma},
        "data": {"augmentation": cfg.data.augmentation, "style_sampler": "augmented", "style_augment": False,
                 "edge_image_prob": cfg.data.edge_image_prob},
        "train": {"seed": cfg.train.seed, "warmup": 0},
    })


class HintSamples(Dataset):
    """``(epoch, index) -> {"image" (3, H, W) in [0, 1], "hint" (3, H, W), "source"}`` from :class:`TrainingSamples`.

    ``source`` is the number of the sample's dataset (it selects the prompt).
    """

    def __init__(self, samples: TrainingSamples, num_classes: int) -> None:
        self.samples, self.num_classes = samples, num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def verify(self) -> None:
        self.samples.verify()

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        sample = self.samples[key]
        source, _ = self.samples.locate(key[1])
        return {"image": sample["image"].float(), "hint": make_hint(sample["mask"], sample["edge"], self.num_classes),
                "source": source}


def fit_channels(specs: Sequence[DatasetSpec], roots: Sequence[Path]) -> None:
    """Stable Diffusion draws RGB: accept 1-channel (repeated) and 3-channel data only."""
    for spec, root in zip(specs, roots):
        if spec.channels not in (1, 3):
            raise ConfigError(f"{root / 'dataset.json'}: {spec.channels}-channel images; a Stable Diffusion backbone "
                              "draws RGB, so only 1-channel (repeated to RGB) or 3-channel data can be used")


def resolve_device_and_dtype(cfg: BackboneTrainConfig) -> tuple[torch.device, torch.dtype]:
    """The device (the GPU when there is one) and the dtype the frozen backbone is kept in."""
    cuda = torch.cuda.is_available()
    choice = cfg.train.mixed_precision
    if choice == "bf16" and not cuda:
        raise ConfigError("train.mixed_precision bf16 needs a CUDA device")
    bf16 = choice == "bf16" or (choice == "auto" and cuda)
    return torch.device("cuda" if cuda else "cpu"), (torch.bfloat16 if bf16 else torch.float32)


class ControlNetTrainer:
    """One run: frozen backbone, trained ControlNet, optimiser, data and checkpoints; see :func:`train_controlnet`."""

    def __init__(self, backbone: Backbone, cfg: BackboneTrainConfig, out: Path, samples: HintSamples,
                 prompts: Sequence[str]) -> None:
        self.cfg, self.out, self.samples = cfg, out, samples
        self.device, self.dtype = resolve_device_and_dtype(cfg)
        torch.manual_seed(cfg.train.seed)  # the hint encoder's initial weights
        self.controlnet = ControlNetModel.from_unet(
            backbone.unet, conditioning_embedding_out_channels=hint_widths(cfg, backbone.vae_factor))
        self.controlnet.to(device=self.device, dtype=torch.float32).train()
        self.backbone = backbone.to(self.device, self.dtype)
        if cfg.train.gradient_checkpointing:
            self.controlnet.enable_gradient_checkpointing()
            self.backbone.unet.enable_gradient_checkpointing()
        # Every prompt once, plus the empty prompt (the dropped one), as the frozen encoder makes them.
        embeds = encode_prompts(backbone, [*prompts, ""], self.device)
        self.prompt_embeds, self.empty_embeds = embeds[:-1], embeds[-1:]
        self.noise_scheduler = DDPMScheduler.from_config(backbone.scheduler_config)
        self.optimizer = torch.optim.AdamW(self.controlnet.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay)
        self.lr_scheduler = get_scheduler(
            "constant_with_warmup" if cfg.train.lr_schedule == "constant" else "cosine",
            self.optimizer, num_warmup_steps=cfg.train.warmup, num_training_steps=cfg.train.steps,
        )
        self.checkpoints = CheckpointManager(out, keep=cfg.train.keep_checkpoints)
        self.step, self.position = 0, 0  # optimiser steps done, samples consumed

    @property
    def epoch(self) -> int:
        return self.position // len(self.samples)

    def state_tree(self) -> dict[str, Any]:
        return {"controlnet": self.controlnet.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(), "rng": rng_state(),
                "step": self.step, "samples": self.position}

    def load_state_tree(self, tree: dict[str, Any]) -> None:
        self.controlnet.load_state_dict(tree["controlnet"])
        self.optimizer.load_state_dict(tree["optimizer"])
        self.lr_scheduler.load_state_dict(tree["lr_scheduler"])
        set_rng_state(tree["rng"])
        self.step, self.position = int(tree["step"]), int(tree["samples"])

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.cfg.train
        plan = BatchPlan(len(self.samples), cfg.batch_size, cfg.seed, self.position, cfg.steps - self.step)
        loader = DataLoader(self.samples, batch_sampler=plan, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed), pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """The denoising loss of the frozen UNet steered by the ControlNet (epsilon or v target, as the backbone)."""
        vae, unet, scheduler = self.backbone.vae, self.backbone.unet, self.noise_scheduler
        with torch.no_grad():
            posterior = vae.encode(batch["image"].to(self.dtype) * 2 - 1).latent_dist
            latents = posterior.sample(generator=generator).float()
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            latents = (latents - shift) * vae.config.scaling_factor
        size = len(latents)
        noise = torch.randn(latents.shape, generator=generator, device=self.device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (size,), generator=generator, device=self.device)
        dropped = torch.rand(size, generator=generator, device=self.device) < self.cfg.data.prompt_drop
        embeds = torch.where(dropped[:, None, None], self.empty_embeds, self.prompt_embeds[batch["source"]])
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "epsilon":
            target = noise
        elif scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise BackboneError(f"prediction_type {scheduler.config.prediction_type!r} of the backbone's scheduler "
                                "is not supported (epsilon or v_prediction)")
        with self.autocast():
            down, mid = self.controlnet(noisy, timesteps, encoder_hidden_states=embeds, controlnet_cond=batch["hint"],
                                        return_dict=False)
            pred = unet(noisy.to(self.dtype), timesteps, encoder_hidden_states=embeds.to(self.dtype),
                        down_block_additional_residuals=[d.to(self.dtype) for d in down],
                        mid_block_additional_residual=mid.to(self.dtype)).sample
        return F.mse_loss(pred.float(), target.float())

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        generator = torch.Generator(device=self.device).manual_seed(sample_seed(self.cfg.train.seed + 2, self.step, 0))
        loss = self.loss(batch, generator)
        check_losses({"loss": loss}, self.step + 1, "train-diffusion --backbone")
        loss.backward()
        logged = {"loss": float(loss.detach())}
        if self.cfg.train.grad_clip is not None:
            logged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.controlnet.parameters(), self.cfg.train.grad_clip))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.position += self.cfg.train.batch_size
        return logged

    def release(self) -> None:
        """Write ``RUN/controlnet`` (safetensors + config.json), atomically."""
        with atomic_directory(self.out / CONTROLNET_DIR, overwrite=True) as tmp:
            self.controlnet.save_pretrained(tmp, safe_serialization=True)


def prepare_backbone_run(out: Path, cfg: BackboneTrainConfig, resume: bool, training_data: dict[str, Any],
                         backbone_info: dict[str, Any]) -> None:
    """Create the run folder, or check that a resumed run trains on the same data and backbone."""
    config_path, data_path, backbone_path = out / CONFIG_YAML, out / TRAINING_DATA_JSON, out / BACKBONE_JSON
    check_resume(config_path, cfg, resume, train_keys(RESUMABLE_CHANGES))
    if resume:
        check_same_record(data_path, "train_ids", training_data["train_ids"],
                          "the training samples differ from those of the run being resumed")
        check_same_record(backbone_path, "sha256", backbone_info["sha256"],
                          "the run being resumed was trained on another backbone")
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, config_path)
    atomic_write_json(data_path, training_data)
    atomic_write_json(backbone_path, backbone_info)


@owns_folder("out")
def train_controlnet(
    data: str | Path | Sequence[str | Path],
    backbone: str | Path,
    config: BackboneTrainConfig | str | Path | None,
    out: str | Path,
    resume: bool = False,
    train_ids: Sequence[str] | None = None,
    console: Console | None = None,
) -> Path:
    """Train (or resume) a ControlNet on the frozen Stable Diffusion folder ``backbone``.

    Args:
        data: dataset folder, or several (each sample gets its own dataset's prompt).
        backbone: local diffusers Stable Diffusion folder (:mod:`segsynth.backbone.load`); never downloaded.
        config: a :class:`BackboneTrainConfig`, a YAML path, or None for the defaults.
        out: run folder (see the module docstring).
        resume: continue from the newest complete checkpoint in ``out``.
        train_ids: restrict training to these sample ids of ``data`` (one dataset only).
        console: rich console for a progress bar; None trains quietly.

    Returns:
        The run folder; ``RUN/controlnet`` holds the trained ControlNet.
    """
    roots = [Path(d).resolve() for d in ([data] if isinstance(data, (str, Path)) else data)]
    if not roots or len(set(roots)) != len(roots):
        raise ValueError(f"need one or more distinct dataset folders, got {[str(r) for r in roots]}")
    if len(roots) > 1 and train_ids is not None:
        raise ValueError("train_ids select samples of one dataset; they cannot be combined with several datasets")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("train-diffusion --backbone runs as a single process; start it without accelerate launch/torchrun")
    out = Path(out)
    if (out / CONFIG_YAML).exists() and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    cfg = config if isinstance(config, BackboneTrainConfig) else load_config(BackboneTrainConfig, config)
    specs = [load_spec(root) for root in roots]
    fit_channels(specs, roots)
    num_classes = max(spec.num_classes for spec in specs)
    resolve_device_and_dtype(cfg)  # a bad mixed_precision fails before the backbone loads
    refs = select_refs(roots[0], specs[0], train_ids)
    extra = [(root, select_refs(root, spec, None)) for root, spec in zip(roots[1:], specs[1:])]

    loaded = load_backbone(backbone, cfg.backbone.variant)
    if cfg.data.image_size % loaded.size_multiple:
        raise ConfigError(f"data.image_size {cfg.data.image_size} is not divisible by {loaded.size_multiple} "
                          f"(the backbone's VAE factor {loaded.vae_factor} times its UNet's downsampling)")
    hint_widths(cfg, loaded.vae_factor)
    samples = HintSamples(TrainingSamples(roots[0], refs, samples_config(cfg, num_classes), extra=extra), num_classes)
    samples.verify()  # a bad file fails now, naming it, before the run folder is touched
    prompts = [spec.prompt for spec in specs]
    training_data = {"data_root": str(roots[0]), "train_ids": [ref.id for ref in refs], "prompts": prompts,
                     "num_classes": num_classes, "channels": max(spec.channels for spec in specs),
                     "hint": list(HINT_CHANNELS)}
    if extra:
        training_data["datasets"] = [{"data_root": str(root), "train_ids": [r.id for r in rf], "prompt": spec.prompt}
                                     for (root, rf), spec in zip([(roots[0], refs), *extra], specs)]
    backbone_info = {"path": str(loaded.path), "sha256": model_hash(loaded.path), "variant": cfg.backbone.variant}
    prepare_backbone_run(out, cfg, resume, training_data, backbone_info)

    trainer = ControlNetTrainer(loaded, cfg, out, samples, prompts)
    latest = trainer.checkpoints.latest() if resume else None
    if latest is not None:
        trainer.load_state_tree(latest[1])
    if resume:
        truncate_log(out / TRAIN_LOG, trainer.step)
        remove_stale_temporaries(out, out / "checkpoints")
    _run(trainer, console)
    return out


def _run(trainer: ControlNetTrainer, console: Console | None) -> None:
    cfg = trainer.cfg.train
    window: dict[str, float] = {}
    count, tick = 0, time.perf_counter()
    with (StepProgress("train-diffusion --backbone", cfg.steps, console, trainer.step) as progress,
          tracked(cfg.log_with, trainer.out, trainer.cfg) as track):
        for batch in trainer.batches():
            for name, value in trainer.train_step(batch).items():
                window[name] = window.get(name, 0.0) + value
            count += 1
            step, last = trainer.step, trainer.step == cfg.steps
            if step % cfg.log_every == 0 or last:
                elapsed = time.perf_counter() - tick
                record = {"step": step, "epoch": trainer.epoch, "lr": trainer.lr_scheduler.get_last_lr()[0],
                          **{name: total / count for name, total in window.items()},
                          "it_per_s": count / elapsed if elapsed > 0 else None}
                with (trainer.out / TRAIN_LOG).open("a", encoding="utf-8") as log:
                    log.write(json.dumps(record) + "\n")
                track(record)
                progress.update(step, loss=record["loss"])
                window, count, tick = {}, 0, time.perf_counter()
            progress.update(step)
            if step % cfg.checkpoint_every == 0 or last:
                check_weights(trainer.controlnet.named_parameters(), step, "train-diffusion --backbone")
                trainer.checkpoints.save(step, trainer.state_tree())
        trainer.release()

