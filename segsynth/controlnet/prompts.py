"""Prompt embeddings from the backbone's own frozen CLIP text encoder (as the Stable Diffusion pipeline makes them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from segsynth.controlnet.load import Backbone


@torch.no_grad()
def encode_backbone_prompts(backbone: Backbone, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
    """The last hidden states of the backbone's CLIP text encoder for each prompt, padded to the tokenizer's length.

    Not :func:`segsynth.models.text.encode_prompts`: that one embeds prompts with segsynth's own
    cached sentence encoder for the STEDM model; these are the token embeddings the frozen Stable
    Diffusion UNet was trained on.

    Returns:
        ``(P, model_max_length, hidden_size)`` in the text encoder's dtype, on ``device``.
    """
    tokenizer = backbone.tokenizer
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    encoder = backbone.text_encoder
    device = device if device is not None else encoder.device
    return encoder(ids.to(encoder.device))[0].to(device)
