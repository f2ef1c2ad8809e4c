"""Latents of whole training images, encoded once and kept on disk (``data.cache_latents``).

Encoding every augmented crop on the fly costs one autoencoder forward per sample per step.
With the cache, each training image is padded (symmetrically, to a multiple of the factor and at
least the crop size), encoded once by the posterior mean, and saved; training then cuts random
crops at latent-aligned offsets out of the stored latent and the padded mask. A crop of a whole
image's latent is the latent the autoencoder gives that image region in context, so nothing is
approximated — but geometric augmentation (flips, rotations, scaling) would need a new encoding
per draw, which is why caching requires ``data.augmentation: none``.

Files are written atomically, one per image, and carry the sample id, so a killed run resumes
with the latents already made and a stale file is recognised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from segsynth.data.loader import SegDataset
from segsynth.io.atomic import atomic_write_bytes
from segsynth.autoencoder.autoencoder import encode_images, latent_factor


def pad_to_grid(array: np.ndarray, factor: int, minimum: int) -> np.ndarray:
    """Symmetric padding of the last two axes up to a multiple of ``factor`` and at least ``minimum``."""
    height, width = array.shape[-2:]
    target_h = max(minimum, -(-height // factor) * factor)
    target_w = max(minimum, -(-width // factor) * factor)
    pad_h, pad_w = target_h - height, target_w - width
    widths = [(0, 0)] * (array.ndim - 2) + [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)]
    return np.pad(array, widths, "symmetric") if pad_h or pad_w else array


class LatentCache:
    """One safetensors file of latents per training image under ``folder``.

    It holds no model, so DataLoader workers get a light copy; :meth:`build` takes the autoencoder.

    Args:
        folder: where the files go (``RUN/latent_cache``).
        factor: the autoencoder's downsampling factor.
        crop_size: the training crop in image pixels (images are padded to at least this).
    """

    def __init__(self, folder: Path, factor: int, crop_size: int) -> None:
        self.folder = folder
        self.factor = factor
        self.crop_size = crop_size

    def path(self, source: int, local: int) -> Path:
        return self.folder / f"{source:03d}_{local:07d}.safetensors"

    def padded_arrays(self, dataset: SegDataset, local: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image (C, H', W'), mask (H', W'))`` padded exactly as their cached latent was."""
        image, mask = dataset.load_arrays(local)
        assert mask is not None  # training samples are labelled
        return pad_to_grid(image, self.factor, self.crop_size), pad_to_grid(mask, self.factor, self.crop_size)

    @torch.no_grad()
    def build(self, vae: AutoencoderKL, datasets: list[SegDataset], channels: int) -> int:
        """Encode every image that has no valid file yet; returns how many were encoded.

        Args:
            vae: the frozen autoencoder (its factor must be this cache's).
            datasets: the training datasets, in the trainer's order.
            channels: the model's image channels (single-channel data is repeated to it).
        """
        if latent_factor(vae) != self.factor:
            raise ValueError(f"the autoencoder downsamples by {latent_factor(vae)}, the cache expects {self.factor}")
        device = next(vae.parameters()).device
        made = 0
        for source, dataset in enumerate(datasets):
            for local in range(len(dataset)):
                if self._valid(source, local, dataset.refs[local].id):
                    continue
                image = torch.from_numpy(np.ascontiguousarray(self.padded_arrays(dataset, local)[0]))
                image = image.repeat_interleave(channels // image.shape[0], dim=0)
                latent = encode_images(vae, image[None].to(device))[0].float().cpu().contiguous()
                atomic_write_bytes(self.path(source, local), save({"latent": latent}, {"id": dataset.refs[local].id}))
                made += 1
        return made

    def _valid(self, source: int, local: int, sample_id: str) -> bool:
        """A complete file for this sample exists (atomic writes leave no partial ones; the id
        check catches a file left by a run over other data)."""
        path = self.path(source, local)
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), "pt") as stored:
                return (stored.metadata() or {}).get("id") == sample_id
        except (OSError, SafetensorError):
            return False

    def load(self, source: int, local: int) -> torch.Tensor:
        """The cached ``(C_latent, H'/f, W'/f)`` latent of a training image."""
        return load_file(str(self.path(source, local)))["latent"]
