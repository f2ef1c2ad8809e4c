"""Training curves in the tool a user already reads: ``train.log_with`` through accelerate's trackers.

``none`` keeps only ``train_log.jsonl``; ``tensorboard`` and ``wandb`` are accelerate's own trackers
(their packages are optional, and asking for a missing one fails before training with the install
line); ``csv`` is :class:`CSVTracker`, which needs nothing installed. Every tracker writes under
``RUN/tracking/``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from accelerate.tracking import GeneralTracker, TensorBoardTracker, WandBTracker
from accelerate.utils import is_tensorboard_available, is_wandb_available
from pydantic import BaseModel

from segsynth.artifacts.names import TRACKING_CSV, TRACKING_DIR
from segsynth.config import ConfigError

LogWith = Literal["none", "tensorboard", "csv", "wandb"]
#: The project (TensorBoard run folder, W&B project) every segsynth run logs under.
PROJECT = "segsynth"


class CSVTracker(GeneralTracker):
    """``RUN/tracking/metrics.csv``: one ``step,name,value`` row per logged number.

    The long layout lets a value that appears late (a validation score) join without a new header.
    A resumed run first logs a step at or after the checkpoint it resumed from; rows of that step and
    later, left by the run that was killed, are dropped then, so no step appears twice.
    """

    name = "csv"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | Path) -> None:
        super().__init__()
        self.run_name = run_name
        self.path = Path(logging_dir) / TRACKING_CSV
        self._first = True

    @property
    def tracker(self) -> Path:
        return self.path

    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        if self._first:
            self._drop_from(step)
            self._first = False
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "name", "value"])
            writer.writerows([step, k, v] for k, v in values.items() if isinstance(v, int | float))

    def _drop_from(self, step: int | None) -> None:
        if step is None or not self.path.is_file():
            return
        with self.path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        kept = [rows[0], *(r for r in rows[1:] if r[0] and int(r[0]) < step)]
        with self.path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(kept)


def make_trackers(log_with: LogWith, out: Path) -> list[GeneralTracker]:
    """The tracker objects for ``Accelerator(log_with=...)``, logging under ``out/tracking``.

    Raises:
        ConfigError: ``tensorboard`` or ``wandb`` asked for without its package.
    """
    logging_dir = out / TRACKING_DIR
    if log_with == "none":
        return []
    if log_with == "csv":
        return [CSVTracker(PROJECT, logging_dir)]
    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[log_with]
    if not available():
        raise ConfigError(f"train.log_with: {log_with} is not installed; pip install {log_with}, "
                          "or use csv (no package needed) or none")
    if log_with == "tensorboard":
        return [TensorBoardTracker(PROJECT, logging_dir)]
    return [WandBTracker(PROJECT, dir=str(logging_dir))]


def flat_config(config: BaseModel) -> dict[str, bool | int | float | str | None]:
    """``config`` as dotted scalar keys (``train.lr``), the form trackers store hyperparameters in."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node if node is None or isinstance(node, bool | int | float | str) else str(node)

    walk("", config.model_dump(mode="json"))
    return flat
