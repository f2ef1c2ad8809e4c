"""Style-consistency term of the objective: x0 from the prediction, off at weight 0, trainable."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_DIFFUSION_MODEL
from segsynth.diffusion.objective import (
    ObjectiveConfig,
    diffusion_loss,
    make_train_scheduler,
    predicted_x0,
    prediction_target,
    style_consistency_terms,
)
from segsynth.models import ModelConfig, SegSynthModel

torch.set_num_threads(1)


def tiny_model(seed: int = 0) -> SegSynthModel:
    torch.manual_seed(seed)
    return SegSynthModel.from_config(ModelConfig(image_channels=3, num_classes=2, **TINY_DIFFUSION_MODEL))


def toy_batch(b: int = 4) -> dict[str, torch.Tensor]:
    """Targets and references of two flat colours: sample i is in the colour of its references."""
    colours = torch.tensor([[0.9, 0.2, 0.6], [0.2, 0.7, 0.3]])[torch.arange(b) % 2]
    flat = colours[:, :, None, None].expand(b, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    return {
        "image": (flat + 0.05 * torch.randn(b, 3, 16, 16, generator=g)).clamp(0, 1),
        "mask": torch.randint(0, 2, (b, 16, 16), generator=g),
        "style_images": (flat[:, None] + 0.05 * torch.randn(b, 2, 3, 16, 16, generator=g)).clamp(0, 1),
    }


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_x0_inverts_the_true_target(prediction_type):
    scheduler = make_train_scheduler(ObjectiveConfig(prediction_type=prediction_type))
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(5, 3, 8, 8, generator=g) * 2 - 1, torch.randn(5, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 300, 700, 990])
    noisy = scheduler.add_noise(x0, noise, t)
    recovered = predicted_x0(scheduler, noisy, prediction_target(scheduler, x0, noise, t), t)
    # epsilon at t = 990 divides by sqrt(alpha_bar) ~ 0.006: float32 rounding of x_t is magnified
    torch.testing.assert_close(recovered, x0, atol=2e-3 if prediction_type == "epsilon" else 1e-5, rtol=0)


def test_weight_zero_adds_nothing_and_a_weight_changes_the_denoiser_gradient():
    batch = toy_batch()
    grads, totals = {}, {}
    for weight in (0.0, 1.0):
        model = tiny_model()
        cfg = ObjectiveConfig(style_consistency=weight, cond_drop={"style": 0.0})
        terms = diffusion_loss(model, make_train_scheduler(cfg), batch, cfg, torch.Generator().manual_seed(3))
        assert ("style_consistency" in terms) == (weight > 0)
        terms["loss"].backward()
        grads[weight] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        totals[weight] = terms
    assert float(totals[1.0]["style_consistency"]) > 0
    assert float(totals[1.0]["loss"].detach()) == pytest.approx(float(totals[0.0]["loss"].detach() + totals[1.0]["style_consistency"]), rel=1e-5)
    unet = [n for n in grads[0.0] if n.startswith("unet.")]
    assert any(not torch.allclose(grads[0.0][n], grads[1.0][n]) for n in unet)


def test_the_judging_encoder_is_frozen_and_the_image_gets_the_gradient():
    model = tiny_model()
    batch = toy_batch()
    x0_pred = (torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1).requires_grad_()
    style_consistency_terms(model.style_encoder, x0_pred, batch["style_images"]).sum().backward()
    assert all(p.grad is None for p in model.style_encoder.parameters())  # it cannot collapse to lower the term
    assert x0_pred.grad.abs().sum() > 0


def test_style_consistency_of_dropped_samples_is_zero():
    model = tiny_model()
    cfg = ObjectiveConfig(style_consistency=1.0, cond_drop={"style": 1.0})
    terms = diffusion_loss(model, make_train_scheduler(cfg), toy_batch(), cfg, torch.Generator().manual_seed(3))
    assert terms["drop_style"] == 1.0 and terms["style_consistency"] == 0.0


def test_latent_batches_are_refused():
    cfg = ObjectiveConfig(style_consistency=1.0)
    batch = {**toy_batch(), "latents": torch.zeros(4, 3, 16, 16)}
    with pytest.raises(ValueError, match="pixel model"):
        diffusion_loss(tiny_model(), make_train_scheduler(cfg), batch, cfg, torch.Generator().manual_seed(0))


def test_training_on_the_term_lowers_it():
    model = tiny_model()
    cfg = ObjectiveConfig(style_consistency=1.0, cond_drop={"style": 0.0})
    scheduler = make_train_scheduler(cfg)
    batch = toy_batch()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)

    def term() -> torch.Tensor:  # the same timesteps and noise at every evaluation
        return diffusion_loss(model, scheduler, batch, cfg, torch.Generator().manual_seed(5))["style_consistency"]

    before = float(term())
    for _ in range(25):
        loss = diffusion_loss(model, scheduler, batch, cfg, torch.Generator().manual_seed(5))["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = float(term())
    assert after < 0.5 * before, (before, after)
