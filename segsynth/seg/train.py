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
left out of training (see :func:`resolve_split` and :func:`check_no_leakage`). Every random draw
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

from segsynth.artifacts.names import BEST_DIR, CONFIG_YAML, DATASET_JSON, SPLIT_JSON, TRAINING_JSON
from segsynth.config import load_config
from segsynth.data.format import DatasetFormatError
from segsynth.data.loader import SampleRef, SegDataset, index_dataset, sample_seed
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
from segsynth.io.hashing import data_hash
from segsynth.io.lock import owns_folder
from segsynth.io.run_log import train_keys
from segsynth.seg.config import SegTrainConfig
from segsynth.seg.convergence import convergence, smoothed, validations_without_gain
from segsynth.seg.mixing import MixingStrategy, make_mixing, merge_cell_size, merge_grid, random_merge
from segsynth.seg.plan_dataset import PlanDataset
from segsynth.seg.loss import IgnoringDiceCELoss
from segsynth.seg.networks import build_network, predict_logits, save_network, size_divisor
from segsynth.seg.pseudo import PseudoLabelledSet, load_pseudo_set
from segsynth.seg.splits import Split, hold_out_cases, ids_of_cases, low_label_cases, make_split
from segsynth.seg.synthetic_sets import SyntheticTrainingSet, load_synthetic_set

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


def check_no_leakage(split: Split, refs: Sequence[SampleRef], synthetic: Sequence[SyntheticTrainingSet]) -> None:
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


def check_pseudo_leakage(split: Split, pseudo: Sequence[PseudoLabelledSet]) -> None:
    """Refuse a pseudo-labelled set holding an image of a validation or test case: self-training
    must never have looked at the images it is scored or selected on.

    Raises:
        ValueError: naming the set and the cases.
    """
    held = set(split.val_cases) | set(split.test_cases)
    for s in pseudo:
        leaked = sorted({case for case in s.record["cases"].values() if case in held})
        if leaked:
            raise ValueError(f"{s.root}: pseudo-labelled images of validation/test cases {leaked[:5]}")


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


def _check_sizes(real: SegDataset, synthetic: Sequence[SyntheticTrainingSet], patch_size: int | None) -> None:
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
    pseudo_labelled: Sequence[str | Path] = (),
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
    refs = index_dataset(data)
    if not refs:
        raise ValueError(f"{data}: no labelled image/mask pairs")
    SegDataset(data, refs=refs).verify()  # every labelled file, before anything is written
    try:
        split = resolve_split(refs, cfg, train_ids, val_ids)
    except ValueError as exc:
        raise ValueError(f"{data / DATASET_JSON}: {exc}") from None
    by_id = {r.id: r for r in refs}
    real = SegDataset(data, refs=[by_id[i] for i in split.train_ids])
    val = SegDataset(data, refs=[by_id[i] for i in split.val_ids])
    held = set(split.val_ids) | set(split.test_ids)
    loaded = [load_synthetic_set(root, real, layouts_independent=cfg.mix.layouts_independent) for root in synthetic]
    for s in loaded:
        s.dataset.verify()
    synthetic_sets = [s.without_layouts(held) for s in loaded]
    for whole, kept in zip(loaded, synthetic_sets):
        if len(whole) and not len(kept):
            cases = sorted({by_id[i].case_id for i in set(whole.layout_ids) & held})
            raise DatasetFormatError(
                f"{whole.root}: all {len(whole)} synthetic samples were drawn from layouts of validation or test "
                f"cases ({', '.join(cases)}), which never train; generate from the training cases' masks"
            )
    check_no_leakage(split, refs, synthetic_sets)
    pseudo_sets = [load_pseudo_set(root, data) for root in pseudo_labelled]
    check_pseudo_leakage(split, pseudo_sets)
    if pseudo_sets and cfg.mix.strategy not in ("ratio", "concat"):
        raise ValueError(f"pseudo-labelled sets mix in with mix.strategy ratio or concat, not {cfg.mix.strategy!r}")
    extra_sets: list = [*synthetic_sets, *pseudo_sets]
    _check_sizes(real, extra_sets, cfg.train.patch_size)
    seed = cfg.train.seed
    mixing = make_mixing(cfg.mix, real, extra_sets, seed)
    split_record = {
        "data_root": str(data.resolve()),
        **split.model_dump(mode="json"),
        "synthetic": [
            {"root": str(s.root.resolve()), "used": len(s), "excluded_held_out_layouts": s.excluded, "manifest": s.has_manifest}
            for s in synthetic_sets
        ],
        # the bytes, not only the ids: other files under the same names must not resume this run
        "data_sha256": data_hash([SegDataset(data, refs=refs), *(s.dataset for s in synthetic_sets)]),
    }
    if pseudo_sets:  # only then: split.json of every other run stays as it was
        split_record["pseudo_labelled"] = [
            {"root": str(s.root.resolve()), "used": len(s), "teacher": s.record["teacher"], "threshold": s.record["threshold"]}
            for s in pseudo_sets
        ]
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
            SPLIT_JSON, split_record, problem="data, split or synthetic sets differ from the run being resumed",
            added=("data_sha256",))])
    engine.accelerator.wait_for_everyone()
    sources = [real, *(s.dataset for s in extra_sets)]
    engine.run(SegTask(engine, cfg, sources, val, mixing), resume=resume, console=console)
    return run
