"""What a stage hands the engine: :class:`EngineSettings` (how long and how visibly a run goes)
and a :class:`TrainTask` (what it trains)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from segsynth.tracking import LogWith


@dataclass(frozen=True)
class EngineSettings:
    """The loop settings every trainer has, read from its own config section.

    Attributes:
        label: the command (``train-diffusion``); it names the progress line and every guard error.
        steps: optimiser steps of the whole run.
        log_every: steps between ``train_log.jsonl`` lines (and tracker points).
        checkpoint_every: steps between resumable checkpoints (the last step always gets one).
        keep_checkpoints: complete checkpoints kept on disk.
        mixed_precision: ``auto`` (bf16 autocast on CUDA and on a CPU with native bf16), ``no``,
            ``bf16`` or ``fp16``.
        log_with: trackers for the curves (``none``, ``csv``, ``tensorboard``, ``wandb``).
        shown: log fields the progress line shows beside the step count.
    """

    label: str
    steps: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int = 1
    mixed_precision: str = "auto"
    log_with: LogWith = "none"
    shown: tuple[str, ...] = ("loss",)


class TrainTask(Protocol):
    """One stage's training, as the engine drives it.

    The engine calls :meth:`batches` once per run (from the step it resumes at) and
    :meth:`train_step` for each batch; every other hook is called at the step it names. Every
    process of a multi-process run calls every hook except :meth:`release`, which only the main
    process calls.
    """

    def state_tree(self, step: int) -> dict[str, Any]:
        """The resumable state after ``step`` steps (model, optimiser, schedules, curves); the engine adds step and RNGs."""

    def load_state_tree(self, tree: dict[str, Any]) -> None:
        """Restore what :meth:`state_tree` returned (``tree["step"]`` is the step it was taken at)."""

    def batches(self, step: int) -> Iterator[Any]:
        """The batches of steps ``step``, ``step + 1``, ... up to the run's last, as a pure function of
        the step, so a resumed run sees exactly the batches an uninterrupted one would."""

    def train_step(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """Take optimiser step number ``step`` (0-based) on ``batch``; return this process's loss terms
        (``loss`` first), which the engine averages over processes, checks and logs."""

    def log_fields(self, step: int) -> dict[str, Any]:
        """Fields beside the averaged terms in the log line of ``step`` (learning rate, validation)."""

    def after_step(self, step: int, last: bool) -> None:
        """Work due after step ``step`` (previews), before its checkpoint."""

    def should_stop(self) -> bool:
        """True to end the run before its last step (early stopping)."""

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The trained parameters, checked for non-finite values before every checkpoint."""

    def release(self, step: int) -> None:
        """Write what the run is for, after ``step`` steps (the pipeline, the network, the summary); main process only."""


class DefaultHooks:
    """The optional hooks of a :class:`TrainTask` for a stage that needs none of them: no extra log
    fields, nothing after a step, no early stop."""

    def log_fields(self, step: int) -> dict[str, Any]:
        return {}

    def after_step(self, step: int, last: bool) -> None:
        return None

    def should_stop(self) -> bool:
        return False
