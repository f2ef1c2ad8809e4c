"""Training objective: noise the images, drop conditions, predict epsilon or v, weight by Min-SNR-γ.

The objective takes the model as an argument and returns a dict of named terms, so training logs
show what moves (guided-diffusion style). Every random draw (timesteps, noise, condition drops)
comes from the one ``generator`` passed in, so a resumed run replays exactly.

Data-parallel training (``share=(rank, world)``): every process seeds the same generator, draws
each random tensor for the whole global batch of ``world * b`` samples and keeps its own rows
``rank::world``. Those are the global positions of the samples the process holds (the trainer
deals sample ``i`` of rank ``r`` to position ``r + world * i``), so W processes of batch ``b``
noise, time and drop every sample exactly as one process of batch ``W * b`` does, and the same
seed gives the same model whatever the number of processes. Independent per-process streams
would be just as random, but the result would then depend on how many processes ran.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from diffusers.utils.torch_utils import randn_tensor
from pydantic import Field
from torch.func import functional_call

from segsynth.config import StrictModel

PredictionType = Literal["epsilon", "v_prediction"]


class CondDrop(StrictModel):
    """Independent per-sample probabilities of replacing a condition by its learned null (for CFG).

    ``edge`` and ``text`` apply only to models built with those conditions (``model.edge``,
    ``model.text``); for others they draw nothing.
    """

    style: float = Field(0.25, ge=0.0, le=1.0)
    layout: float = Field(0.0, ge=0.0, le=1.0)
    edge: float = Field(0.1, ge=0.0, le=1.0)
    text: float = Field(0.1, ge=0.0, le=1.0)


class ObjectiveConfig(StrictModel):
    """What the denoiser learns and how the loss is weighted.

    Attributes:
        prediction_type: ``v_prediction`` (Salimans & Ho, 2022) or ``epsilon`` (the noise). v is the
            default: with few training steps, an epsilon model's x0 estimate near t = T is its noise
            error times 1/sqrt(alpha_bar) (~150x for the linear schedule) and sampling diverges: on
            the toy task of ``benchmarks/style_injection.py`` after 400 steps, 87 % of the sampled
            pixels are clipped at 0 or 1 for epsilon vs 0.4 % for v (``--injections time
            --prediction-types v_prediction epsilon``; ``benchmarks/results/style_injection_objective.json``).
        min_snr_gamma: γ of Min-SNR weighting (Hang et al., 2023); None weights all timesteps equally.
        cond_drop: per-condition drop probabilities (STEDM drops the style with p = 0.25).
        loss: ``l2`` or ``l1`` (STEDM uses L1) between prediction and target.
        style_consistency: weight of :func:`style_consistency_terms` (0: off, the default). The
            diffusion loss alone never asks the sample to *look like* its references: a denoiser
            can lower it by ignoring the style vector. This term asks the model's own style encoder
            to see the references' style in the x0 prediction. Pixel models only.
        num_train_timesteps: T of the noise schedule.
        beta_schedule: diffusers beta schedule name.
        beta_start: first beta.
        beta_end: last beta.
    """

    prediction_type: PredictionType = "v_prediction"
    min_snr_gamma: float | None = Field(5.0, gt=0.0)
    cond_drop: CondDrop = Field(default_factory=CondDrop)
    loss: Literal["l2", "l1"] = "l2"
    style_consistency: float = Field(0.0, ge=0.0)
    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: float = Field(1e-4, gt=0.0, lt=1.0)
    beta_end: float = Field(0.02, gt=0.0, lt=1.0)


def make_train_scheduler(cfg: ObjectiveConfig) -> DDPMScheduler:
    """The training noise schedule; samplers are derived from its config (same betas and target).

    ``clip_sample`` is off so every sampler treats the prediction the same way, and timesteps are
    spaced ``trailing`` so few-step sampling starts from pure noise (Lin et al., 2023).
    """
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        timestep_spacing="trailing",
    )


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample Min-SNR-γ loss weights.

    The weight turns each target's loss into ``min(SNR, γ)`` times the x0-loss: for an epsilon
    target that is ``min(SNR, γ) / SNR``; for a v target, whose loss is ``(SNR + 1)`` times the
    x0-loss, it is ``min(SNR, γ) / (SNR + 1)``.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"Min-SNR weighting supports epsilon and v_prediction, got {prediction_type!r}")


def prediction_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """What the network regresses at timesteps ``t``: the noise (``epsilon``) or the velocity
    (``v_prediction``), as the scheduler's ``prediction_type`` says.

    Raises:
        ValueError: another prediction type (``sample`` is not supported by these trainers).
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"prediction_type {kind!r} of the scheduler is not supported (epsilon or v_prediction)")


def predicted_x0(scheduler: DDPMScheduler, noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean image implied by a network prediction at timesteps ``t``.

    With ``x_t = a x0 + s eps`` (``a = sqrt(alpha_bar_t)``, ``s = sqrt(1 - alpha_bar_t)``):
    ``x0 = (x_t - s eps) / a`` for epsilon and ``x0 = a x_t - s v`` for v prediction.
    """
    alpha_bar = scheduler.alphas_cumprod.to(device=noisy.device, dtype=torch.float32)[t]
    a = alpha_bar.sqrt().view(-1, *([1] * (noisy.ndim - 1)))
    s = (1.0 - alpha_bar).sqrt().view_as(a)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (noisy.float() - s * pred.float()) / a
    if kind == "v_prediction":
        return a * noisy.float() - s * pred.float()
    raise ValueError(f"prediction_type {kind!r} of the scheduler is not supported (epsilon or v_prediction)")


def style_consistency_terms(encoder: torch.nn.Module, x0_pred: torch.Tensor, style_images: torch.Tensor) -> torch.Tensor:
    """Per-sample ``1 - cos(E(x0_pred), mean_n E(ref_n))`` in the style encoder ``E``'s space.

    Both sides are the encoder's per-image vectors (before the aggregator, which pools references
    only). As the judge here the encoder is frozen: it is applied to the prediction with detached
    weights and the references' side is a constant, so the term cannot be lowered by collapsing the
    encoder (mapping every image to one vector would zero it without any style transferred). The
    gradient reaches the denoiser and, through the style vector the denoiser was conditioned on,
    the encoder as the generator's input.

    Args:
        encoder: the model's :class:`~segsynth.models.style.StyleEncoder`.
        x0_pred: ``(B, C, H, W)`` x0 predictions in the model's [-1, 1] space.
        style_images: ``(B, N, C, H, W)`` references in [0, 1].
    """
    frozen = {name: value.detach() for name, value in encoder.named_parameters()}
    frozen.update({name: value.detach() for name, value in encoder.named_buffers()})
    image = ((x0_pred + 1.0) / 2.0).clamp(0.0, 1.0).to(style_images.dtype)
    own = functional_call(encoder, frozen, (image,))
    with torch.no_grad():
        b, n = style_images.shape[:2]
        refs = encoder(style_images.flatten(0, 1)).unflatten(0, (b, n)).mean(1)
    return 1.0 - F.cosine_similarity(own.float(), refs.float(), dim=1)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand((n,), generator=generator, device=_gen_device(generator)).to(device)


def _own_rows(draw: torch.Tensor, share: tuple[int, int]) -> torch.Tensor:
    """This process's rows ``rank::world`` of a draw made for the whole global batch."""
    rank, world = share
    return draw if world == 1 else draw[rank::world]


def diffusion_loss(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    batch: dict[str, torch.Tensor],
    cfg: ObjectiveConfig,
    generator: torch.Generator | None = None,
    share: tuple[int, int] = (0, 1),
) -> dict[str, torch.Tensor]:
    """One training loss evaluation.

    One function on purpose: the random draws (timesteps, noise, condition drops) must happen in
    this order for a resumed or multi-process run to repeat them, and splitting it would scatter that order.

    Args:
        model: a :class:`~segsynth.models.SegSynthModel` (or a wrapper with the same ``forward``).
        scheduler: the training scheduler from :func:`make_train_scheduler`.
        batch: ``{"image": (B, C, H, W) in [0, 1] (or ``"latents"``: its scaled autoencoder latents,
            denoised instead), "mask": (B, H, W) int64, "style_images":
            (B, N, C, H, W) in [0, 1] (optional), "edge": (B, 1, H, W) in [0, 1] (edge models),
            "text": (B, text_dim) prompt embeddings (text models), "labelled": (B,) bool (with
            ``data.include_unlabeled``: False drops the sample's layout and edge map)}``.
        cfg: the objective.
        generator: source of all randomness (timesteps, noise, condition drops, in this order;
            the edge and text drops are drawn after the others, only when the batch has them).
        share: ``(rank, world)`` of data-parallel training, where ``batch`` holds global positions
            ``rank::world`` of a ``world * B`` batch: every draw is made for the whole global batch
            (the same on every process, given the same generator state) and this process keeps
            its rows. ``(0, 1)`` draws for ``batch`` alone.

    Returns:
        ``{"loss": weighted scalar to backpropagate, "loss_unweighted": plain mean loss,
        "snr_weight": mean Min-SNR weight, "drop_style": fraction of samples with the null style,
        "drop_layout": same for the layout, "drop_edge" / "drop_text": same, when present}`` (all
        but ``loss`` detached).
    """
    if scheduler.config.prediction_type != cfg.prediction_type:
        raise ValueError(
            f"scheduler predicts {scheduler.config.prediction_type!r} but the objective asks for {cfg.prediction_type!r}"
        )
    image = batch["image"]
    if image.ndim != 4:
        raise ValueError(f"batch['image'] must be (B, C, H, W), got {tuple(image.shape)}")
    rank, world = share
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"share must be (rank, world) with 0 <= rank < world, got {share}")
    # Latent models: the trainer puts the autoencoder's scaled latents of ``image`` in the batch.
    x0 = batch["latents"] if batch.get("latents") is not None else image * 2.0 - 1.0
    device = x0.device
    n = x0.shape[0] * world  # the global batch: every process makes the same draws, in the same order
    num_t = scheduler.config.num_train_timesteps
    t = _own_rows(torch.randint(0, num_t, (n,), generator=generator, device=_gen_device(generator)), share).to(device)
    noise = _own_rows(randn_tensor((n, *x0.shape[1:]), generator=generator, device=device, dtype=x0.dtype), share)
    drop = {
        "style": _own_rows(_uniform(n, generator, device), share) < cfg.cond_drop.style,
        "layout": _own_rows(_uniform(n, generator, device), share) < cfg.cond_drop.layout,
    }
    extra = {}
    for name in ("edge", "text"):  # optional conditions: drawn only when present, after the others
        if batch.get(name) is not None:
            drop[name] = _own_rows(_uniform(n, generator, device), share) < getattr(cfg.cond_drop, name)
            extra[name] = batch[name]
    if batch.get("labelled") is not None:  # unlabelled images have no layout (nor edge map) to condition on
        unlabelled = ~batch["labelled"].to(device=device, dtype=torch.bool)
        drop["layout"] = drop["layout"] | unlabelled
        if "edge" in drop:
            drop["edge"] = drop["edge"] | unlabelled
    noisy = scheduler.add_noise(x0, noise, t)
    target = prediction_target(scheduler, x0, noise, t)
    pred = model(noisy, t, batch["mask"], batch.get("style_images"), drop, **extra)
    err = F.mse_loss(pred.float(), target.float(), reduction="none") if cfg.loss == "l2" else (pred.float() - target.float()).abs()
    per_sample = err.mean(dim=(1, 2, 3))
    if cfg.min_snr_gamma is None:
        weights = torch.ones_like(per_sample)
    else:
        weights = min_snr_weights(compute_snr(scheduler, t), cfg.min_snr_gamma, cfg.prediction_type).to(per_sample)
    loss = (weights * per_sample).mean()
    consistency = {}
    style_images = batch.get("style_images")
    if cfg.style_consistency > 0 and style_images is not None:
        if batch.get("latents") is not None:
            raise ValueError("objective.style_consistency needs a pixel model: the style encoder cannot read latents")
        encoder = getattr(model, "module", model).style_encoder  # DDP wraps the model in .module
        keep = (~drop["style"]).to(per_sample)
        term = style_consistency_terms(encoder, predicted_x0(scheduler, noisy, pred, t), style_images) * keep
        loss = loss + cfg.style_consistency * term.mean()
        consistency["style_consistency"] = term.mean().detach()
    return {
        "loss": loss,
        "loss_unweighted": per_sample.mean().detach(),
        "snr_weight": weights.mean().detach(),
        "drop_style": drop["style"].float().mean(),
        "drop_layout": drop["layout"].float().mean(),
        **{f"drop_{name}": drop[name].float().mean() for name in extra},
        **consistency,
    }
