"""The training engine on a toy task: cadence of logs and checkpoints, exact resume, guards, early stop."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel

from segsynth.artifacts.names import TRAIN_LOG
from segsynth.engine import Engine, EngineSettings, RunRecord, prepare_run_folder
from segsynth.io.checkpoint import CheckpointManager
from segsynth.io.finite import NonFiniteError


class ToyConfig(BaseModel):
    lr: float = 0.1
    steps: int = 6


class ToyTask:
    """Fit y = 3x with one weight; batches are a pure function of the step, dropout-like noise comes
    from the global RNG (so resume must restore it)."""

    def __init__(self, engine: Engine, stop_after: int | None = None, poison_at: int | None = None) -> None:
        self.accelerator = engine.accelerator
        torch.manual_seed(0)  # as every trainer seeds its initial weights
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.optimizer = torch.optim.SGD([self.weight], lr=0.1)
        self.steps = engine.settings.steps
        self.stop_after, self.poison_at = stop_after, poison_at
        self.seen_steps: list[int] = []
        self.released = 0

    def state_tree(self, step: int) -> dict[str, Any]:
        return {"weight": self.weight.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_tree(self, tree: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weight.copy_(tree["weight"])
        self.optimizer.load_state_dict(tree["optimizer"])

    def batches(self, step: int) -> Iterator[torch.Tensor]:
        for s in range(step, self.steps):
            yield torch.randn(4, generator=torch.Generator().manual_seed(s))

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        x = batch + 0.01 * torch.randn(4)  # the global RNG too: a resume must restore it
        loss = ((self.weight * x - 3 * x) ** 2).mean()
        if step == self.poison_at:
            loss = loss * float("nan")
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.seen_steps.append(step)
        return {"loss": loss}

    def log_fields(self, step: int) -> dict[str, Any]:
        return {"weight": float(self.weight.detach())}

    def after_step(self, step: int, last: bool) -> None:
        pass

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.seen_steps) >= self.stop_after

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        return [("weight", self.weight)]

    def release(self, step: int) -> None:
        self.released += 1


def settings(**changes: Any) -> EngineSettings:
    base = {"label": "toy", "steps": 6, "log_every": 2, "checkpoint_every": 2, "keep_checkpoints": 2,
            "mixed_precision": "no"}
    return EngineSettings(**{**base, **changes})


def train(out: Path, resume: bool = False, **task_kwargs: Any) -> tuple[Engine, ToyTask]:
    engine = Engine(out, settings(), ToyConfig())
    prepare_run_folder(out, ToyConfig(), resume, lambda key: False)
    task = ToyTask(engine, **task_kwargs)
    engine.run(task, resume=resume)
    return engine, task


def log_lines(out: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(line).items() if k != "it_per_s"}
            for line in (out / TRAIN_LOG).read_text().splitlines()]


def test_logs_and_checkpoints_follow_their_cadence_and_retention(tmp_path: Path) -> None:
    _, task = train(tmp_path / "run")
    assert [r["step"] for r in log_lines(tmp_path / "run")] == [2, 4, 6]
    assert CheckpointManager(tmp_path / "run").complete_steps() == [4, 6]  # keep_checkpoints=2
    assert task.seen_steps == list(range(6)) and task.released == 1
    assert abs(log_lines(tmp_path / "run")[-1]["weight"] - 3) < abs(log_lines(tmp_path / "run")[0]["weight"] - 3)


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, straight = train(tmp_path / "straight")
    real = ToyTask.train_step

    def killed(self: ToyTask, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(self, batch, step)

    monkeypatch.setattr(ToyTask, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed")
    monkeypatch.setattr(ToyTask, "train_step", real)
    assert CheckpointManager(tmp_path / "resumed").complete_steps() == [2]
    _, resumed = train(tmp_path / "resumed", resume=True)
    assert resumed.seen_steps == [2, 3, 4, 5]  # from the checkpoint on, not from scratch
    assert torch.equal(resumed.weight, straight.weight)
    assert log_lines(tmp_path / "resumed") == log_lines(tmp_path / "straight")


def test_a_non_finite_loss_stops_every_process_before_its_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match=r"toy: step 4: loss term 'loss' is nan"):
        train(tmp_path / "run", poison_at=3)
    assert CheckpointManager(tmp_path / "run").complete_steps() == [2]


def test_early_stop_ends_the_run_but_still_releases(tmp_path: Path) -> None:
    _, task = train(tmp_path / "run", stop_after=3)
    assert task.seen_steps == [0, 1, 2] and task.released == 1
    assert CheckpointManager(tmp_path / "run").complete_steps() == [2]


def test_a_used_folder_or_a_changed_record_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    prepare_run_folder(out, ToyConfig(), False, lambda key: False, [RunRecord("data.json", {"ids": [1, 2]}, {"ids": "other data"})])
    with pytest.raises(FileExistsError, match="--resume"):
        prepare_run_folder(out, ToyConfig(), False, lambda key: False)
    with pytest.raises(ValueError, match=r"data.json: other data"):
        prepare_run_folder(out, ToyConfig(), True, lambda key: False, [RunRecord("data.json", {"ids": [1, 3]}, {"ids": "other data"})])
    with pytest.raises(Exception, match="cannot resume with a different lr"):
        prepare_run_folder(out, ToyConfig(lr=0.5), True, lambda key: False)
    prepare_run_folder(out, ToyConfig(steps=9), True, lambda key: key == "steps")  # a longer run may resume
