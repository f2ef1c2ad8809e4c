"""Draw images for given layouts with a trained ControlNet and its frozen backbone.

Sampling is diffusers' ``StableDiffusionControlNetPipeline`` (no safety checker, ``output_type="pt"``)
with a sampler derived from the backbone's scheduler config, the hint of
:mod:`segsynth.controlnet.hint` as its control image and the run's prompt; sample ``i`` uses its own
noise generator seeded ``seed + i``, so a sample does not depend on its batch. Single-channel
datasets get the channel mean of the RGB output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import ControlNetModel

from segsynth.artifacts.names import BACKBONE_JSON, CONFIG_YAML, CONTROLNET_DIR, TRAINING_DATA_JSON
from segsynth.artifacts.schemas import BackboneRecord, TrainingData, read_record
from segsynth.controlnet.config import ControlNetTrainConfig
from segsynth.controlnet.hint import hints_from_layouts
from segsynth.controlnet.load import BackboneError, load_backbone
from segsynth.config import load_config
from segsynth.diffusion.schedulers import make_sampler
from segsynth.io.hashing import model_hash
from segsynth.io.model_config import check_model_folder
from segsynth.io.untrusted import refuse_unsafe_files


@dataclass
class ControlNetRun:
    """A trained run, ready to sample.

    Attributes:
        pipeline: the ControlNet pipeline on the frozen backbone.
        config: the run's resolved config (its ``sampling`` section gives the defaults).
        training_data: ``RUN/training_data.json`` (prompts, number of classes, channels).
    """

    pipeline: Any  # diffusers StableDiffusionControlNetPipeline (its import pulls in transformers)
    config: ControlNetTrainConfig
    training_data: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.training_data["num_classes"])

    @property
    def channels(self) -> int:
        return int(self.training_data.get("channels", 3))

    @property
    def prompt(self) -> str:
        return str(self.training_data["prompts"][0])


def is_controlnet_run(path: str | Path) -> bool:
    """Whether ``path`` is a ``train-diffusion --backbone`` run folder (as opposed to a segsynth pipeline run)."""
    path = Path(path)
    return (path / CONTROLNET_DIR).is_dir() and (path / BACKBONE_JSON).is_file()


def load_controlnet(folder: str | Path) -> ControlNetModel:
    """A ``RUN/controlnet`` folder (safetensors + JSON only)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no trained ControlNet (config.json missing)")
    refuse_unsafe_files(folder, BackboneError)
    try:
        check_model_folder(folder, ControlNetModel)
    except ValueError as exc:
        raise BackboneError(str(exc)) from None
    try:
        return ControlNetModel.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported with its folder
        raise BackboneError(f"{folder}: not a loadable ControlNet ({type(exc).__name__}: {exc})") from None


def load_controlnet_run(run: str | Path, backbone: str | Path | None = None, device: torch.device | str | None = None,
                        verify_backbone: bool = True) -> ControlNetRun:
    """Load ``RUN/controlnet`` on the backbone it was trained on.

    Args:
        run: a ``train-diffusion --backbone`` run folder.
        backbone: the backbone folder, if it moved since training (default: the path in ``RUN/backbone.json``).
        device: where to sample (default: the GPU when there is one; the backbone is kept in bf16 there).
        verify_backbone: check that the backbone's safetensors have the sha256 recorded at training.

    Raises:
        BackboneError: the backbone differs from the one the ControlNet was trained on, or does not load.
    """
    run = Path(run)
    for name in (CONFIG_YAML, TRAINING_DATA_JSON, BACKBONE_JSON):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run}: not a train-diffusion --backbone run ({name} missing)")
    config = load_config(ControlNetTrainConfig, run / CONFIG_YAML)
    training_data = read_record(run / TRAINING_DATA_JSON, TrainingData)
    if training_data.num_classes is None or not training_data.prompts:
        raise ValueError(f"{run / TRAINING_DATA_JSON}: a ControlNet run records its num_classes and prompts")
    recorded = read_record(run / BACKBONE_JSON, BackboneRecord)
    folder = Path(backbone) if backbone is not None else Path(recorded.path)
    if verify_backbone and (folder.is_dir() and model_hash(folder) != recorded.sha256):
        raise BackboneError(f"{folder}: not the backbone {run / CONTROLNET_DIR} was trained on (sha256 of its "
                            f"safetensors differs from {run / BACKBONE_JSON})")
    frozen = load_backbone(folder, recorded.variant)
    from diffusers import StableDiffusionControlNetPipeline  # after load_backbone checked transformers is there

    controlnet = load_controlnet(run / CONTROLNET_DIR)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipeline = StableDiffusionControlNetPipeline(
        vae=frozen.vae, text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer, unet=frozen.unet,
        controlnet=controlnet, scheduler=make_sampler(config.sampling.sampler, frozen.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device, dtype)
    pipeline.set_progress_bar_config(disable=True)
    return ControlNetRun(pipeline, config, training_data.model_dump(exclude_unset=True))


@torch.no_grad()
def sample_images(
    run: str | Path | ControlNetRun,
    masks: torch.Tensor | np.ndarray,
    images: torch.Tensor | np.ndarray | None = None,
    prompt: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    conditioning_scale: float | None = None,
    sampler: str | None = None,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """Images for ``masks`` ``(B, H, W)`` (labels 0..K-1), H and W divisible by 8.

    Args:
        run: a run folder or a loaded :class:`ControlNetRun`.
        masks: the layouts.
        images: real images ``(B, C, H, W)`` in [0, 1] aligned with ``masks``: their edges join the
            hint's edges channel (variants of a real image); None: the mask boundary only.
        prompt: default: the prompt of the run's (first) dataset.
        steps / guidance_scale / conditioning_scale / sampler / seed: default: the run's ``sampling`` config.
        seeds: one noise seed per mask instead of ``seed + i`` (so a sample does not depend on its batch).

    Returns:
        float32 ``(B, C, H, W)`` in [0, 1] on the CPU, C the dataset's channels (1 or 3).
    """
    loaded = run if isinstance(run, ControlNetRun) else load_controlnet_run(run)
    s = loaded.config.sampling
    pipeline = loaded.pipeline
    if sampler is not None and sampler != s.sampler:
        pipeline.scheduler = make_sampler(sampler, pipeline.scheduler.config)
    hints = hints_from_layouts(masks, loaded.num_classes, images, loaded.config.data.edge_sigma)
    size, height, width = hints.shape[0], hints.shape[2], hints.shape[3]
    device = pipeline.device
    first = s.seed if seed is None else seed
    seeds = [first + i for i in range(size)] if seeds is None else list(seeds)
    if len(seeds) != size:
        raise ValueError(f"got {len(seeds)} seeds for {size} masks")
    generators = [torch.Generator(device=device).manual_seed(value) for value in seeds]
    result = pipeline(
        prompt=[prompt if prompt is not None else loaded.prompt] * size, image=hints.to(device, pipeline.dtype),
        height=height, width=width, num_inference_steps=s.steps if steps is None else steps,
        guidance_scale=s.guidance_scale if guidance_scale is None else guidance_scale,
        controlnet_conditioning_scale=s.conditioning_scale if conditioning_scale is None else conditioning_scale,
        generator=generators, output_type="pt",
    ).images
    result = result.float().clamp(0, 1).cpu()
    return result.mean(1, keepdim=True) if loaded.channels == 1 else result
