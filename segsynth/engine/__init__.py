"""The one training engine every segsynth trainer runs on.

A stage (diffusion, ControlNet, autoencoder, segmentation) describes *what* it trains as a
:class:`~segsynth.engine.task.TrainTask`: its state, its batches, one optimiser step, what it
logs and what it releases at the end. :class:`~segsynth.engine.loop.Engine` owns everything that
must behave the same in every stage: the run folder and its resume check
(:mod:`segsynth.engine.run_folder`), device placement and mixed precision through accelerate,
the loss and weight guards, ``train_log.jsonl``, the trackers, progress, atomic checkpoints with
retention, and kill-safe resume. A fix to any of those is made once, here.
"""

from segsynth.engine.loop import Engine
from segsynth.engine.run_folder import RunRecord, prepare_run_folder
from segsynth.engine.task import DefaultHooks, EngineSettings, TrainTask

__all__ = ["DefaultHooks", "Engine", "EngineSettings", "RunRecord", "TrainTask", "prepare_run_folder"]
