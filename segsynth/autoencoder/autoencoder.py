"""The latent space: build, load, encode to and decode from a diffusers ``AutoencoderKL``.

Latents are the posterior *mean*, scaled by the autoencoder's ``scaling_factor`` (1 / std of the
training latents, measured after training as Rombach et al., 2022 do), so the denoiser sees roughly
unit-variance inputs whatever the autoencoder learned, and the same image always has the same code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from segsynth.artifacts.names import AUTOENCODER_DIR
from segsynth.io.model_config import check_model_folder
from segsynth.io.untrusted import refuse_unsafe_files
from segsynth.autoencoder.config import AutoencoderModelConfig


def build_autoencoder(cfg: AutoencoderModelConfig, channels: int, tile_size: int) -> AutoencoderKL:
    """A freshly initialised ``AutoencoderKL`` for ``channels``-channel images."""
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=tile_size,
    )


def latent_factor(vae: AutoencoderKL) -> int:
    """Image pixels per latent pixel along each side."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def load_autoencoder(path: str | Path) -> tuple[AutoencoderKL, Path]:
    """Load a trained autoencoder from a ``train-autoencoder`` folder (or its ``autoencoder/``).

    Only ``config.json`` + safetensors are read; the weights are frozen and in eval mode.

    Returns:
        ``(vae, folder it was loaded from)``.

    Raises:
        FileNotFoundError: no autoencoder in ``path``.
        ValueError: the folder holds pickled weights or unreadable files.
    """
    path = Path(path)
    folder = path / AUTOENCODER_DIR if (path / AUTOENCODER_DIR).is_dir() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no trained autoencoder (expected {AUTOENCODER_DIR}/config.json); "
                                "make one with `segsynth train-autoencoder`")
    refuse_unsafe_files(folder)
    check_model_folder(folder, AutoencoderKL)
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder}: not a loadable AutoencoderKL ({exc})") from None
    vae.requires_grad_(False).eval()
    return vae, folder


def encode_images(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` images in [0, 1] -> scaled latents ``(B, latent_channels, H/f, W/f)``."""
    posterior = vae.encode(images.to(vae.dtype) * 2 - 1).latent_dist
    return posterior.mode() * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (the inverse of :func:`encode_images`, up to the
    autoencoder's reconstruction error)."""
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
