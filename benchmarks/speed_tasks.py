"""The library's own training tasks, built on a built-in dataset, for the CPU speed benchmarks.

Why not a private loop: a benchmark of a rebuilt step measures the rebuild. These helpers build
the very :class:`~segsynth.engine.TrainTask` objects ``train-diffusion``, ``train-seg`` and
``train-autoencoder`` run (same constructor, same accelerator, same optimiser, EMA and autocast),
so timing ``task.train_step(batch, step)`` times what a user's run does per step, minus data
loading (one batch of the task's own loader is reused).

accelerate keeps one mixed-precision setting per process, so every builder resets its state
first; a task keeps the autocast wrapper it was prepared with, so tasks of different precisions
can be timed side by side in one process.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from accelerate.state import AcceleratorState

from segsynth.config import load_config
from segsynth.data.builtin import build_builtin
from segsynth.data.format import load_spec
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.samples import SampleSettings, TrainingSamples, select_refs
from segsynth.diffusion.train import DiffusionTask, fit_config_to_data
from segsynth.diffusion.train import engine_settings as diffusion_settings
from segsynth.engine import Engine, EngineSettings

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def builtin_data(dataset: str = "brain-mri", folder: Path | None = None) -> Path:
    """A built-in dataset (64 px tiles) in ``folder`` (default: a fresh temporary folder)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="segsynth-speed-"))
    root = folder / dataset
    return root if root.is_dir() else build_builtin(dataset, root)


def _fresh_engine(out: Path, settings: EngineSettings, cfg: Any) -> Engine:
    AcceleratorState._reset_state(reset_partial_state=True)
    return Engine(out, settings, cfg)


def diffusion_task(data: Path, out: Path, overrides: dict[str, Any] | None = None,
                   config: Path = TINY) -> tuple[DiffusionTask, dict[str, Any]]:
    """``train-diffusion``'s task for ``config`` (+ dotted ``overrides``) on ``data``, and one batch of its loader."""
    cfg = load_config(DiffusionTrainConfig, config, overrides or {})
    spec = load_spec(data)
    cfg = fit_config_to_data(cfg, spec, data)
    engine = _fresh_engine(out, diffusion_settings(cfg), cfg)
    samples = TrainingSamples(data, select_refs(data, spec, None), SampleSettings.of(cfg))
    task = DiffusionTask(engine, samples, cfg)
    return task, next(task.batches(0))


def seg_task(data: Path, out: Path, overrides: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """``train-seg``'s task (default network, real data only) on ``data``, and one batch of its loader."""
    from segsynth.data.dataset import SegDataset
    from segsynth.data.loader import index_dataset
    from segsynth.seg.config import SegTrainConfig
    from segsynth.seg.mixing import make_mixing
    from segsynth.seg.train import SegTask
    from segsynth.seg.train import engine_settings as seg_settings

    cfg = load_config(SegTrainConfig, None, overrides or {})
    refs = index_dataset(data)
    real, val = SegDataset(data, refs=refs[2:]), SegDataset(data, refs=refs[:2])
    engine = _fresh_engine(out, seg_settings(cfg), cfg)
    task = SegTask(engine, cfg, [real], val, make_mixing(cfg.mix, real, [], cfg.train.seed))
    return task, next(task.batches(0))


def autoencoder_task(data: Path, out: Path, overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``train-autoencoder``'s task on ``data``, and one batch of its tile draws."""
    from segsynth.latent.config import AutoencoderTrainConfig
    from segsynth.latent.train import AutoencoderTask, ImagePool

    cfg = load_config(AutoencoderTrainConfig, None, overrides or {})
    pool = ImagePool([data.resolve()], cfg.holdout, cfg.seed)
    engine = _fresh_engine(out, EngineSettings(label="train-autoencoder", steps=cfg.steps, log_every=cfg.log_every,
                                               checkpoint_every=cfg.checkpoint_every,
                                               mixed_precision=cfg.mixed_precision), cfg)
    task = AutoencoderTask(engine, pool, cfg)
    return task, next(task.batches(0))
