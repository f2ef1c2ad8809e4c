"""``segsynth generate``: write a synthetic image/mask dataset from a trained pipeline, resumably.

Every sample ``index`` has its own seed, derived from ``(seed, index)``; it seeds a numpy generator
for the layout and style draws and a torch generator for the noise. The pipeline receives one
generator per sample, so what a sample is drawn from depends on neither batching, sharding nor
resumption. (Its pixels can still differ in float rounding when it shares a batch with other
samples, since batched kernels sum in another order: rarely one grey level after quantisation.)

Crash safety: a sample is written as image PNG, mask PNG (each atomically), then its manifest line
(flushed and fsynced). It counts as done only when all three exist. ``resume=True`` skips done
indices and rewrites none of their files; a torn last manifest line is cut off first. Samples are
generated in blocks aligned to multiples of ``batch_size``; a resumed run recomputes a partly
finished block whole (writing only its missing samples), so its batches are the same as those of an
uninterrupted run and floating-point results cannot differ with batch composition either.

Shards (``shard=(i, n)``) split the index range; each writes ``manifest.shard-i-of-n.jsonl``, and
whichever finishes last merges the parts into ``manifest.jsonl`` + ``dataset.json``
(:func:`merge_shards` does the same on demand). Memory stays flat in ``n``: one block at a time.
Each shard holds its own lock file (:mod:`segsynth.io.lock`) while it runs, so a second process
writing the same shard fails at once; claiming the folder and merging hold the set's lock.

The writer is split by concern: :mod:`~segsynth.synth.shards` (which part a process writes),
:mod:`~segsynth.synth.loading` (the run and its checks), :mod:`~segsynth.synth.conditions` (what one
sampling call is given), :mod:`~segsynth.synth.draws` (one sample), :mod:`~segsynth.synth.writer`
(the locked, resumable writer and the merge), :mod:`~segsynth.synth.filtered` (the layout judge's
filter) and :mod:`~segsynth.synth.controlnet` (ControlNet runs). This module holds :func:`generate`
and re-exports their public names, so ``segsynth.synth.generate`` imports keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from segsynth.artifacts.names import TRAINING_DATA_JSON, UNLABELED_DIR
from segsynth.artifacts.schemas import ManifestRecord
from segsynth.data.styles import StyleSource, open_style_pool
from segsynth.device import sampling_autocast, sampling_precision
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.fits import check_memory
from segsynth.io.guard import check_continuable, check_out_apart
from segsynth.io.hashing import model_hash
from segsynth.models.text import encode_prompts
from segsynth.synth.conditions import (
    _condition_inputs,
    _layout_dataset,
    _optional_conditions,
    _output_size,
    memory_estimate,
    sampling_settings,
)
from segsynth.synth.config import GenerationConfig
from segsynth.synth.controlnet import CONTROLNET_UNUSED, _generate_with_controlnet
from segsynth.synth.draws import SetDraws
from segsynth.synth.filtered import _judge, filter_draws
from segsynth.synth.layouts import make_layout_source
from segsynth.synth.loading import SAFE_LIBRARIES, check_pipeline_folder, generation_inputs, load_run, pipeline_hash
from segsynth.synth.shards import (
    SET_LOCK_WAIT_S,
    ShardJob,
    check_shard,
    default_device,
    launched_shard,
    parse_shard,
    resolve_shard,
    shard_lock_name,
    shard_range,
)
from segsynth.synth.writer import GenerationResult, _write_set, merge_shards, synthetic_spec

#: What this module offers: :func:`generate`, and the public names of the writer's parts that were
#: importable from here before the split (so those imports keep working).
__all__ = [
    "CONTROLNET_UNUSED",
    "SAFE_LIBRARIES",
    "SET_LOCK_WAIT_S",
    "GenerationResult",
    "check_pipeline_folder",
    "check_shard",
    "default_device",
    "filter_draws",
    "generate",
    "generation_inputs",
    "launched_shard",
    "load_run",
    "memory_estimate",
    "merge_shards",
    "model_hash",
    "parse_shard",
    "pipeline_hash",
    "resolve_shard",
    "sampling_settings",
    "shard_lock_name",
    "shard_range",
    "synthetic_spec",
]


def generate(
    run: str | Path | SegSynthPipeline,
    out: str | Path,
    cfg: GenerationConfig,
    *,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    console: Console | None = None,
    on_sample: Callable[[ManifestRecord], None] | None = None,
    device: str | None = None,
) -> GenerationResult:
    """Generate ``cfg.n`` synthetic image/mask pairs into ``out`` (our dataset format + manifest).

    One function on purpose: it resolves the recipe and runs every check (settings, model vs data,
    memory, each layout and style file) in this order before the first output is written; the
    writing itself is :func:`segsynth.synth.writer._write_set`.

    What ``cfg`` leaves None the run fills in (layout data, style pool, style sampler and number
    of references from its ``training_data.json``; the prompt from the layout data); the resolved
    :class:`GenerationRecipe` is what ``generation.json`` keeps and what a resume must match.

    Args:
        run: a training run folder (``RUN/pipeline`` + ``RUN/training_data.json``), a saved
            pipeline folder, a :class:`SegSynthPipeline` (no run: ``cfg.layout_data`` is needed,
            and without ``cfg.styles`` the model's learned null style is used), or a
            ``train-diffusion --backbone`` run (a ControlNet on a frozen Stable Diffusion: no style
            references; the prompt and the edge map steer it, see :mod:`segsynth.controlnet`).
        out: the synthetic set's folder.
        cfg: the set's settings (see :class:`GenerationConfig`).
        shard: ``(i, n)``: generate only the i-th of n contiguous index ranges.
        resume: continue an interrupted run; without it a non-empty ``out`` is refused.
        console: show a progress bar with ETA on this console.
        on_sample: called with each committed record (after its files and manifest line exist).
        device: where a pipeline loaded from a folder samples (default :func:`default_device`);
            a pipeline object passed in stays where it is unless this is given.

    Raises:
        TypeError: ``cfg`` is not a :class:`GenerationConfig`.
        FileExistsError: ``out`` holds files and ``resume`` is False, or a shard is started twice.
        ValueError: inconsistent inputs (model vs data classes/channels, settings the model has no
            use for, changed settings on resume).
    """
    if not isinstance(cfg, GenerationConfig):
        raise TypeError(f"generate() takes its settings as a GenerationConfig, got {type(cfg).__name__}; "
                        "e.g. generate(run, out, GenerationConfig(n=8))")
    check_shard(shard)
    out = Path(out)
    check_out_apart(out, generation_inputs(run, cfg))
    check_continuable(out, "synthetic_set")
    if not isinstance(run, SegSynthPipeline):
        from segsynth.controlnet.sample import is_controlnet_run

        if is_controlnet_run(run):
            return _generate_with_controlnet(run, out, cfg, shard=shard, resume=resume, console=console,
                                             on_sample=on_sample, device=device)
    if isinstance(run, SegSynthPipeline):
        pipeline, digest, training_data = run, pipeline_hash(run), {}
        if device is not None:
            pipeline.to(device)
    else:
        pipeline, pipeline_dir, training_data = load_run(run)
        digest = model_hash(pipeline_dir)
        pipeline.to(default_device() if device is None else device)
    data_root = training_data.get("data_root")
    if cfg.layout_data is None and data_root is None:
        info = None if isinstance(run, SegSynthPipeline) else Path(run) / TRAINING_DATA_JSON
        source = ("the model comes without a run" if info is None else
                  f"{info} names no data_root" if info.is_file() else f"{info.parent} has no {TRAINING_DATA_JSON}")
        raise ValueError(f"layout_data is required: {source}")
    layout_root = Path(cfg.layout_data if cfg.layout_data is not None else data_root).resolve()
    styles = cfg.styles if cfg.styles is not None or data_root is None else Path(data_root) / UNLABELED_DIR
    pipeline.set_progress_bar_config(disable=True)
    unet_cfg = pipeline.unet.config
    record = cfg.resolve(digest, shard[1], {
        "layout_data": str(layout_root),
        "styles": str(styles.resolve()) if styles is not None else None,
        "style_sampler": (cfg.style_sampler or training_data.get("style_sampler") or "multi_patch")
        if styles is not None else None,
        "num_refs": cfg.num_refs if cfg.num_refs is not None else (
            training_data.get("num_refs") or pipeline.style_aggregator.config.num_refs
        ),
        **_optional_conditions(pipeline, cfg),
        "precision": sampling_precision(cfg.mixed_precision, pipeline.device),
    })
    if record.styles is not None:  # before any output: a linear aggregator takes only its own N
        pipeline.style_aggregator.check_num_refs(record.num_refs)
    dataset = _layout_dataset(layout_root, cfg.layout_data is None, training_data,
                              int(unet_cfg.num_classes), int(unet_cfg.image_channels))
    source_spec = dataset.spec
    judge = _judge(cfg, source_spec, pipeline.device)
    if judge is not None:
        record = record.model_copy(update={"filter": judge.record})
    model_size = int(unet_cfg.image_size)
    size = _output_size(pipeline, cfg.size)
    unet = pipeline.unet
    check_memory(memory_estimate(size, min(cfg.batch_size, cfg.n), int(unet_cfg.image_channels), int(unet.sample_channels),
                                 int(unet.latent_factor)), pipeline.device)  # before any output
    if cfg.tile_overlap is not None and cfg.tile_overlap >= model_size:
        raise ValueError(f"tile_overlap {cfg.tile_overlap} must be smaller than the tile, the model's size {model_size}")
    layout_source = make_layout_source(cfg.layouts, dataset, size, per_mask=cfg.per_mask, class_prior=cfg.class_prior)
    if record.prompt is None and pipeline.unet.uses_text:
        record = record.model_copy(update={"prompt": source_spec.prompt})
    text = encode_prompts([record.prompt]) if record.prompt is not None else None
    style_source = None
    if record.styles is not None:
        pool = open_style_pool(record.styles, source_spec.channels)
        style_source = StyleSource(pool, record.style_sampler, record.num_refs, model_size)
    # Read every layout and style file now: a bad one fails here, naming it, before any output.
    dataset.verify()
    if style_source is not None:
        style_source.pool.verify()
    settings = sampling_settings(record)

    def render(block: range, draws: list[dict[str, Any]]) -> torch.Tensor:
        with sampling_autocast(pipeline.device, record.precision):
            return pipeline(
                torch.from_numpy(np.stack([d["layout"] for d in draws])).to(pipeline.device),
                None if style_source is None else torch.from_numpy(np.stack([d["style"] for d in draws])).to(pipeline.device),
                generator=[torch.Generator().manual_seed(d["seed"]) for d in draws],
                **settings,
                **_condition_inputs(block, draws, record, layout_source, text, pipeline),
            ).images

    return _write_set(out, record, source_spec, SetDraws(layout_source, style_source, render, cfg.batch_size),
                      ShardJob(shard, resume, console, on_sample), judge)
