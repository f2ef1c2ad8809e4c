"""Latent mode: an autoencoder trained on the project's own images, and the codec the denoiser uses."""

from segsynth.autoencoder.autoencoder import build_autoencoder, decode_latents, encode_images, load_autoencoder
from segsynth.autoencoder.config import AutoencoderModelConfig, AutoencoderTrainConfig
from segsynth.autoencoder.train import train_autoencoder

__all__ = [
    "AutoencoderModelConfig",
    "AutoencoderTrainConfig",
    "build_autoencoder",
    "decode_latents",
    "encode_images",
    "load_autoencoder",
    "train_autoencoder",
]
