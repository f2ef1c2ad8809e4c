"""Sampling: layout + style references -> images, with classifier-free guidance per condition.

The pipeline owns the denoising loop and nothing else (diffusers' split). ``__call__`` reads as
its steps: check inputs -> encode style -> prepare noise -> loop with guidance -> postprocess.

Guidance with two droppable conditions follows the nested form of Brooks et al. (2023,
InstructPix2Pix)::

    pred = e(∅, ∅) + s_layout · (e(L, ∅) - e(∅, ∅)) + s_style · (e(L, S) - e(L, ∅))

optionally rescaled towards the conditional prediction's standard deviation (Lin et al., 2023,
φ = ``guidance_rescale``; STEDM uses s_style = 1.5, φ = 0.7). Models with an edge and/or text
condition extend the chain in the order layout -> edge -> text -> style: with e_k the prediction
keeping the first k conditions, ``pred = e_0 + Σ_k s_k · (e_k - e_{k-1})``. Only the passes a
setting needs are run, all in one batched UNet call; with every scale at 1 it is exactly the
conditional pass.

Layouts larger than the training size are denoised in overlapping tiles
(:mod:`segsynth.diffusion.tiling`); latent models (trained with ``--autoencoder``) carry their
frozen ``AutoencoderKL`` as the ``vae`` component and decode the final latents with it.

diffusers resolves the ``_class_name`` of a ``model_index.json`` inside its own namespace (or in
a ``.py`` file shipped in the model folder and run with ``trust_remote_code``, which segsynth's
folders never hold). Importing this module registers :class:`SegSynthPipeline` in that
namespace, so after ``import segsynth.diffusion`` (or any import of the pipeline, e.g.
``from segsynth import SegSynthPipeline``) the plain ``DiffusionPipeline.from_pretrained(folder)``
builds one; each component is found by the importable module its entry names. A bare
``import segsynth`` does not do it: the package imports its parts lazily so that the command line
starts without loading torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict, get_args

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline
from diffusers.guiders.guider_utils import rescale_noise_cfg
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor

from segsynth.cpu_share import rebalance_threads
from segsynth.config import SamplerName
from segsynth.diffusion.schedulers import SAMPLERS, make_sampler
from segsynth.autoencoder.autoencoder import decode_latents
from segsynth.diffusion.tiling import DEFAULT_TILES_PER_CALL, Window, tiled_prediction
from segsynth.models.model import SegSynthModel
from segsynth.models.style import StyleAggregator, StyleEncoder, encode_style
from segsynth.models.text import encode_prompts
from segsynth.models.unet import LayoutStyleUNet

#: The nested guidance chain: each condition is guided against the prediction without it and
#: without every condition after it.
GUIDANCE_ORDER = ("layout", "edge", "text", "style")


OutputType = Literal["pt", "np", "pil"]


class SamplingSettings(TypedDict):
    """The keywords of :meth:`SegSynthPipeline.__call__` that a recipe fixes for every batch (the
    rest are the batch's own inputs), typed so that a caller holding them in a config maps them to
    the pipeline's names in one place and passes ``**settings``."""

    num_inference_steps: int
    sampler: str
    style_guidance_scale: float
    layout_guidance_scale: float
    guidance_rescale: float
    edge_guidance_scale: float
    text_guidance_scale: float
    tile_overlap: int | None


@dataclass
class SegSynthPipelineOutput(BaseOutput):
    """The generated images, in [0, 1], as the call's ``output_type`` asked: ``pt`` a ``(B, C, H, W)``
    float tensor on the CPU, ``np`` a ``(B, H, W, C)`` float array, ``pil`` a list of B images."""

    images: torch.Tensor | np.ndarray | list[PIL.Image.Image]


class SegSynthPipeline(DiffusionPipeline):
    """Generate images for given layouts in the style of given reference images.

    Saved with ``save_pretrained(dir)`` as one folder per part (``config.json`` + safetensors)
    and ``model_index.json``; ``from_pretrained(dir)`` needs no other arguments and never
    unpickles anything.

    Args:
        unet: the denoiser.
        style_encoder: per-reference encoder.
        style_aggregator: pools the N reference vectors.
        scheduler: the *training* scheduler; samplers are derived from its config per call.
        vae: the frozen autoencoder of a latent model (None in pixel space).
    """

    model_cpu_offload_seq = "style_encoder->style_aggregator->unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        unet: LayoutStyleUNet,
        style_encoder: StyleEncoder,
        style_aggregator: StyleAggregator,
        scheduler: DDPMScheduler,
        vae: AutoencoderKL | None = None,
    ) -> None:
        super().__init__()
        if (vae is None) != (unet.latent_factor == 1):
            raise ValueError("a latent UNet needs its autoencoder (vae) and a pixel-space UNet takes none")
        if vae is not None and vae.config.latent_channels != unet.sample_channels:
            raise ValueError(f"the vae makes {vae.config.latent_channels}-channel latents, the UNet denoises {unet.sample_channels}")
        self.register_modules(
            unet=unet, style_encoder=style_encoder, style_aggregator=style_aggregator, scheduler=scheduler, vae=vae
        )
        # [-1, 1] model space -> pt / np / pil, as every diffusers image pipeline does (never resizes)
        self.image_processor = VaeImageProcessor(do_resize=False)

    @classmethod
    def from_model(cls, model: SegSynthModel, scheduler: DDPMScheduler, vae: AutoencoderKL | None = None) -> SegSynthPipeline:
        """Wrap a trained :class:`SegSynthModel` (its modules are shared, not copied)."""
        return cls(model.unet, model.style_encoder, model.style_aggregator, scheduler, vae)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, **kwargs) -> SegSynthPipeline:
        """Load a saved pipeline folder; only safetensors weights are accepted (no pickle).

        diffusers' per-component loading bar is silenced: our commands draw their own progress.
        """
        kwargs.setdefault("use_safetensors", True)
        bar_was_on = diffusers_logging.is_progress_bar_enabled()
        diffusers_logging.disable_progress_bar()
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        finally:
            if bar_was_on:
                diffusers_logging.enable_progress_bar()

    def check_inputs(
        self,
        layout: torch.Tensor,
        style_images: torch.Tensor | None,
        num_inference_steps: int,
        sampler: str,
        scales: tuple[float, float, float],
        generator: torch.Generator | list[torch.Generator] | None,
        edge: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        extra_scales: tuple[float, float] = (1.0, 1.0),
        output_type: str = "pt",
    ) -> None:
        """Reject malformed inputs before any compute, naming the argument."""
        cfg = self.unet.config
        if output_type not in get_args(OutputType):
            raise ValueError(f"output_type must be one of {get_args(OutputType)}, got {output_type!r}")
        if output_type == "pil" and cfg.image_channels not in (1, 3, 4):
            raise ValueError(f"output_type 'pil' needs 1, 3 or 4 channels, the model draws {cfg.image_channels}; use 'pt' or 'np'")
        b, h, w = layout.shape if layout.ndim == 3 else (0, 0, 0)
        if edge is not None:
            if not self.unet.uses_edge:
                raise ValueError("edge maps were given but this model has no edge condition")
            if tuple(edge.shape) not in ((b, h, w), (b, 1, h, w)):
                raise ValueError(f"edge must be (B, 1, H, W) = {(b, 1, h, w)}, got {tuple(edge.shape)}")
        if text is not None:
            if not self.unet.uses_text:
                raise ValueError("a prompt was given but this model has no text condition")
            if tuple(text.shape) != (b, cfg.text_dim):
                raise ValueError(f"prompt_embeds must be (B, {cfg.text_dim}) = {(b, cfg.text_dim)}, got {tuple(text.shape)}")
        if min(extra_scales) < 0:
            raise ValueError(f"edge and text guidance scales must be >= 0, got {extra_scales}")
        if layout.ndim != 3 or layout.dtype.is_floating_point:
            raise ValueError(f"layout must be an integer tensor (B, H, W), got {layout.dtype} {tuple(layout.shape)}")
        factor = 2 ** (len(cfg.block_out_channels) - 1) * self.unet.latent_factor
        if layout.shape[1] % factor or layout.shape[2] % factor:
            raise ValueError(f"layout height and width must be multiples of {factor}, got {tuple(layout.shape[1:])}")
        if style_images is not None:
            if style_images.ndim != 5 or style_images.shape[0] != layout.shape[0]:
                raise ValueError(
                    f"style_images must be (B, N, C, H, W) with B = {layout.shape[0]}, got {tuple(style_images.shape)}"
                )
            if style_images.shape[2] != cfg.image_channels:
                raise ValueError(f"style_images have {style_images.shape[2]} channels, the model expects {cfg.image_channels}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
        style_scale, layout_scale, rescale = scales
        if style_scale < 0 or layout_scale < 0 or not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance scales must be >= 0 and guidance_rescale in [0, 1], got {scales}")
        if isinstance(generator, list) and len(generator) != layout.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {layout.shape[0]}")

    def encode_style(self, style_images: torch.Tensor | None) -> torch.Tensor | None:
        """``(B, N, C, H, W)`` references in [0, 1] -> ``(B, dim)``; None means the null style."""
        if style_images is None:
            return None
        return encode_style(self.style_encoder, self.style_aggregator, style_images.to(self.device, self.unet.dtype))

    @property
    def conditions(self) -> tuple[str, ...]:
        """The model's conditions in guidance order (layout, [edge], [text], style)."""
        has = {"layout": True, "edge": self.unet.uses_edge, "text": self.unet.uses_text, "style": True}
        return tuple(name for name in GUIDANCE_ORDER if has[name])

    def guided_prediction(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        layout: torch.Tensor,
        style: torch.Tensor | None,
        style_scale: float,
        layout_scale: float,
        rescale: float,
        *,
        edge: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        edge_scale: float = 1.0,
        text_scale: float = 1.0,
    ) -> torch.Tensor:
        """The guided prediction for ``x`` ``(B, C, H, W)``, running all needed passes in one UNet call.

        Level k of the chain keeps the first k conditions (the rest get their learned nulls); a
        condition that is not given (None) is null at every level, so its term vanishes.
        """
        chain = self.conditions
        given = {"layout": True, "edge": edge is not None, "text": text is not None, "style": style is not None}
        scale = {"layout": layout_scale, "edge": edge_scale, "text": text_scale, "style": style_scale}
        n_levels = len(chain)
        needed = {n_levels}
        for k, name in enumerate(chain, start=1):
            if given[name] and scale[name] != 1.0:
                needed |= {k - 1, k}
        levels = sorted(needed, reverse=True)  # the full conditional pass first
        flags = {k: tuple(not (i < k and given[name]) for i, name in enumerate(chain)) for k in levels}
        branches = list(dict.fromkeys(flags[k] for k in levels))
        b, n = x.shape[0], len(branches)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t

        def drops(name: str) -> torch.Tensor:
            col = chain.index(name)
            return torch.tensor([branch[col] for branch in branches], device=x.device).repeat_interleave(b)

        extra: dict[str, torch.Tensor | None] = {}
        if "edge" in chain:
            extra.update(edge=None if edge is None else edge.repeat(n, *([1] * (edge.ndim - 1))), drop_edge=drops("edge"))
        if "text" in chain:
            extra.update(text=None if text is None else text.repeat(n, 1), drop_text=drops("text"))
        preds = self.unet(
            x.repeat(n, 1, 1, 1),
            t.repeat(n),
            layout.repeat(n, 1, 1),
            style=None if style is None else style.repeat(n, 1),
            drop_style=drops("style"),
            drop_layout=drops("layout"),
            **extra,
        ).float().chunk(n)  # under bf16 autocast the guidance arithmetic still runs in fp32
        if n == 1:
            return preds[0]
        pred = {k: preds[branches.index(flags[k])] for k in levels}
        ascending = levels[::-1]
        guided = pred[ascending[0]]
        for low, high in zip(ascending, ascending[1:]):
            # Between two computed levels every skipped condition has scale 1, so the terms telescope.
            s = scale[chain[high - 1]] if high == low + 1 else 1.0
            guided = guided + s * (pred[high] - pred[low])
        full = preds[0]
        return rescale_noise_cfg(guided, full, guidance_rescale=rescale) if rescale > 0 else guided

    def encode_prompt(self, prompt: str | list[str], batch: int) -> torch.Tensor:
        """Prompt(s) -> ``(B, text_dim)`` embeddings with the frozen offline encoder (cached on disk)."""
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for a batch of {batch}")
        return encode_prompts(prompts).to(self.device, self.unet.dtype)

    @torch.no_grad()
    def __call__(
        self,
        layout: torch.Tensor,
        style_images: torch.Tensor | None = None,
        *,
        num_inference_steps: int = 20,
        sampler: SamplerName = "dpmpp",
        style_guidance_scale: float = 1.5,
        layout_guidance_scale: float = 1.0,
        guidance_rescale: float = 0.7,
        generator: torch.Generator | list[torch.Generator] | None = None,
        edge: torch.Tensor | None = None,
        prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        edge_guidance_scale: float = 1.0,
        text_guidance_scale: float = 1.0,
        tile_overlap: int | None = None,
        tiles_per_call: int = DEFAULT_TILES_PER_CALL,
        output_type: OutputType = "pt",
        return_dict: bool = True,
    ) -> SegSynthPipelineOutput | tuple:
        """Draw one image per layout.

        Long because it is diffusers' ``__call__`` convention, most of it the argument list; the
        body is one linear sequence (checks, conditions, noise, the solver loop over tiles, decoding).

        Args:
            layout: ``(B, H, W)`` integer labels in ``[0, K)``; larger than the model's
                ``image_size``, it is denoised in overlapping tiles of that size.
            style_images: ``(B, N, C, h, w)`` references in [0, 1], or None (null style).
            num_inference_steps: solver steps.
            sampler: ``ddim``, ``dpmpp`` (DPM-Solver++ 2M) or ``unipc``.
            style_guidance_scale: s_style; 1 disables style guidance.
            layout_guidance_scale: s_layout; 1 disables layout guidance.
            guidance_rescale: φ of CFG-rescale; 0 is plain CFG.
            generator: one generator, or one per sample so each sample depends only on its own
                generator (independent of the rest of the batch).
            edge: ``(B, 1, H, W)`` edge maps in [0, 1] for edge models (e.g.
                :func:`segsynth.data.edges.edge_map` of the layout); None: the learned null edge.
            prompt: text for text models, one string or one per sample (encoded offline, cached).
            prompt_embeds: ``(B, text_dim)`` precomputed prompt embeddings instead of ``prompt``.
            edge_guidance_scale: s_edge; 1 disables edge guidance.
            text_guidance_scale: s_text; 1 disables text guidance.
            tile_overlap: image pixels shared by neighbouring tiles of a large layout (default a
                quarter of the tile); unused when the layout fits the model.
            tiles_per_call: tiles denoised together in one UNet call (peak memory vs. speed).
            output_type: ``pt`` (default: the layouts came as tensors, and datasets and metrics
                take tensors), ``np`` or ``pil`` (1, 3 or 4 channels), as in diffusers.
            return_dict: False returns the tuple ``(images,)``, as in diffusers.

        Returns:
            :class:`SegSynthPipelineOutput` (see there for each ``output_type``), or ``(images,)``.
        """
        scales = (style_guidance_scale, layout_guidance_scale, guidance_rescale)
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("give prompt or prompt_embeds, not both")
        if prompt is not None and not self.unet.uses_text:
            raise ValueError("a prompt was given but this model has no text condition")
        text = self.encode_prompt(prompt, layout.shape[0]) if prompt is not None else prompt_embeds
        self.check_inputs(layout, style_images, num_inference_steps, sampler, scales, generator,
                          edge, text, (edge_guidance_scale, text_guidance_scale), output_type)
        device, dtype = self.device, self.unet.dtype
        layout = layout.to(device=device, dtype=torch.long)
        style = self.encode_style(style_images)
        guide = {"edge": None if edge is None else edge.to(device, dtype),
                 "text": None if text is None else text.to(device, dtype),
                 "edge_scale": edge_guidance_scale, "text_scale": text_guidance_scale}

        solver = make_sampler(sampler, self.scheduler.config)
        solver.set_timesteps(num_inference_steps, device=device)
        f = self.unet.latent_factor
        b, (h, w) = layout.shape[0], layout.shape[1:]
        x = randn_tensor((b, self.unet.sample_channels, h // f, w // f), generator=generator, device=device, dtype=dtype)
        x = x * solver.init_noise_sigma
        tile = self.unet.config.image_size // f
        overlap = (tile // 4 if tile_overlap is None else tile_overlap // f)
        multiple = 2 ** (len(self.unet.config.block_out_channels) - 1)

        for t in self.progress_bar(solver.timesteps):
            rebalance_threads()  # this command's share of the CPUs, re-counted in the background

            def predict(x_tiles: torch.Tensor, windows: list[Window]) -> torch.Tensor:
                tiles = self._tile_inputs(windows, layout, style, guide)
                return self.guided_prediction(x_tiles, t, tiles.pop("layout"), tiles.pop("style"), *scales, **tiles)

            x = solver.step(tiled_prediction(predict, solver.scale_model_input(x, t), tile, overlap, multiple,
                                             tiles_per_call), t, x).prev_sample

        images = self.image_processor.postprocess(self.decode(x).float().cpu(), output_type)
        self.maybe_free_model_hooks()
        return SegSynthPipelineOutput(images=images) if return_dict else (images,)

    def _tile_inputs(self, windows: list[Window], layout: torch.Tensor, style: torch.Tensor | None,
                     guide: dict) -> dict:
        """The conditions of the tiles in ``windows`` (denoiser-grid slices), stacked tile-major like
        their noisy crops: layout and edge crops at image resolution, style and prompt repeated."""
        f, n = self.unet.latent_factor, len(windows)

        def crop(full: torch.Tensor) -> torch.Tensor:
            return torch.cat([full[..., r.start * f : r.stop * f, c.start * f : c.stop * f] for r, c in windows])

        return {"layout": crop(layout), "style": None if style is None else style.repeat(n, 1),
                "edge": None if guide["edge"] is None else crop(guide["edge"]),
                "text": None if guide["text"] is None else guide["text"].repeat(n, 1),
                "edge_scale": guide["edge_scale"], "text_scale": guide["text_scale"]}

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Final sample -> images in [-1, 1]: identity in pixel space, the vae decoder for latents
        (tiled by diffusers when larger than the autoencoder's tile, so memory stays bounded)."""
        if self.vae is None:
            return x
        if max(x.shape[-2:]) * self.unet.latent_factor > self.vae.config.sample_size:
            self.vae.enable_tiling()
        return decode_latents(self.vae, x)


setattr(diffusers, SegSynthPipeline.__name__, SegSynthPipeline)  # see the module docstring
