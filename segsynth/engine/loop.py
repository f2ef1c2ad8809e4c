""":class:`Engine`: the training loop every stage runs on.

Per step the engine takes the task's batch, lets the task take its optimiser step, averages the
loss terms over processes and stops every process at the same step when one is not finite. Every
``log_every`` steps it appends a line to ``train_log.jsonl`` (fsynced, so it is on disk before
the checkpoint that follows it) and sends the same numbers to the trackers; every
``checkpoint_every`` steps (and at the last) it checks the weights and writes a complete-or-absent
checkpoint of the task's state plus the step and every RNG. Resuming loads the newest complete
checkpoint, cuts the log back to it and removes what a killed writer left, so a run killed at any
moment continues exactly where its last checkpoint stood (bit for bit on the CPU).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from pydantic import BaseModel
from rich.console import Console

from segsynth.artifacts.names import TRAIN_LOG
from segsynth.cpu_share import rebalance_threads
from segsynth.device import make_accelerator
from segsynth.engine.task import EngineSettings, TrainTask
from segsynth.io.atomic import remove_stale_temporaries
from segsynth.io.checkpoint import CheckpointManager, CheckpointMismatchError, rng_state, set_rng_state, tree_mismatches
from segsynth.io.finite import check_losses, check_weights
from segsynth.io.run_log import append_log_line, truncate_log
from segsynth.progress import StepProgress
from segsynth.tracking import PROJECT, flat_config, make_trackers


class Engine:
    """One run folder's training: accelerator, checkpoints, log, trackers and progress.

    Build it first (the accelerator must exist before any other use of the process state), let the
    stage build its task on :attr:`accelerator`, then call :meth:`run`.

    Args:
        out: the run folder.
        settings: the loop settings.
        config: the run's resolved config (stored with the trackers as hyperparameters).
    """

    def __init__(self, out: Path, settings: EngineSettings, config: BaseModel) -> None:
        self.out, self.settings, self.config = Path(out), settings, config
        self.accelerator: Accelerator = make_accelerator(
            settings.mixed_precision, log_with=make_trackers(settings.log_with, self.out) or None)
        self.checkpoints = CheckpointManager(self.out, keep=settings.keep_checkpoints)
        self.step = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def resume(self, task: TrainTask) -> None:
        """Load the newest complete checkpoint into ``task`` (if any) and tidy the folder for it."""
        latest = self.checkpoints.latest()
        if latest is not None:
            self.step, tree = latest
            try:
                task.load_state_tree(tree)
            except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # torch's load_state_dict: RuntimeError
                raise self._mismatch(task, tree, exc) from exc
            set_rng_state(tree["rng"])
        if self.is_main:
            truncate_log(self.out / TRAIN_LOG, self.step)
            # what a killed writer left in the folder or any subfolder (checkpoints/, samples/, ...)
            remove_stale_temporaries(*(p for p in (self.out, *self.out.iterdir()) if p.is_dir()))
        self.accelerator.wait_for_everyone()

    def _mismatch(self, task: TrainTask, tree: Any, exc: Exception) -> CheckpointMismatchError:
        """What a checkpoint that does not load is, in one line: the file and the first differing keys."""
        where = self.checkpoints.path(self.step) / "state.safetensors"
        differences = tree_mismatches(task.state_tree(self.step), {k: v for k, v in tree.items() if k not in ("step", "rng")})
        if not differences:  # same keys and shapes, yet it failed: say what torch said, first line
            differences = [(str(exc).strip().splitlines() or [type(exc).__name__])[0]]
        return CheckpointMismatchError(
            f"{where}: the checkpoint does not match this run's model and optimiser (was it copied from another "
            f"run, or the network changed?): {'; '.join(differences)}")

    def run(self, task: TrainTask, *, resume: bool, console: Console | None = None) -> None:
        """Train ``task`` to ``settings.steps`` (or until it stops early), then release it.

        Args:
            task: the stage's training.
            resume: continue from the newest complete checkpoint in the run folder.
            console: where progress shows (the main process's); None trains quietly.
        """
        acc, s = self.accelerator, self.settings
        if resume:
            self.resume(task)
        acc.init_trackers(PROJECT, config=flat_config(self.config))
        window: dict[str, float] = {}
        count, tick = 0, time.perf_counter()
        with StepProgress(s.label, s.steps, console if self.is_main else None, self.step) as progress:
            if self.step < s.steps and not task.should_stop():
                for batch in task.batches(self.step):
                    rebalance_threads()  # this command's share of the CPUs, re-counted in the background
                    terms = task.train_step(batch, self.step)
                    reduced = {k: float(acc.reduce(v.detach().float().reshape(1), "mean")) for k, v in terms.items()}
                    check_losses(reduced, self.step + 1, s.label)  # reduced: every process stops here
                    self.step += 1
                    for name, value in reduced.items():
                        window[name] = window.get(name, 0.0) + value
                    count += 1
                    last = self.step == s.steps
                    if self.step % s.log_every == 0 or last:
                        elapsed = time.perf_counter() - tick
                        record = self._record(task, window, count, elapsed)
                        progress.update(self.step, **{k: record[k] for k in s.shown if isinstance(record.get(k), float)})
                        window, count, tick = {}, 0, time.perf_counter()
                    progress.update(self.step)
                    task.after_step(self.step, last)
                    if self.step % s.checkpoint_every == 0 or last:
                        self.save_checkpoint(task)
                    if last or task.should_stop():
                        break
            if self.is_main:
                task.release(self.step)
            acc.wait_for_everyone()
        if acc.trackers:
            acc.end_training()

    def _record(self, task: TrainTask, window: dict[str, float], count: int, elapsed: float) -> dict[str, Any]:
        """The log line of this step: the window's mean terms, its speed and the task's fields."""
        record: dict[str, Any] = {"step": self.step, **{name: total / count for name, total in window.items()},
                                  "it_per_s": count / elapsed if elapsed > 0 else None}
        record.update(task.log_fields(self.step))
        if self.is_main:
            append_log_line(self.out / TRAIN_LOG, record)
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=self.step)
        return record

    def save_checkpoint(self, task: TrainTask) -> None:
        """Check the weights, then write the task's state with the step and RNGs (main process)."""
        check_weights(task.weights(), self.step, self.settings.label)
        tree = {**task.state_tree(self.step), "step": self.step, "rng": rng_state()}
        if self.is_main:
            self.checkpoints.save(self.step, tree)
        self.accelerator.wait_for_everyone()

