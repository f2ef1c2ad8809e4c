"""``train_seg``: a MONAI segmentation network on real data, optionally mixed with synthetic sets.

:class:`SegTask` is what this stage hands the training engine (:mod:`segsynth.engine`), which
owns the folder, the log, checkpoints, trackers, precision and resume. The run folder explains
itself (nnU-Net manners)::

    RUN/config.yaml        resolved SegTrainConfig
    RUN/split.json         data root, train/val/test ids and cases, synthetic sets used
    RUN/best/              model.json + model.safetensors of the best validation step
    RUN/checkpoints/       resumable state: model, optimizer, scheduler, RNGs, validation curve
    RUN/train_log.jsonl    one line per validation: step, loss, raw and smoothed val Dice, lr, examples
    RUN/training.json      the finished run: steps taken, best step, whether validation was still rising

The budget is ``train.steps`` optimiser steps of ``train.batch_size`` examples, whatever the mixing
strategy (see :mod:`segsynth.seg.mixing`), with validation every ``train.val_every`` steps, so runs
with and without synthetic data differ in what the batches hold and in nothing else.
Validation is drawn by case from the real training cases; it never holds a test case or a
synthetic image, and synthetic samples whose layout came from a validation or test image are
left out of training (see :mod:`segsynth.seg.training_data`). Every random draw
(data order, augmentation, merge grids) is seeded by ``(seed, stream position)`` and the RNGs are
checkpointed at every validation, so a resumed run on CPU equals an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from rich.console import Console
from torch.utils.data import DataLoader

from segsynth.artifacts.names import BEST_DIR, CONFIG_YAML, SPLIT_JSON, TRAINING_JSON
from segsynth.config import load_config
from segsynth.data.loader import SegDataset, sample_seed
from segsynth.fits import (
    DoesNotFitError,
    Estimate,
    check_fits,
    parameter_bytes,
    saved_activation_bytes,
    scale_to,
    training_estimate,
)
from segsynth.engine import DefaultHooks, Engine, EngineSettings, RunRecord, prepare_run_folder
from segsynth.io.atomic import atomic_write_json
from segsynth.io.lock import owns_folder
from segsynth.io.run_log import train_keys
from segsynth.renamed import former_out_config_order
from segsynth.seg.config import SegTrainConfig
from segsynth.seg.convergence import convergence, smoothed, validations_without_gain
from segsynth.seg.mixing import MixingStrategy, make_mixing, merge_cell_size, merge_grid, random_merge
from segsynth.seg.plan_dataset import PlanDataset
from segsynth.seg.loss import IgnoringDiceCELoss
from segsynth.seg.networks import build_network, predict_logits, save_network, size_divisor
# resolve_split and check_no_leakage are public here too, where they were defined before the move
from segsynth.seg.training_data import check_no_leakage, load_training_data, resolve_split, split_record  # noqa: F401

#: Settings a resumed run may change: how long it goes, not what a step computes.
RESUMABLE_CHANGES = {"steps", "patience", "num_workers", "log_with"}


def _resolve_config(run: Path, config: SegTrainConfig | str | Path | None, resume: bool) -> SegTrainConfig:
    saved = run / CONFIG_YAML
    if isinstance(config, SegTrainConfig):
        cfg = config
    elif config is not None:
        cfg = load_config(SegTrainConfig, config)
    elif resume and saved.is_file():
        cfg = load_config(SegTrainConfig, saved)
    else:
        cfg = SegTrainConfig()
    return cfg


def _lr_factor(cfg: SegTrainConfig):
    total = cfg.train.steps

    def factor(step: int) -> float:
        if cfg.optim.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))

    return factor


@torch.no_grad()
def validation_dice(
    model: torch.nn.Module, dataset: SegDataset, num_classes: int, divisor: int, patch_size: int | None
) -> float:
    """Mean foreground Dice over the validation images (empty-mask convention of
    :mod:`segsynth.seg.metrics`: both empty counts as 1)."""
    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
    was_training = model.training
    model.eval()
    for index in range(len(dataset)):
        image, mask = dataset.load_arrays(index)
        logits = predict_logits(model, torch.from_numpy(image.copy())[None], divisor, patch_size)
        pred = one_hot(logits.argmax(1, keepdim=True), num_classes)
        metric(pred, one_hot(torch.from_numpy(mask.copy())[None, None], num_classes))
    model.train(was_training)
    return float(metric.aggregate().item())


class SegTask(DefaultHooks):
    """One segmentation run: network, optimiser, schedule, mixing plan and validation (a
    :class:`~segsynth.engine.TrainTask`).

    Validation runs at every log point of the engine (``train.val_every`` steps and the last) on
    every process; the best network is written then. Process r of W takes rows ``r * b ... (r + 1) *
    b - 1`` of each global batch of ``W * b`` examples, and merge grids are drawn for the global
    batch, so W processes take the steps one process of batch ``W * b`` takes.

    Args:
        engine: the run's engine.
        cfg: the resolved config.
        sources: the real training set, then the synthetic sets (the mixing plan's source numbers).
        val: the validation images.
        mixing: the mixing strategy (:func:`segsynth.seg.mixing.make_mixing`).
    """

    def __init__(self, engine: Engine, cfg: SegTrainConfig, sources: Sequence[SegDataset], val: SegDataset,
                 mixing: MixingStrategy) -> None:
        self.cfg, self.out, self.sources, self.val, self.mixing = cfg, engine.out, sources, val, mixing
        self.accelerator = engine.accelerator
        real = sources[0]
        self.num_classes, self.channels, self.class_names = real.spec.num_classes, real.spec.channels, real.spec.class_names
        torch.manual_seed(cfg.train.seed)
        model = build_network(cfg.network, self.channels, self.num_classes)
        self.divisor = size_divisor(cfg.network)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))
        # DiceCELoss itself unless a batch holds ignored (unconfident pseudo-labelled) pixels
        self.loss_fn = IgnoringDiceCELoss(lambda_dice=cfg.loss.lambda_dice, lambda_ce=cfg.loss.lambda_ce)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)  # the scheduler steps once per step
        self.val_steps: list[int] = []
        self.curve: list[float] = []
        self.stopped_early = False
        self.chunk_plan: list = []  # the examples of the steps since the last validation

    @property
    def network(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.accelerator.num_processes

    @property
    def rows(self) -> slice:
        b, rank = self.cfg.train.batch_size, self.accelerator.process_index
        return slice(rank * b, (rank + 1) * b)

    def my_positions(self, start: int, n_steps: int) -> list[int]:
        """Stream positions of this process's examples over ``n_steps`` steps from stream position ``start``."""
        g, rows = self.global_batch, self.rows
        return [start + s * g + i for s in range(n_steps) for i in range(g)[rows]]

    def state_tree(self, step: int) -> dict[str, Any]:
        return {"model": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "val_steps": self.val_steps, "val_curve": self.curve}

    def load_state_tree(self, tree: dict[str, Any]) -> None:
        self.network.load_state_dict(tree["model"])
        self.optimizer.load_state_dict(tree["optimizer"])
        self.scheduler.load_state_dict(tree["scheduler"])
        self.val_steps, self.curve = list(tree["val_steps"]), list(tree["val_curve"])

    def batches(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        """The batches from ``step`` on, one validation interval at a time (each with its own plan)."""
        t = self.cfg.train
        while step < t.steps:
            n_steps = min(t.val_every - step % t.val_every, t.steps - step)
            start = step * self.global_batch
            self.chunk_plan = self.mixing.plan(start, n_steps * self.global_batch)
            positions = self.my_positions(start, n_steps)
            mine = [self.chunk_plan[p - start] for p in positions]
            chunk = PlanDataset(self.sources, mine, positions, self.mixing.paired, t.augment, t.patch_size, t.seed)
            yield from DataLoader(chunk, batch_size=t.batch_size, shuffle=False, num_workers=t.num_workers)
            step += n_steps

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        self.model.train()
        acc = self.accelerator
        image, mask = batch["image"].to(acc.device), batch["mask"].to(acc.device)
        with acc.autocast():
            if self.mixing.paired:
                logits = self.model(torch.cat([image, batch["partner_image"].to(acc.device)]))
                real_logits, syn_logits = logits.split(image.shape[0])
                mix = self.cfg.mix
                cell = merge_cell_size(image.shape[-2], mix.cell, mix.cell_reference_size)
                generator = torch.Generator().manual_seed(sample_seed(self.cfg.train.seed + 1, 0, step))
                # drawn for the global batch so every process count merges the same cells
                grid = merge_grid(self.global_batch, *image.shape[-2:], mix.alpha, cell, generator)[self.rows]
                logits, mask = random_merge(real_logits, syn_logits, mask, batch["partner_mask"].to(acc.device),
                                            grid.to(acc.device), batch["has_partner"].to(acc.device))
            else:
                logits = self.model(image)
            loss = self.loss_fn(logits.float(), mask[:, None])
        self.optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss}

    def log_fields(self, step: int) -> dict[str, Any]:
        """Validate, keep the best network, and report the interval's example counts."""
        t = self.cfg.train
        network = self.network
        dice = validation_dice(network, self.val, self.num_classes, self.divisor, t.patch_size)
        if self.accelerator.is_main_process and (not self.curve or dice > max(self.curve)):
            save_network(self.out / BEST_DIR, network, self.cfg.network, self.channels, self.class_names,
                         extra={"step": step, "val_dice": dice, "divisor": self.divisor, "patch_size": t.patch_size})
        self.val_steps.append(step)
        self.curve.append(dice)
        plan = self.chunk_plan
        n_syn = sum(1 for item, _ in plan if item[0] != 0)
        return {"val_dice": dice, "val_dice_smoothed": smoothed(self.curve, t.smoothing)[-1],
                "best_val_dice": max(self.curve), "lr": self.scheduler.get_last_lr()[0],
                "real_examples": len(plan) - n_syn, "synthetic_examples": n_syn,
                "paired_with_variant": sum(1 for _, partner in plan if partner is not None)}

    def should_stop(self) -> bool:
        t = self.cfg.train
        if t.patience is not None and validations_without_gain(self.curve, t.smoothing, t.min_delta) >= t.patience:
            self.stopped_early = True
        return self.stopped_early

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.network.named_parameters()

    def release(self, step: int) -> None:
        """Write ``training.json``: the steps taken, the budget, and where validation stood."""
        t = self.cfg.train
        atomic_write_json(self.out / TRAINING_JSON, {
            "steps": step, "planned_steps": t.steps, "batch_size": self.global_batch,
            "val_every": t.val_every, "examples_seen": step * self.global_batch,
            "processes": self.accelerator.num_processes, "stopped_early": self.stopped_early,
            **convergence(self.val_steps, self.curve, t.smoothing, t.min_delta),
        })


def engine_settings(cfg: SegTrainConfig) -> EngineSettings:
    """The engine's loop settings: a log line, a validation and a checkpoint every ``val_every`` steps."""
    t = cfg.train
    return EngineSettings(label="train-seg", steps=t.steps, log_every=t.val_every, checkpoint_every=t.val_every,
                          mixed_precision=t.mixed_precision, log_with=t.log_with,
                          shown=("loss", "val_dice", "best_val_dice"))


#: A batch may repeat a training example (augmented) a few times, as with one labelled case in the
#: low-label regime, but not without bound: every example of a step is loaded and augmented, so a
#: batch of 100000 from 4 images spends minutes per step loading copies before anything is shown.
MAX_COPIES_PER_BATCH = 32


def check_batch(cfg: SegTrainConfig, examples: int, data: Path) -> None:
    """Refuse a ``train.batch_size`` that would hold each training example more than
    :data:`MAX_COPIES_PER_BATCH` times (``examples``: what the mixing strategy draws from)."""
    limit = MAX_COPIES_PER_BATCH * examples
    if cfg.train.batch_size > limit:
        raise DoesNotFitError(
            f"{data}: train.batch_size {cfg.train.batch_size} would hold each of the {examples} training examples "
            f"about {cfg.train.batch_size // max(examples, 1)} times per step (every copy loaded and augmented); "
            f"use at most {limit} ({MAX_COPIES_PER_BATCH} copies of each)"
        )


def memory_estimate(cfg: SegTrainConfig, channels: int, num_classes: int, shape: tuple[int, int],
                    paired: bool, mixed_precision: str = "no") -> Estimate:
    """Peak memory of one training step: the network built and run on the ``meta`` device at the real
    batch and size (no memory is used), its saved activations counted (see :mod:`segsynth.fits`).

    Args:
        shape: ``(H, W)`` of a training example (the patch, or the largest image).
        paired: merge mixing runs the network on the real and the synthetic batch together.
        mixed_precision: the accelerator's (``no``, ``bf16``, ``fp16``).
    """
    b = cfg.train.batch_size * (2 if paired else 1)
    height, width = shape
    with torch.device("meta"):
        network = build_network(cfg.network, channels, num_classes)
        params = parameter_bytes(network)
        try:
            activations = saved_activation_bytes(lambda: network(torch.zeros(b, channels, height, width)),
                                                 list(network.parameters()))
        except (RuntimeError, NotImplementedError):  # an op without a meta kernel: probe small, scale up
            side = size_divisor(cfg.network) * math.ceil(32 / size_divisor(cfg.network))
            probe = build_network(cfg.network, channels, num_classes).to_empty(device="cpu")
            measured = saved_activation_bytes(lambda: probe(torch.zeros(1, channels, side, side, device="cpu")),
                                              list(probe.parameters()))
            activations = scale_to(measured, side * side, b * height * width)
    batch = b * height * width * (4 * channels + 8)  # float32 image, int64 mask
    return training_estimate(
        "train-seg", params, activations, batch, weight_copies=4, mixed_precision=mixed_precision,
        lower=f"train.batch_size ({cfg.train.batch_size}) or "
        + (f"train.patch_size ({cfg.train.patch_size})" if cfg.train.patch_size else f"set train.patch_size (images are {height}x{width})"),
    )


@former_out_config_order
@owns_folder("out")
def train_seg(
    data: str | Path,
    config: SegTrainConfig | str | Path | None = None,
    out: str | Path | None = None,
    synthetic: Sequence[str | Path] = (),
    train_ids: Sequence[str] | None = None,
    val_ids: Sequence[str] | None = None,
    resume: bool = False,
    console: Console | None = None,
    pseudo_labelled: Sequence[str | Path] = (),
) -> Path:
    """Train a segmentation network on ``data`` (plus ``synthetic`` sets) into the run folder ``out``.

    Args:
        data: real labelled dataset folder.
        config: a :class:`SegTrainConfig`, a YAML path, or None for defaults (on resume: the run's).
        out: run folder (must not hold a run unless ``resume``). The order ``(data, config, out)``
            is every stage's; the former ``(data, out, config)`` still works for one release, with
            a DeprecationWarning.
        synthetic: synthetic set folders (dataset format + ``manifest.jsonl``), mixed per ``config.mix``.
        train_ids: real training sample ids (default: a split of ``data`` by case).
        val_ids: validation ids (default: drawn by case from the training cases).
        resume: continue from the newest complete checkpoint.
        console: where progress goes (default: stderr).
        pseudo_labelled: pseudo-labelled sets of ``data``'s unlabelled images
            (:func:`segsynth.seg.pseudo.pseudo_label`), mixed in per ``config.mix`` (``ratio`` or
            ``concat``) like synthetic sets; their unconfident pixels do not train.

    Returns:
        The run folder.

    Raises:
        FileExistsError: ``out`` already holds a run and ``resume`` is False.
        ValueError / ConfigError / DatasetFormatError: bad config, split or data.
    """
    console = console or Console(stderr=True)
    run = Path(out)
    cfg = _resolve_config(run, config, resume)
    data = Path(data)
    training = load_training_data(data, cfg, synthetic, train_ids, val_ids, pseudo_labelled)
    real, extra_sets = training.real, training.extra_sets
    seed = cfg.train.seed
    mixing = make_mixing(cfg.mix, real, extra_sets, seed)
    record = split_record(training)
    paired = mixing.paired
    check_batch(cfg, len(real) if paired else sum(len(d) for d in [real, *(s.dataset for s in extra_sets)]), data)
    engine = Engine(run, engine_settings(cfg), cfg)  # before any other use of the process state
    p = cfg.train.patch_size
    shape = (p, p) if p is not None else max(
        (real.load_arrays(i)[0].shape[-2:] for i in range(len(real))), key=lambda hw: hw[0] * hw[1])
    check_fits(memory_estimate(cfg, real.spec.channels, real.spec.num_classes, shape, paired,
                               engine.accelerator.mixed_precision), engine.accelerator.device, run)
    if engine.is_main:
        prepare_run_folder(run, cfg, resume, train_keys(RESUMABLE_CHANGES), [RunRecord(
            SPLIT_JSON, record, problem="data, split or synthetic sets differ from the run being resumed",
            added=("data_sha256",))])
    engine.accelerator.wait_for_everyone()
    sources = [real, *(s.dataset for s in extra_sets)]
    engine.run(SegTask(engine, cfg, sources, training.val, mixing), resume=resume, console=console)
    return run
