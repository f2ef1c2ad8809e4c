"""MONAI segmentation networks, their saved form, and whole-image inference.

A trained network is stored as ``model.json`` (network config, channels, class names) plus
``model.safetensors`` (weights only), so loading needs neither the training config nor pickle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.networks.nets import AttentionUnet, FlexibleUNet, UNet
from safetensors.torch import load_file, save_file

from segsynth.artifacts.names import MODEL_JSON, MODEL_WEIGHTS
from segsynth.io.atomic import atomic_directory
from segsynth.seg.config import NetworkConfig

#: FlexibleUNet's ResNet encoder halves the resolution five times.
_FLEXIBLE_DIVISOR = 32


def build_network(cfg: NetworkConfig, in_channels: int, num_classes: int) -> torch.nn.Module:
    """Build the 2D MONAI network named by ``cfg`` mapping ``(B, in_channels, H, W)`` to logits
    ``(B, num_classes, H, W)``.

    Raises:
        ValueError: fewer than 2 classes or no input channel.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + one structure), got {num_classes}")
    if cfg.name == "unet":
        return UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=cfg.channels,
            strides=cfg.strides,
            num_res_units=cfg.num_res_units,
            dropout=cfg.dropout,
        )
    if cfg.name == "attention_unet":
        return AttentionUnet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=cfg.channels,
            strides=cfg.strides,
            dropout=cfg.dropout,
        )
    return FlexibleUNet(
        in_channels=in_channels,
        out_channels=num_classes,
        backbone=cfg.backbone,
        pretrained=False,
        decoder_channels=cfg.decoder_channels,
        spatial_dims=2,
        dropout=cfg.dropout,
    )


def size_divisor(cfg: NetworkConfig) -> int:
    """Input sides must be multiples of this for the skip connections to line up."""
    if cfg.name == "flexible_unet":
        return _FLEXIBLE_DIVISOR
    return math.prod(cfg.strides)


def predict_logits(
    model: torch.nn.Module, image: torch.Tensor, divisor: int, patch_size: int | None = None, overlap: float = 0.25
) -> torch.Tensor:
    """Logits ``(B, K, H, W)`` (float32, on the CPU) for images ``(B, C, H, W)`` of any size.

    The images go to the model's device. With ``patch_size`` the image is tiled by MONAI's
    sliding-window inferer (Gaussian blending, windows overlapping by ``overlap``); otherwise it is
    zero-padded to a multiple of ``divisor``, run whole and cropped back.
    """
    image = image.to(next(model.parameters()).device)
    if patch_size is not None:
        roi = (patch_size, patch_size)
        logits = sliding_window_inference(image, roi, sw_batch_size=4, predictor=model, overlap=overlap, mode="gaussian")
        return logits.float().cpu()
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % divisor, (-width) % divisor
    padded = F.pad(image, (0, pad_w, 0, pad_h)) if pad_h or pad_w else image
    return model(padded)[..., :height, :width].float().cpu()


def save_network(
    directory: str | Path,
    model: torch.nn.Module,
    cfg: NetworkConfig,
    in_channels: int,
    class_names: list[str],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.json`` + ``model.safetensors`` into ``directory`` atomically (replacing it)."""
    meta = {
        "network": cfg.model_dump(mode="json"),
        "in_channels": in_channels,
        "class_names": class_names,
        **(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(directory, overwrite=True) as tmp:
        save_file(state, str(tmp / MODEL_WEIGHTS))
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(directory)


def load_network(directory: str | Path) -> tuple[torch.nn.Module, NetworkConfig, dict[str, Any]]:
    """Inverse of :func:`save_network`: ``(model in eval mode, network config, metadata)``.

    Raises:
        FileNotFoundError: ``directory`` holds no saved network.
        ValueError: the metadata or weights do not describe a network we can build.
    """
    directory = Path(directory)
    meta_path = directory / MODEL_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing (not a saved segmentation network)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        cfg = NetworkConfig.model_validate(meta["network"])
        model = build_network(cfg, int(meta["in_channels"]), len(meta["class_names"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{meta_path}: invalid network description ({exc})") from None
    try:
        model.load_state_dict(load_file(str(directory / MODEL_WEIGHTS)))
    except Exception as exc:  # safetensors and load_state_dict raise several types
        raise ValueError(f"{directory / MODEL_WEIGHTS}: weights do not load ({exc})") from None
    return model.eval(), cfg, meta
