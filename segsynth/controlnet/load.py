"""Load a user-supplied Stable Diffusion folder (diffusers layout) safely, offline and frozen.

The folder is what ``StableDiffusionPipeline.save_pretrained`` writes (or a local copy of a
Stable Diffusion 1.x/2.x repository in diffusers layout)::

    BACKBONE/model_index.json
    BACKBONE/vae/           config.json + diffusion_pytorch_model.safetensors    (AutoencoderKL)
    BACKBONE/unet/          config.json + diffusion_pytorch_model.safetensors    (UNet2DConditionModel)
    BACKBONE/text_encoder/  config.json + model.safetensors                      (transformers CLIPTextModel)
    BACKBONE/tokenizer/     tokenizer files (vocab.json + merges.txt or tokenizer.json)  (CLIPTokenizer)
    BACKBONE/scheduler/     scheduler_config.json

Safety: any pickle or Python file anywhere in the folder is refused before anything is read
(the same list as :func:`segsynth.synth.generate.check_pipeline_folder`), each component is
loaded by its fixed class with ``use_safetensors=True`` and ``local_files_only=True`` (so
``model_index.json`` cannot name foreign code that would run), and Hugging Face hub access is
switched off. Other entries of ``model_index.json`` (``safety_checker``, ``feature_extractor``) are
never loaded. transformers is imported only here, when a backbone is loaded: it comes with the
``backbone`` extra (``pip install 'segsynth[backbone]'``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from segsynth.io.json_file import read_json_object
from segsynth.io.untrusted import refuse_unsafe_files

#: ``model_index.json`` entry -> the (library, class names) segsynth accepts for it.
COMPONENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "vae": ("diffusers", ("AutoencoderKL",)),
    "unet": ("diffusers", ("UNet2DConditionModel",)),
    "text_encoder": ("transformers", ("CLIPTextModel",)),
    "tokenizer": ("transformers", ("CLIPTokenizer", "CLIPTokenizerFast")),
    "scheduler": ("diffusers", ()),  # any diffusers scheduler: only its config is read
}
#: The file of each component that must be there.
COMPONENT_FILES = {"vae": "config.json", "unet": "config.json", "text_encoder": "config.json",
                   "scheduler": "scheduler_config.json"}
INSTALL_HINT = "pip install 'segsynth[backbone]'"


class BackboneError(ValueError):
    """The backbone folder cannot be used (or transformers is missing); the message names the file and why."""


@dataclass
class Backbone:
    """The frozen parts of a Stable Diffusion folder (all in eval mode, ``requires_grad`` off)."""

    path: Path
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    scheduler_config: dict[str, Any]

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell along one side (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """What image sides must be divisible by: the VAE factor times the UNet's downsampling."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Backbone:
        for module in (self.vae, self.unet, self.text_encoder):
            module.to(device=device, dtype=dtype)
        return self


#: What to keep of a downloaded backbone, added to the refusal message.
KEEP_HINT = " (keep only the *.safetensors, *.json and *.txt files of the backbone)"


def check_backbone_folder(path: str | Path) -> dict[str, Any]:
    """Check that ``path`` is a safe Stable Diffusion folder with every component segsynth loads.

    Returns:
        ``model_index.json`` as a dict.

    Raises:
        BackboneError: a pickle or Python file, an unreadable ``model_index.json``, a missing
            component (entry or subfolder) or one of an unexpected class, naming it.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise BackboneError(f"{folder}: no such backbone folder (a local Stable Diffusion folder in diffusers layout)")
    refuse_unsafe_files(folder, BackboneError, KEEP_HINT)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise BackboneError(f"{index_path}: missing; the backbone must be a diffusers Stable Diffusion folder "
                            "(what StableDiffusionPipeline.save_pretrained writes)")
    index = read_json_object(index_path, BackboneError)
    for name, (library, classes) in COMPONENTS.items():
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] is not None):
            raise BackboneError(f"{index_path}: the backbone has no {name!r} component; segsynth needs "
                                f"{', '.join(COMPONENTS)}")
        if entry[0] != library or (classes and entry[1] not in classes):
            wanted = f"{library} {' or '.join(classes)}" if classes else f"a {library} scheduler"
            raise BackboneError(f"{index_path}: component {name!r} is {entry!r}; segsynth loads {wanted}")
        sub = folder / name
        if not sub.is_dir():
            raise BackboneError(f"{sub}: missing; model_index.json lists the {name!r} component but its folder is not there")
        needed = COMPONENT_FILES.get(name)
        if needed and not (sub / needed).is_file():
            raise BackboneError(f"{sub / needed}: missing; the {name!r} component is incomplete")
    return index


def _import_transformers() -> Any:
    """transformers, offline, or a :class:`BackboneError` saying what to install."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError as exc:
        raise BackboneError(f"the --backbone option needs transformers (CLIP text encoder and tokenizer): "
                            f"{INSTALL_HINT} ({exc})") from exc
    return transformers


def load_backbone(path: str | Path, variant: str | None = None) -> Backbone:
    """Load the frozen VAE, UNet, CLIP text encoder, tokenizer and scheduler config of ``path``.

    Nothing is downloaded: every component comes from its subfolder, safetensors only.

    Args:
        path: the Stable Diffusion folder.
        variant: read ``*.<variant>.safetensors`` (e.g. ``fp16``) instead of the plain files.

    Raises:
        BackboneError: see :func:`check_backbone_folder`; also a component that does not load, a
            UNet whose input is not the VAE's latent (inpainting, SDXL-style extra embeddings) or
            whose cross-attention width is not the text encoder's.
    """
    folder = Path(path).resolve()
    check_backbone_folder(folder)
    transformers = _import_transformers()
    common = {"use_safetensors": True, "local_files_only": True, **({"variant": variant} if variant else {})}
    loaders = {
        "vae": lambda: AutoencoderKL.from_pretrained(str(folder / "vae"), **common),
        "unet": lambda: UNet2DConditionModel.from_pretrained(str(folder / "unet"), **common),
        "text_encoder": lambda: transformers.CLIPTextModel.from_pretrained(str(folder / "text_encoder"), **common),
        "tokenizer": lambda: transformers.CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True),
    }
    loaded: dict[str, Any] = {}
    for name, load in loaders.items():
        try:
            loaded[name] = load()
        except Exception as exc:  # noqa: BLE001 - any loader failure is reported with its component
            raise BackboneError(f"{folder / name}: the {name!r} component does not load ({type(exc).__name__}: {exc})") from None
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    try:
        scheduler_config = json.loads(scheduler_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackboneError(f"{scheduler_path}: not readable JSON ({exc})") from None
    backbone = Backbone(folder, loaded["vae"], loaded["unet"], loaded["text_encoder"], loaded["tokenizer"],
                        scheduler_config)
    check_compatible(backbone)
    for module in (backbone.vae, backbone.unet, backbone.text_encoder):
        module.requires_grad_(False).eval()
    return backbone


def check_compatible(backbone: Backbone) -> None:
    """Refuse combinations the ControlNet path cannot train (naming the folder and the numbers)."""
    unet, vae = backbone.unet.config, backbone.vae.config
    if vae.in_channels != 3:
        raise BackboneError(f"{backbone.path / 'vae'}: the VAE codes {vae.in_channels}-channel images; "
                            "a Stable Diffusion backbone codes RGB (3)")
    if unet.in_channels != vae.latent_channels:
        raise BackboneError(f"{backbone.path / 'unet'}: the UNet takes {unet.in_channels} input channels but the VAE "
                            f"makes {vae.latent_channels}-channel latents (inpainting UNets are not supported)")
    if getattr(unet, "addition_embed_type", None) is not None:
        raise BackboneError(f"{backbone.path / 'unet'}: the UNet needs extra embeddings ({unet.addition_embed_type!r}, "
                            "e.g. SDXL); only Stable Diffusion 1.x/2.x-style UNets are supported")
    hidden = backbone.text_encoder.config.hidden_size
    if unet.cross_attention_dim != hidden:
        raise BackboneError(f"{backbone.path / 'unet'}: cross_attention_dim {unet.cross_attention_dim} but the text "
                            f"encoder makes {hidden}-d states")
