"""One sample of a synthetic set: its draw (layout, style references and noise seed from its own
generator, so neither batching, sharding nor resumption changes it), the batch blocks (aligned
to multiples of the batch size, the same however often a run resumes), and the writing of its
image, mask and manifest record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segsynth.artifacts.names import IMAGES_DIR, MASKS_DIR
from segsynth.artifacts.schemas import Guidance, ManifestRecord
from segsynth.data.io import write_image
from segsynth.data.loader import sample_seed
from segsynth.data.styles import StyleSource
from segsynth.synth.config import GenerationRecipe
from segsynth.synth.layouts import LayoutSource


#: ``render(block, draws)``: the block's images ``(B, C, H, W)`` in [0, 1], from its draws.
Render = Callable[[range, list[dict[str, Any]]], torch.Tensor]


@dataclass(frozen=True)
class SetDraws:
    """Where a set's samples come from and how a block of them becomes images: everything the
    writer needs from the model side, the same for every renderer (the layout- and style-conditioned
    denoiser, the ControlNet).

    Attributes:
        layouts: the layout of each draw.
        styles: the style references of each draw (None: a model without references).
        render: the renderer (:data:`Render`).
        batch_size: draws rendered together (blocks aligned to its multiples, see :func:`_blocks`).
    """

    layouts: LayoutSource
    styles: StyleSource | None
    render: Render
    batch_size: int


def _blocks(indices: range, batch_size: int) -> list[range]:
    """Split ``indices`` at multiples of ``batch_size`` (same blocks however often a run resumes)."""
    first_cut = (indices.start // batch_size + 1) * batch_size
    cuts = [indices.start, *range(first_cut, indices.stop, batch_size), indices.stop]
    return [range(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _draw(index: int, seed: int, layouts: LayoutSource, styles: StyleSource | None) -> dict[str, Any]:
    """Layout, style references and noise seed of sample ``index``, from its own generator only."""
    value = sample_seed(seed, index)
    rng = np.random.default_rng(value)
    layout, layout_id = layouts.draw(index, rng)
    style, style_ids = (None, []) if styles is None else styles.draw(rng)
    return {"seed": value, "layout": layout, "layout_id": layout_id, "style": style, "style_ids": style_ids}


def _to_pixels(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] -> uint8 ``(H, W)`` (one channel) or ``(H, W, C)``."""
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)


def _write_sample(
    out: Path,
    index: int,
    draw: dict[str, Any],
    image: torch.Tensor,
    config: GenerationRecipe,
    prompt: str,
) -> ManifestRecord:
    sample_id = f"synth_{index:07d}"
    image_rel, mask_rel = f"{IMAGES_DIR}/{sample_id}.png", f"{MASKS_DIR}/{sample_id}.png"
    mask = draw["layout"]
    write_image(out / image_rel, _to_pixels(image))
    write_image(out / mask_rel, mask.astype(np.uint8 if mask.max() < 256 else np.uint16))
    return ManifestRecord(
        id=sample_id,
        image=image_rel,
        mask=mask_rel,
        index=index,
        seed=draw["seed"],
        layout_source=config.layouts,
        layout_id=draw["layout_id"],
        style_source=config.styles,
        style_sampler=config.style_sampler,
        style_ids=draw["style_ids"],
        prompt=prompt,
        guidance=Guidance(style=config.style_guidance, layout=config.layout_guidance, rescale=config.guidance_rescale),
        sampler=config.sampler,
        steps=config.steps,
        model_hash=config.model_hash,
        edge_source=config.edge_source,
        edge_guidance=config.edge_guidance if config.edge_source is not None else None,
        text_guidance=config.text_guidance if config.prompt is not None else None,
    )
