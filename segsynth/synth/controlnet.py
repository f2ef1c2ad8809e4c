"""Generation from a ``train-diffusion --backbone`` run: the same set format, manifest, resumption and
shards as :func:`segsynth.synth.generate.generate`, with images drawn by the ControlNet on its
frozen Stable Diffusion."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from segsynth.artifacts.names import BACKBONE_JSON, CONTROLNET_DIR
from segsynth.artifacts.schemas import BackboneRecord, ManifestRecord, read_record
from segsynth.fits import check_memory
from segsynth.io.hashing import model_hash
from segsynth.synth.conditions import _layout_dataset, memory_estimate
from segsynth.synth.config import GenerationConfig
from segsynth.synth.filtered import _judge
from segsynth.synth.layouts import VariantLayouts, make_layout_source
from segsynth.synth.draws import SetDraws
from segsynth.synth.shards import ShardJob
from segsynth.synth.writer import GenerationResult, _write_set


#: Settings of :class:`GenerationConfig` a ControlNet run has no use for: it takes no style
#: references (so no style sampler, N or style / layout guidance), weighs its hint by the run's
#: conditioning scale rather than an edge guidance, and samples whole images, never tiles.
CONTROLNET_UNUSED = ("styles", "style_sampler", "num_refs", "style_guidance", "layout_guidance", "guidance_rescale",
                     "edge_guidance", "tile_overlap", "mixed_precision")


def _generate_with_controlnet(
    run: str | Path,
    out: Path,
    cfg: GenerationConfig,
    *,
    shard: tuple[int, int],
    resume: bool,
    console: Console | None,
    on_sample: Callable[[ManifestRecord], None] | None,
    device: str | None,
) -> GenerationResult:
    """:func:`generate` for a ``train-diffusion --backbone`` run: the same set format, manifest,
    resumption and shards, with images drawn by the ControlNet on its frozen Stable Diffusion.

    The prompt and the hint steer it; ``cfg.text_guidance`` is the prompt's classifier-free
    guidance (default: the run's). A setting it would ignore (:data:`CONTROLNET_UNUSED`) is refused
    unless left at its default, so no one believes a set was made with it.
    """
    from segsynth.controlnet.sample import load_controlnet_run, sample_images

    unused = [name for name in CONTROLNET_UNUSED if getattr(cfg, name) != GenerationConfig.model_fields[name].default]
    if unused:
        raise ValueError(f"{run}: a ControlNet run takes no style references and does not use {unused}; leave them out")
    loaded = load_controlnet_run(run, device=device)
    training_data = loaded.training_data
    if cfg.layout_data is None and training_data.get("data_root") is None:
        raise ValueError(f"{run}: its training_data.json names no data_root; give layout_data")
    layout_root = Path(cfg.layout_data if cfg.layout_data is not None else training_data["data_root"]).resolve()
    dataset = _layout_dataset(layout_root, cfg.layout_data is None, training_data, loaded.num_classes, loaded.channels)
    backbone = read_record(Path(run) / BACKBONE_JSON, BackboneRecord)
    digest = hashlib.sha256(f"{model_hash(Path(run) / CONTROLNET_DIR)}:{backbone.sha256}".encode()).hexdigest()
    record = cfg.resolve(digest, shard[1], {
        "layout_data": str(layout_root), "styles": None, "style_sampler": None, "num_refs": None,
        # no STEDM guidance: the manifest says so with scales that are off
        "style_guidance": 1.0, "layout_guidance": 1.0, "guidance_rescale": 0.0,
        "edge_source": cfg.edges or "layout",
        "prompt": cfg.prompt if cfg.prompt is not None else dataset.spec.prompt,
        "text_guidance": loaded.config.sampling.guidance_scale if cfg.text_guidance is None else cfg.text_guidance,
    })
    judge = _judge(cfg, dataset.spec, device)
    if judge is not None:
        record = record.model_copy(update={"filter": judge.record})
    out_size = cfg.size if cfg.size is not None else loaded.config.data.image_size
    if out_size % 8:
        raise ValueError(f"size {out_size} must be a multiple of 8 (Stable Diffusion's latent grid)")
    vae = loaded.pipeline.vae.config
    check_memory(memory_estimate(out_size, min(cfg.batch_size, cfg.n), int(vae.out_channels), int(vae.latent_channels),
                                 2 ** (len(vae.block_out_channels) - 1)), loaded.pipeline.device)  # before any output
    layout_source = make_layout_source(cfg.layouts, dataset, out_size, per_mask=cfg.per_mask, class_prior=cfg.class_prior)
    dataset.verify()

    def render(block: range, draws: list[dict[str, Any]]) -> torch.Tensor:
        real = None
        if record.edge_source == "image" and isinstance(layout_source, VariantLayouts):
            real = np.stack([layout_source.source_image(index) for index in block])
        return sample_images(loaded, np.stack([d["layout"] for d in draws]), real, prompt=record.prompt,
                             steps=record.steps, guidance_scale=record.text_guidance, sampler=record.sampler,
                             seeds=[d["seed"] for d in draws])

    return _write_set(out, record, dataset.spec, SetDraws(layout_source, None, render, cfg.batch_size),
                      ShardJob(shard, resume, console, on_sample), judge)
