"""Pretrained-backbone option (DiffBoost's setup): a ControlNet on a frozen, user-supplied Stable Diffusion.

``segsynth train-diffusion DATA --backbone SD_FOLDER --out RUN`` trains a diffusers
``ControlNetModel`` on a hint made from the mask and the edge map, with the dataset's prompt;
the backbone never changes and is never downloaded. Modules, one job each:

- :mod:`~segsynth.controlnet.config`: the strict config (:class:`ControlNetTrainConfig`);
- :mod:`~segsynth.controlnet.load`: check and load the backbone folder (safetensors + JSON only);
- :mod:`~segsynth.controlnet.hint`: the 3-channel hint (labels, edges, boundary);
- :mod:`~segsynth.controlnet.prompts`: prompt embeddings from the backbone's CLIP text encoder;
- :mod:`~segsynth.controlnet.train`: resumable training (:func:`train_controlnet`);
- :mod:`~segsynth.controlnet.sample`: images for layouts (:func:`sample_images`).

The base package does not need transformers; loading a backbone does (``pip install 'segsynth[backbone]'``).
See ``docs/backbone.md``.
"""

from __future__ import annotations

from segsynth.controlnet.config import ControlNetTrainConfig
from segsynth.controlnet.hint import HINT_CHANNELS, hints_from_layouts, make_hint
from segsynth.controlnet.load import BackboneError, check_backbone_folder, load_backbone
from segsynth.controlnet.sample import load_controlnet_run, sample_images
from segsynth.controlnet.train import train_controlnet
from segsynth.renamed import renamed_attributes

__all__ = [
    "HINT_CHANNELS",
    "BackboneError",
    "ControlNetTrainConfig",
    "check_backbone_folder",
    "hints_from_layouts",
    "load_backbone",
    "load_controlnet_run",
    "make_hint",
    "sample_images",
    "train_controlnet",
]

__getattr__ = renamed_attributes(__name__, {"BackboneTrainConfig": "ControlNetTrainConfig"})
