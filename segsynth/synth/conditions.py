"""What one sampling call of a segsynth pipeline is given: the record's sampling settings, the
layout dataset checked against the model, the output size, the edge and text conditions of a
block, and the lower bound of memory a call holds (checked before any output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from segsynth.artifacts.names import DATASET_JSON
from segsynth.data.edges import edge_map
from segsynth.data.loader import SegDataset
from segsynth.diffusion.pipeline import SamplingSettings, SegSynthPipeline
from segsynth.fits import Estimate
from segsynth.synth.config import TEXT_GUIDANCE, GenerationConfig, GenerationRecipe
from segsynth.synth.layouts import LayoutSource, VariantLayouts


def sampling_settings(record: GenerationRecipe) -> SamplingSettings:
    """The keywords of :meth:`SegSynthPipeline.__call__` a record decides: the one place where the
    record's names meet the pipeline's (scales of conditions a model lacks are 1, i.e. off)."""
    return SamplingSettings(
        num_inference_steps=record.steps,
        sampler=record.sampler,
        style_guidance_scale=record.style_guidance,
        layout_guidance_scale=record.layout_guidance,
        guidance_rescale=record.guidance_rescale,
        edge_guidance_scale=record.edge_guidance,
        text_guidance_scale=record.text_guidance,
        tile_overlap=record.tile_overlap,
    )


def _layout_dataset(root: Path, from_run: bool, training_data: dict[str, Any], num_classes: int,
                    channels: int) -> SegDataset:
    """The labelled data the layouts come from, checked against what the model draws.

    With the run's own data (``from_run``), only the masks the model was trained on are used, so
    a benchmark's held-out cases never reach the synthetic training data.
    """
    dataset = SegDataset(root)
    if from_run and training_data.get("train_ids") is not None:
        train_ids = set(training_data["train_ids"])
        dataset = SegDataset(root, refs=[ref for ref in dataset.refs if ref.id in train_ids])
    spec = dataset.spec
    if spec.num_classes != num_classes or spec.channels != channels:
        raise ValueError(
            f"{root / DATASET_JSON}: {spec.num_classes} classes / {spec.channels} channels, "
            f"but the model draws {num_classes} classes / {channels} channels"
        )
    return dataset


def memory_estimate(size: int, batch_size: int, image_channels: int, sample_channels: int,
                    latent_factor: int) -> Estimate:
    """What one pipeline call of ``batch_size`` images of ``size`` px holds at least, whatever the
    model and the tiling: the layouts (int64, as drawn and as a tensor), the noisy sample and the
    tiles' blended sum on the denoiser's grid (``sample_channels``, ``latent_factor`` times smaller
    per side), and the decoded float32 images. The denoiser's activations are not counted, so this
    is a lower bound (see :mod:`segsynth.fits`)."""
    pixels = size * size
    grid = pixels // (latent_factor ** 2)
    parts = {
        f"layouts ({batch_size} of {size}x{size})": batch_size * pixels * 8 * 2,
        "sample and tile sum": batch_size * sample_channels * grid * 4 * 2,
        "decoded images": batch_size * pixels * image_channels * 4,
    }
    return Estimate("generate", parts, lower=f"--size ({size}) or --batch-size ({batch_size})")


def _output_size(pipeline: SegSynthPipeline, size: int | None) -> int:
    """The side of the generated images: the model's training size, or ``size`` if it fits the UNet's grid."""
    cfg = pipeline.unet.config
    if size is None:
        return int(cfg.image_size)
    factor = 2 ** (len(cfg.block_out_channels) - 1) * pipeline.unet.latent_factor
    if size % factor:
        raise ValueError(f"size {size} must be a multiple of {factor} (the model's downsampling factor)")
    return size


def _optional_conditions(pipeline: SegSynthPipeline, cfg: GenerationConfig) -> dict[str, Any]:
    """The edge / text keys of the record, for a model that has those conditions; settings of a
    condition the model lacks are refused rather than silently dropped."""
    unet = pipeline.unet
    if not unet.uses_edge and (cfg.edges is not None or cfg.edge_guidance != 1.0):
        raise ValueError("edge settings were given but the model has no edge condition (trained without model.edge)")
    if not unet.uses_text and (cfg.prompt is not None or cfg.text_guidance not in (None, 1.0)):
        raise ValueError("a prompt or text guidance was given but the model has no text condition (model.text)")
    found: dict[str, Any] = {}
    if unet.uses_edge:
        found.update(edge_source=cfg.edges or "layout", edge_guidance=cfg.edge_guidance)
    if unet.uses_text:
        found.update(prompt=cfg.prompt, text_guidance=TEXT_GUIDANCE if cfg.text_guidance is None else cfg.text_guidance)
    return found


def _condition_inputs(block: range, draws: list[dict[str, Any]], config: GenerationRecipe, layouts: LayoutSource,
                      text: torch.Tensor | None, pipeline: SegSynthPipeline) -> dict[str, torch.Tensor]:
    """Edge maps and prompt embeddings of one block, for edge / text models (nothing otherwise)."""
    inputs: dict[str, torch.Tensor] = {}
    if config.edge_source is not None:
        maps = []
        for index, draw in zip(block, draws):
            image = layouts.source_image(index) if config.edge_source == "image" and isinstance(layouts, VariantLayouts) else None
            maps.append(edge_map(draw["layout"], image, pipeline.unet.config.edge_sigma))
        inputs["edge"] = torch.from_numpy(np.stack(maps))[:, None].to(pipeline.device)
    if text is not None:
        inputs["prompt_embeds"] = text.expand(len(draws), -1).to(pipeline.device)
    return inputs
