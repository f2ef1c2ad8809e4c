"""Train a ControlNet on a frozen, user-supplied Stable Diffusion backbone (DiffBoost's setup); resumable.

The ControlNet starts as a copy of the backbone UNet's encoder (``ControlNetModel.from_unet``,
zero-initialised output convolutions, as in Zhang et al., 2023) and learns to steer the frozen
UNet with a hint made from the mask and the edge map (:mod:`segsynth.controlnet.hint`); the
prompt is the dataset's ``dataset.json`` prompt, replaced by the empty prompt with probability
``data.prompt_drop``. VAE, UNet and text encoder never change. Training crops come from
:class:`segsynth.diffusion.samples.TrainingSamples` (paired augmentation, random crop, edge map
after the augmentation; single-channel images repeated to RGB; no style references), in the data
order of :class:`~segsynth.diffusion.samples.BatchPlan`, and every random draw of a step (VAE
posterior sample, noise, timesteps, prompt drops) comes from a generator seeded by the step, so a
resumed run replays exactly (bit for bit on the CPU). :class:`ControlNetTask` is what this stage
hands the training engine (:mod:`segsynth.engine`), which owns the run folder, the log,
checkpoints, precision and resume.

Run folder::

    RUN/config.yaml            resolved ControlNetTrainConfig
    RUN/backbone.json          backbone path, variant and sha256 of its safetensors
    RUN/training_data.json     data roots, train ids, prompts, classes, channels
    RUN/train_log.jsonl        one JSON object per log interval
    RUN/checkpoints/step_*/    resumable state: ControlNet, optimiser, LR schedule, RNG
    RUN/controlnet/            the trained ControlNetModel (save_pretrained, safetensors)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDPMScheduler
from diffusers.optimization import get_scheduler
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from segsynth.artifacts.names import BACKBONE_JSON, CONFIG_YAML, CONTROLNET_DIR, DATASET_JSON, TRAINING_DATA_JSON
from segsynth.controlnet.config import ControlNetTrainConfig
from segsynth.controlnet.hint import HINT_CHANNELS, make_hint
from segsynth.controlnet.load import Backbone, load_backbone
from segsynth.controlnet.prompts import encode_backbone_prompts
from segsynth.config import ConfigError, load_config
from segsynth.data.format import DatasetSpec, load_spec
from segsynth.data.loader import sample_seed
from segsynth.device import resolve_mixed_precision
from segsynth.diffusion.objective import prediction_target
from segsynth.diffusion.samples import BatchPlan, SampleSettings, TrainingSamples, select_refs
from segsynth.engine import DefaultHooks, Engine, EngineSettings, RunRecord, prepare_run_folder
from segsynth.io.atomic import atomic_directory
from segsynth.io.hashing import data_hash, model_hash
from segsynth.io.lock import owns_folder
from segsynth.io.run_log import check_resume, train_keys

#: ``train.*`` settings that may change when a run is resumed (how long, how visibly, how memory-hungry).
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers", "gradient_checkpointing",
                     "log_with"}
#: ControlNet's hint encoder widths (Zhang et al., 2023), made for a factor-8 VAE.
DEFAULT_HINT_WIDTHS = (16, 32, 96, 256)


def hint_widths(cfg: ControlNetTrainConfig, vae_factor: int) -> tuple[int, ...]:
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


def sample_settings(cfg: ControlNetTrainConfig) -> SampleSettings:
    """The crops a ControlNet trains on: RGB (single-channel images repeated), with the edge map, no
    style references."""
    return SampleSettings(image_size=cfg.data.image_size, channels=3, augmentation=cfg.data.augmentation,
                          seed=cfg.train.seed, edge=True, edge_sigma=cfg.data.edge_sigma,
                          edge_image_prob=cfg.data.edge_image_prob)


def engine_settings(cfg: ControlNetTrainConfig) -> EngineSettings:
    """The engine's loop settings from the ``train`` section."""
    t = cfg.train
    return EngineSettings(label="train-diffusion --backbone", steps=t.steps, log_every=t.log_every,
                          checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints,
                          # auto stays fp32 on a CPU: bf16 would also store the frozen backbone in bf16
                          mixed_precision=resolve_mixed_precision(t.mixed_precision, cpu_bf16=False),
                          log_with=t.log_with)


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
            raise ConfigError(f"{root / DATASET_JSON}: {spec.channels}-channel images; a Stable Diffusion backbone "
                              "draws RGB, so only 1-channel (repeated to RGB) or 3-channel data can be used")


class ControlNetTask(DefaultHooks):
    """One run: frozen backbone, trained ControlNet, optimiser and data (a :class:`~segsynth.engine.TrainTask`;
    it draws no previews while it trains: ``segsynth generate`` does).

    The frozen backbone is kept in bf16 when the engine trains in bf16 (the ControlNet itself stays
    fp32 under autocast), else in fp32.
    """

    def __init__(self, engine: Engine, backbone: Backbone, cfg: ControlNetTrainConfig, samples: HintSamples,
                 prompts: Sequence[str]) -> None:
        self.cfg, self.out, self.samples = cfg, engine.out, samples
        self.accelerator = engine.accelerator
        self.device = self.accelerator.device
        self.dtype = torch.bfloat16 if self.accelerator.mixed_precision == "bf16" else torch.float32
        torch.manual_seed(cfg.train.seed)  # the hint encoder's initial weights
        controlnet = ControlNetModel.from_unet(
            backbone.unet, conditioning_embedding_out_channels=hint_widths(cfg, backbone.vae_factor))
        controlnet.to(dtype=torch.float32).train()
        self.backbone = backbone.to(self.device, self.dtype)
        if cfg.train.gradient_checkpointing:
            controlnet.enable_gradient_checkpointing()
            self.backbone.unet.enable_gradient_checkpointing()
        # Every prompt once, plus the empty prompt (the dropped one), as the frozen encoder makes them.
        embeds = encode_backbone_prompts(backbone, [*prompts, ""], self.device)
        self.prompt_embeds, self.empty_embeds = embeds[:-1], embeds[-1:]
        self.noise_scheduler = DDPMScheduler.from_config(backbone.scheduler_config)
        optimizer = torch.optim.AdamW(controlnet.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.lr_scheduler = get_scheduler(
            "constant_with_warmup" if cfg.train.lr_schedule == "constant" else "cosine",
            optimizer, num_warmup_steps=cfg.train.warmup, num_training_steps=cfg.train.steps,
        )
        self.controlnet, self.optimizer = self.accelerator.prepare(controlnet, optimizer)

    @property
    def raw_controlnet(self) -> ControlNetModel:
        return self.accelerator.unwrap_model(self.controlnet)

    def state_tree(self, step: int) -> dict[str, Any]:
        return {"controlnet": self.raw_controlnet.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict()}

    def load_state_tree(self, tree: dict[str, Any]) -> None:
        self.raw_controlnet.load_state_dict(tree["controlnet"])
        self.optimizer.load_state_dict(tree["optimizer"])
        self.lr_scheduler.load_state_dict(tree["lr_scheduler"])

    def batches(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.cfg.train
        plan = BatchPlan(len(self.samples), cfg.batch_size, cfg.seed, step * cfg.batch_size, cfg.steps - step)
        loader = DataLoader(self.samples, batch_sampler=plan, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed), pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

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
        target = prediction_target(scheduler, latents, noise, timesteps)
        with self.accelerator.autocast():
            down, mid = self.controlnet(noisy, timesteps, encoder_hidden_states=embeds, controlnet_cond=batch["hint"],
                                        return_dict=False)
            pred = unet(noisy.to(self.dtype), timesteps, encoder_hidden_states=embeds.to(self.dtype),
                        down_block_additional_residuals=[d.to(self.dtype) for d in down],
                        mid_block_additional_residual=mid.to(self.dtype)).sample
        return F.mse_loss(pred.float(), target.float())

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator(device=self.device).manual_seed(sample_seed(self.cfg.train.seed + 2, step, 0))
        loss = self.loss(batch, generator)
        self.accelerator.backward(loss)
        logged = {"loss": loss.detach()}
        if self.cfg.train.grad_clip is not None:
            logged["grad_norm"] = torch.as_tensor(
                self.accelerator.clip_grad_norm_(self.controlnet.parameters(), self.cfg.train.grad_clip))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logged

    def log_fields(self, step: int) -> dict[str, Any]:
        return {"epoch": step * self.cfg.train.batch_size // len(self.samples), "lr": self.lr_scheduler.get_last_lr()[0]}

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.raw_controlnet.named_parameters()

    def release(self, step: int) -> None:
        """Write ``RUN/controlnet`` (safetensors + config.json), atomically."""
        with atomic_directory(self.out / CONTROLNET_DIR, overwrite=True) as tmp:
            self.raw_controlnet.save_pretrained(tmp, safe_serialization=True)


@owns_folder("out")
def train_controlnet(
    data: str | Path | Sequence[str | Path],
    backbone: str | Path,
    config: ControlNetTrainConfig | str | Path | None,
    out: str | Path,
    resume: bool = False,
    train_ids: Sequence[str] | None = None,
    console: Console | None = None,
) -> Path:
    """Train (or resume) a ControlNet on the frozen Stable Diffusion folder ``backbone``.

    Args:
        data: dataset folder, or several (each sample gets its own dataset's prompt).
        backbone: local diffusers Stable Diffusion folder (:mod:`segsynth.controlnet.load`); never downloaded.
        config: a :class:`ControlNetTrainConfig`, a YAML path, or None for the defaults.
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
    cfg = config if isinstance(config, ControlNetTrainConfig) else load_config(ControlNetTrainConfig, config)
    # The same check prepare_run_folder makes, done first so a used folder fails before the backbone loads.
    check_resume(out / CONFIG_YAML, cfg, resume, train_keys(RESUMABLE_CHANGES))
    specs = [load_spec(root) for root in roots]
    fit_channels(specs, roots)
    num_classes = max(spec.num_classes for spec in specs)
    resolve_mixed_precision(cfg.train.mixed_precision)  # a bad choice fails before the backbone loads
    refs = select_refs(roots[0], specs[0], train_ids)
    extra = [(root, select_refs(root, spec, None)) for root, spec in zip(roots[1:], specs[1:])]

    loaded = load_backbone(backbone, cfg.backbone.variant)
    if cfg.data.image_size % loaded.size_multiple:
        raise ConfigError(f"data.image_size {cfg.data.image_size} is not divisible by {loaded.size_multiple} "
                          f"(the backbone's VAE factor {loaded.vae_factor} times its UNet's downsampling)")
    hint_widths(cfg, loaded.vae_factor)
    samples = HintSamples(TrainingSamples(roots[0], refs, sample_settings(cfg), extra=extra), num_classes)
    samples.verify()  # a bad file fails now, naming it, before the run folder is touched
    prompts = [spec.prompt for spec in specs]
    training_data = {"data_root": str(roots[0]), "train_ids": [ref.id for ref in refs], "prompts": prompts,
                     "num_classes": num_classes, "channels": max(spec.channels for spec in specs),
                     "hint": list(HINT_CHANNELS), "data_sha256": data_hash(samples.samples.datasets)}
    if extra:
        training_data["datasets"] = [{"data_root": str(root), "train_ids": [r.id for r in rf], "prompt": spec.prompt}
                                     for (root, rf), spec in zip([(roots[0], refs), *extra], specs)]
    backbone_info = {"path": str(loaded.path), "sha256": model_hash(loaded.path), "variant": cfg.backbone.variant}
    engine = Engine(out, engine_settings(cfg), cfg)
    prepare_run_folder(out, cfg, resume, train_keys(RESUMABLE_CHANGES), [
        RunRecord(TRAINING_DATA_JSON, training_data,
                  {"train_ids": "the training samples differ from those of the run being resumed",
                   "data_sha256": "the training files differ in content from those of the run being resumed"}, added=("data_sha256",)),
        RunRecord(BACKBONE_JSON, backbone_info, {"sha256": "the run being resumed was trained on another backbone"}),
    ])
    engine.run(ControlNetTask(engine, loaded, cfg, samples, prompts), resume=resume, console=console)
    return out
