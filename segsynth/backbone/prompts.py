"""Prompt embeddings from the backbone's own frozen CLIP text encoder (as the Stable Diffusion pipeline makes them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from segsynth.backbone.load import Backbone


@torch.no_grad()
def encode_prompts(backbone: Backbone, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
    """The last hidden states of the text encoder for each prompt, padded to the tokenizer's length.

    Returns:
        ``(P, model_max_length, hidden_size)`` in the text encoder's dtype, on ``device``.
    """
    tokenizer = backbone.tokenizer
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    encoder = backbone.text_encoder
    device = device if device is not None else encoder.device
    return encoder(ids.to(encoder.device))[0].to(device)
