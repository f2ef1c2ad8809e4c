"""``train_seg``: a MONAI segmentation network on real data, optionally mixed with synthetic sets.

The run folder explains itself (nnU-Net manners)::

    RUN/config.yaml        resolved SegTrainConfig
    RUN/split.json         data root, train/val/test ids and cases, synthetic sets used
    RUN/best/              model.json + model.safetensors of the best validation step
    RUN/checkpoints/       resumable state (CheckpointManager: model, optimizer, scheduler, RNGs, curve)
    RUN/train_log.jsonl    one line per validation: step, loss, raw and smoothed val Dice, lr, examples
    RUN/training.json      the finished run: steps taken, best step, whether validation was still rising

The budget is ``train.steps`` optimiser steps of ``train.batch_size`` examples, whatever the mixing
strategy (see :mod:`segsynth.seg.mixing`), with validation every ``train.val_every`` steps, so runs
with and without synthetic data differ in what the batches hold and in nothing else.
Validation is drawn by case from the real training cases; it never holds a test case or a
synthetic image, and synthetic samples whose layout came from a validation or test image are
left out of training (see :func:`resolve_split` and :func:`check_no_leakage`). Every random draw
(data order, augmentation, merge grids) is seeded by ``(seed, stream position)`` and the RNGs are
checkpointed at every validation, so a resumed run on CPU equals an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from rich.console import Console
from torch.utils.data import DataLoader

from segsynth.config import load_config, save_resolved_config
from segsynth.data.format import DatasetFormatError
from segsynth.data.loader import SampleRef, SegDataset, index_dataset, sample_seed
from segsynth.device import make_accelerator
from segsynth.io.atomic import atomic_write_json, remove_stale_temporaries
from segsynth.io.checkpoint import CheckpointManager, rng_state, set_rng_state
from segsynth.io.finite import check_losses
from segsynth.io.lock import owns_folder
from segsynth.io.run_log import append_log_line, check_resume, train_keys, truncate_log
from segsynth.progress import StepProgress
from segsynth.tracking import tracked
from segsynth.seg.config import SegTrainConfig
from segsynth.seg.convergence import convergence, smoothed, validations_without_gain
from segsynth.seg.mixing import (
    PlanDataset,
    SyntheticSet,
    load_synthetic_set,
    make_mixing,
    merge_cell_size,
    merge_grid,
    random_merge,
)
from segsynth.seg.networks import build_network, predict_logits, save_network, size_divisor
from segsynth.seg.splits import Split, hold_out_cases, ids_of_cases, low_label_cases, make_split

CONFIG_YAML = "config.yaml"
SPLIT_JSON = "split.json"
TRAIN_LOG = "train_log.jsonl"
TRAINING_JSON = "training.json"
BEST_DIR = "best"


def resolve_split(
    refs: Sequence[SampleRef],
    cfg: SegTrainConfig,
    train_ids: Sequence[str] | None = None,
    val_ids: Sequence[str] | None = None,
) -> Split:
    """Train/validation/test split of the real labelled samples, always by case.

    * no ids: ``split.test_fraction`` of the cases become test, an optional ``split.low_label``
      subset of the rest is kept, and ``split.val_fraction`` of that becomes validation (cases
      dropped by ``low_label`` are used nowhere);
    * ``train_ids`` only: validation cases are drawn from the cases of ``train_ids``; test is every
      sample of a case that is neither train nor validation;
    * ``val_ids`` too: used as given (their cases must not meet the training cases).

    Raises:
        ValueError: unknown ids, a case on two sides, or too few cases for a validation split.
    """
    seed = cfg.split.seed
    all_cases = sorted({r.case_id for r in refs})
    if train_ids is None and val_ids is None:
        pool, test_cases = all_cases, []
        if cfg.split.test_fraction > 0:
            pool, test_cases = hold_out_cases(all_cases, cfg.split.test_fraction, seed, what="test")
        if cfg.split.low_label is not None:
            pool = low_label_cases(pool, cfg.split.low_label, seed + 2)
        train_cases, val_cases = hold_out_cases(pool, cfg.split.val_fraction, seed + 1, what="validation")
        return make_split(
            refs, ids_of_cases(refs, train_cases), ids_of_cases(refs, val_cases), ids_of_cases(refs, test_cases)
        )
    case_of = {r.id: r.case_id for r in refs}
    if val_ids is None:
        unknown = [i for i in train_ids or () if i not in case_of]
        if unknown:
            raise ValueError(f"train: unknown sample ids {unknown[:5]}")
        pool = sorted({case_of[i] for i in train_ids or ()})
        kept, val_cases = hold_out_cases(pool, cfg.split.val_fraction, seed + 1, what="validation")
        train = sorted(i for i in train_ids or () if case_of[i] in set(kept))
        val = ids_of_cases(refs, val_cases)
    else:
        val = sorted(val_ids)
        unknown = [i for i in val if i not in case_of]
        if unknown:
            raise ValueError(f"validation: unknown sample ids {unknown[:5]}")
        val_cases = {case_of[i] for i in val}
        train = sorted(train_ids) if train_ids is not None else sorted(i for i in case_of if case_of[i] not in val_cases)
    used = {case_of[i] for i in [*train, *val] if i in case_of}
    test = sorted(i for i, c in case_of.items() if c not in used)
    return make_split(refs, train, val, test)


def check_no_leakage(split: Split, refs: Sequence[SampleRef], synthetic: Sequence[SyntheticSet]) -> None:
    """Refuse a run whose validation could see a test case or a synthetic image.

    Raises:
        ValueError: a validation case that is also a test case, or a synthetic set that contains a
            validation or test image file, or a synthetic sample made from a held-out layout.
    """
    shared = set(split.val_cases) & set(split.test_cases)
    if shared:
        raise ValueError(f"validation and test share cases {sorted(shared)[:5]}")
    by_id = {r.id: r for r in refs}
    held_out = {by_id[i].image_path.resolve() for i in [*split.val_ids, *split.test_ids]}
    held_ids = set(split.val_ids) | set(split.test_ids)
    for s in synthetic:
        paths = {r.image_path.resolve() for r in s.dataset.refs}
        if paths & held_out:
            example = sorted(paths & held_out)[0]
            raise ValueError(f"{s.root}: synthetic set contains real validation/test image {example}")
        leaked = [r.id for r, lid in zip(s.dataset.refs, s.layout_ids, strict=True) if lid in held_ids]
        if leaked:
            raise ValueError(f"{s.root}: samples {leaked[:5]} use validation/test layouts")


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
    check_resume(saved, cfg, resume, train_keys(RESUMABLE_CHANGES))
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


@dataclass
class _Loop:
    """What one optimiser step needs: the prepared model and optimiser, the loss, and where this
    process's rows sit in each global batch (``rows`` of ``batch * world``)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: DiceCELoss
    accelerator: Accelerator
    cfg: SegTrainConfig
    paired: bool

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.accelerator.num_processes

    @property
    def rows(self) -> slice:
        b = self.cfg.train.batch_size
        return slice(self.accelerator.process_index * b, (self.accelerator.process_index + 1) * b)

    def my_positions(self, start: int, n_steps: int) -> list[int]:
        """Stream positions of this process's examples over ``n_steps`` steps from ``start``."""
        g, rows = self.global_batch, self.rows
        return [start + s * g + i for s in range(n_steps) for i in range(g)[rows]]

    def train_steps(self, loader: DataLoader, first_step: int) -> tuple[float, int]:
        """One optimiser step per batch of ``loader``; returns ``(mean loss over processes, steps)``."""
        self.model.train()
        device = self.accelerator.device
        total, steps = 0.0, 0
        for batch in loader:
            image, mask = batch["image"].to(device), batch["mask"].to(device)
            with self.accelerator.autocast():
                if self.paired:
                    logits = self.model(torch.cat([image, batch["partner_image"].to(device)]))
                    real_logits, syn_logits = logits.split(image.shape[0])
                    mix = self.cfg.mix
                    cell = merge_cell_size(image.shape[-2], mix.cell, mix.cell_reference_size)
                    generator = torch.Generator().manual_seed(sample_seed(self.cfg.train.seed + 1, 0, first_step + steps))
                    # drawn for the global batch so every process count merges the same cells
                    grid = merge_grid(self.global_batch, *image.shape[-2:], mix.alpha, cell, generator)[self.rows]
                    logits, mask = random_merge(real_logits, syn_logits, mask, batch["partner_mask"].to(device),
                                                grid.to(device), batch["has_partner"].to(device))
                else:
                    logits = self.model(image)
                loss = self.loss_fn(logits.float(), mask[:, None])
            mean_loss = float(self.accelerator.reduce(loss.detach().reshape(1), "mean"))
            check_losses({"loss": mean_loss}, first_step + steps + 1, "train-seg")  # reduced: every process stops
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.scheduler.step()
            total += mean_loss
            steps += 1
        return total / max(1, steps), steps


def _check_sizes(real: SegDataset, synthetic: Sequence[SyntheticSet], patch_size: int | None) -> None:
    """Without ``patch_size`` a batch stacks whole images: refuse a synthetic set of another size
    up front instead of failing at the first mixed batch."""
    if patch_size is not None or not synthetic or not len(real):
        return
    shape = real.load_arrays(0)[0].shape
    for s in synthetic:
        other = s.dataset.load_arrays(0)[0].shape
        if other != shape:
            raise DatasetFormatError(
                f"{s.dataset.refs[0].image_path}: shape {other} differs from the real training images {shape}; "
                "generate the set at the real image size or set train.patch_size"
            )


@owns_folder("out")
def train_seg(
    data: str | Path,
    out: str | Path,
    config: SegTrainConfig | str | Path | None = None,
    synthetic: Sequence[str | Path] = (),
    train_ids: Sequence[str] | None = None,
    val_ids: Sequence[str] | None = None,
    resume: bool = False,
    console: Console | None = None,
) -> Path:
    """Train a segmentation network on ``data`` (plus ``synthetic`` sets) into the run folder ``out``.

    Args:
        data: real labelled dataset folder.
        out: run folder (must not hold a run unless ``resume``).
        config: a :class:`SegTrainConfig`, a YAML path, or None for defaults (on resume: the run's).
        synthetic: synthetic set folders (dataset format + ``manifest.jsonl``), mixed per ``config.mix``.
        train_ids: real training sample ids (default: a split of ``data`` by case).
        val_ids: validation ids (default: drawn by case from the training cases).
        resume: continue from the newest complete checkpoint.
        console: where progress goes (default: stderr).

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
    refs = index_dataset(data)
    if not refs:
        raise ValueError(f"{data}: no labelled image/mask pairs")
    SegDataset(data, refs=refs).verify()  # every labelled file, before anything is written
    try:
        split = resolve_split(refs, cfg, train_ids, val_ids)
    except ValueError as exc:
        raise ValueError(f"{data / 'dataset.json'}: {exc}") from None
    by_id = {r.id: r for r in refs}
    real = SegDataset(data, refs=[by_id[i] for i in split.train_ids])
    val = SegDataset(data, refs=[by_id[i] for i in split.val_ids])
    held = set(split.val_ids) | set(split.test_ids)
    loaded = [load_synthetic_set(root, real, layouts_independent=cfg.mix.layouts_independent) for root in synthetic]
    for s in loaded:
        s.dataset.verify()
    synthetic_sets = [s.without_layouts(held) for s in loaded]
    check_no_leakage(split, refs, synthetic_sets)
    _check_sizes(real, synthetic_sets, cfg.train.patch_size)
    seed = cfg.train.seed
    mixing = make_mixing(cfg.mix, real, synthetic_sets, seed)
    split_record = {
        "data_root": str(data.resolve()),
        **split.model_dump(mode="json"),
        "synthetic": [
            {"root": str(s.root.resolve()), "used": len(s), "excluded_held_out_layouts": s.excluded, "manifest": s.has_manifest}
            for s in synthetic_sets
        ],
    }
    split_path = run / SPLIT_JSON
    if resume and split_path.is_file():
        if json.loads(split_path.read_text(encoding="utf-8")) != json.loads(json.dumps(split_record, sort_keys=True)):
            raise ValueError(f"{split_path}: data, split or synthetic sets differ from the run being resumed")
    accelerator = make_accelerator(cfg.train.mixed_precision)  # before any other use of the process state
    main = accelerator.is_main_process
    if main:
        run.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg, run / CONFIG_YAML)
        atomic_write_json(split_path, split_record)

    torch.manual_seed(seed)
    num_classes, channels = real.spec.num_classes, real.spec.channels
    model = build_network(cfg.network, channels, num_classes)
    divisor = size_divisor(cfg.network)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg))
    loss_fn = DiceCELoss(
        to_onehot_y=True, softmax=True, lambda_dice=cfg.loss.lambda_dice, lambda_ce=cfg.loss.lambda_ce
    )
    checkpoints = CheckpointManager(run, keep=1)
    step, val_steps, curve, stopped_early = 0, [], [], False
    latest = checkpoints.latest() if resume else None
    if latest is not None:
        _, state = latest
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step, val_steps, curve = state["step"], list(state["val_steps"]), list(state["val_curve"])
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler steps once per step, unprepared
    loop = _Loop(model, optimizer, scheduler, loss_fn, accelerator, cfg, mixing.paired)
    if main:
        truncate_log(run / TRAIN_LOG, step)
        if resume:
            remove_stale_temporaries(run, run / "checkpoints")
    sources = [real, *(s.dataset for s in synthetic_sets)]
    class_names = real.spec.class_names
    t = cfg.train

    with (StepProgress("train-seg", t.steps, console if main else None, step) as progress,
          tracked(t.log_with if main else "none", run, cfg) as track):
        while step < t.steps:
            if t.patience is not None and validations_without_gain(curve, t.smoothing, t.min_delta) >= t.patience:
                stopped_early = True
                break
            n_steps = min(t.val_every, t.steps - step)
            start = step * loop.global_batch
            plan = mixing.plan(start, n_steps * loop.global_batch)
            positions = loop.my_positions(start, n_steps)
            mine = [plan[p - start] for p in positions]
            chunk = PlanDataset(sources, mine, positions, mixing.paired, t.augment, t.patch_size, seed)
            loader = DataLoader(chunk, batch_size=t.batch_size, shuffle=False, num_workers=t.num_workers)
            loss, taken = loop.train_steps(loader, step)
            step += taken
            network = accelerator.unwrap_model(model)
            dice = validation_dice(network, val, num_classes, divisor, t.patch_size)
            if main and (not curve or dice > max(curve)):
                save_network(
                    run / BEST_DIR, network, cfg.network, channels, class_names,
                    extra={"step": step, "val_dice": dice, "divisor": divisor, "patch_size": t.patch_size},
                )
            val_steps.append(step)
            curve.append(dice)
            if main:
                n_syn = sum(1 for item, _ in plan if item[0] != 0)
                record = {
                    "step": step, "loss": loss, "val_dice": dice, "val_dice_smoothed": smoothed(curve, t.smoothing)[-1],
                    "best_val_dice": max(curve), "lr": scheduler.get_last_lr()[0], "real_examples": len(plan) - n_syn,
                    "synthetic_examples": n_syn, "paired_with_variant": sum(1 for _, partner in plan if partner is not None),
                }
                append_log_line(run / TRAIN_LOG, record)
                track(record)
                checkpoints.save(step, {
                    "step": step, "model": network.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": rng_state(), "val_steps": val_steps, "val_curve": curve,
                })
            accelerator.wait_for_everyone()
            progress.update(step, loss=loss, val_dice=dice, best=max(curve))
    summary = {
        "steps": step, "planned_steps": t.steps, "batch_size": loop.global_batch, "val_every": t.val_every,
        "examples_seen": step * loop.global_batch, "processes": accelerator.num_processes, "stopped_early": stopped_early,
        **convergence(val_steps, curve, t.smoothing, t.min_delta),
    }
    if main:
        atomic_write_json(run / TRAINING_JSON, summary)
    accelerator.wait_for_everyone()
    return run
