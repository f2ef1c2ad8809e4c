"""Pretrained-backbone option (DiffBoost's setup): a ControlNet on a frozen, user-supplied Stable Diffusion.

``segsynth train-diffusion DATA --backbone SD_FOLDER --out RUN`` trains a diffusers
``ControlNetModel`` on a hint made from the mask and the edge map, with the dataset's prompt;
the backbone never changes and is never downloaded. Modules, one job each:

- :mod:`~segsynth.backbone.config`: the strict config (:class:`BackboneTrainConfig`);
- :mod:`~segsynth.backbone.load`: check and load the backbone folder (safetensors + JSON only);
- :mod:`~segsynth.backbone.hint`: the 3-channel hint (labels, edges, boundary);
- :mod:`~segsynth.backbone.prompts`: prompt embeddings from the backbone's CLIP text encoder;
- :mod:`~segsynth.backbone.train`: resumable training (:func:`train_controlnet`);
- :mod:`~segsynth.backbone.sample`: images for layouts (:func:`sample_images`).

The base package does not need transformers; loading a backbone does (``pip install 'segsynth[backbone]'``).
See ``docs/backbone.md``.
"""

from __future__ import annotations

from segsynth.backbone.config import BackboneTrainConfig
from segsynth.backbone.hint import HINT_CHANNELS, hints_from_layouts, make_hint
from segsynth.backbone.load import BackboneError, check_backbone_folder, load_backbone
from segsynth.backbone.sample import load_controlnet_run, sample_images
from segsynth.backbone.train import train_controlnet

__all__ = [
    "HINT_CHANNELS",
    "BackboneError",
    "BackboneTrainConfig",
    "check_backbone_folder",
    "hints_from_layouts",
    "load_backbone",
    "load_controlnet_run",
    "make_hint",
    "sample_images",
    "train_controlnet",
]
