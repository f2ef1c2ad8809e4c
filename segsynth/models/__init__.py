"""Conditional denoiser, style encoder and aggregators (STEDM core)."""

from segsynth.models.config import ModelConfig, StyleConfig
from segsynth.models.model import SegSynthModel
from segsynth.models.style import StyleAggregator, StyleEncoder, encode_style
from segsynth.models.unet import LayoutStyleUNet, SpadeGroupNorm

__all__ = [
    "LayoutStyleUNet",
    "ModelConfig",
    "SegSynthModel",
    "SpadeGroupNorm",
    "StyleAggregator",
    "StyleConfig",
    "StyleEncoder",
    "encode_style",
]
