"""Training objective: targets, Min-SNR weights against hand-computed values, condition drops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.training_utils import compute_snr
from torch import nn

from segsynth.config import ConfigError, parse_config
from segsynth.diffusion.objective import ObjectiveConfig, diffusion_loss, make_train_scheduler, min_snr_weights

torch.set_num_threads(1)


class ZeroModel(nn.Module):
    """Predicts zeros and records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, noisy, timesteps, layout, style_images, drop):
        self.calls.append((noisy, timesteps, layout, style_images, drop))
        return torch.zeros_like(noisy) + self.bias


def hand_alphas_cumprod(t: int = 1000) -> np.ndarray:
    betas = np.linspace(1e-4, 0.02, t, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def batch(b: int = 4, n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return {
        "image": torch.rand(b, 1, 8, 8, generator=g),
        "mask": torch.randint(0, 2, (b, 8, 8), generator=g),
        "style_images": torch.rand(b, n, 1, 8, 8, generator=g),
    }


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_hand_computed_values(prediction_type):
    scheduler = make_train_scheduler(ObjectiveConfig(prediction_type=prediction_type))
    t = torch.tensor([0, 10, 100, 300, 999])
    ac = hand_alphas_cumprod()[t.numpy()]
    snr = ac / (1 - ac)
    gamma = 5.0
    expected = np.minimum(snr, gamma) / (snr if prediction_type == "epsilon" else snr + 1)
    got = min_snr_weights(compute_snr(scheduler, t), gamma, prediction_type).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3)  # float32 alphas: 1 - ac(0) = 1e-4 loses digits
    # spot values: t=0 has SNR ~ 1e4, so the weight is gamma/SNR (eps) or gamma/(SNR+1) (v); t=999 is below gamma
    assert snr[0] > 1e3 and snr[-1] < gamma
    if prediction_type == "epsilon":
        assert got[-1] == pytest.approx(1.0)
    else:
        assert got[-1] == pytest.approx(snr[-1] / (snr[-1] + 1), rel=1e-4)


def test_min_snr_rejects_unknown_prediction_type():
    with pytest.raises(ValueError, match="sample"):
        min_snr_weights(torch.ones(2), 5.0, "sample")


@pytest.mark.parametrize("prediction_type,gamma,loss", [("epsilon", None, "l2"), ("epsilon", 5.0, "l2"), ("v_prediction", 5.0, "l1")])
def test_loss_replays_the_generator_and_weights_each_sample(prediction_type, gamma, loss):
    cfg = ObjectiveConfig(prediction_type=prediction_type, min_snr_gamma=gamma, loss=loss)
    scheduler = make_train_scheduler(cfg)
    model, data = ZeroModel(), batch()
    out = diffusion_loss(model, scheduler, data, cfg, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)  # replay: timesteps, noise, drops in this order
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(data["image"].shape, generator=g)
    ac = torch.from_numpy(hand_alphas_cumprod()[t.numpy()]).float().view(-1, 1, 1, 1)
    x0 = data["image"] * 2 - 1
    noisy = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    target = noise if prediction_type == "epsilon" else ac.sqrt() * noise - (1 - ac).sqrt() * x0
    per_sample = (target**2 if loss == "l2" else target.abs()).mean(dim=(1, 2, 3))
    snr = (ac / (1 - ac)).flatten()
    if gamma is None:
        weights = torch.ones(4)
    elif prediction_type == "epsilon":
        weights = snr.clamp(max=gamma) / snr
    else:
        weights = snr.clamp(max=gamma) / (snr + 1)

    got_noisy, got_t, got_layout, got_style, _ = model.calls[0]
    assert torch.equal(got_t, t)
    assert torch.allclose(got_noisy, noisy, atol=1e-5)
    assert got_layout is data["mask"] and got_style is data["style_images"]
    assert out["loss"].item() == pytest.approx((weights * per_sample).mean().item(), rel=1e-4)
    assert out["loss_unweighted"].item() == pytest.approx(per_sample.mean().item(), rel=1e-4)
    assert out["loss"].requires_grad and not out["loss_unweighted"].requires_grad


def test_condition_drops_are_independent_with_their_own_probabilities():
    cfg = ObjectiveConfig(cond_drop={"style": 0.3, "layout": 0.6})
    model = ZeroModel()
    data = batch(b=4000, n=1)
    out = diffusion_loss(model, make_train_scheduler(cfg), data, cfg, torch.Generator().manual_seed(0))
    drop = model.calls[0][4]
    style, layout = drop["style"].float(), drop["layout"].float()
    assert style.mean().item() == pytest.approx(0.3, abs=0.03)
    assert layout.mean().item() == pytest.approx(0.6, abs=0.03)
    assert (style * layout).mean().item() == pytest.approx(0.18, abs=0.03)  # independent: 0.3 * 0.6
    assert out["drop_style"].item() == pytest.approx(style.mean().item())


def test_same_generator_same_loss_and_missing_style_passes_none():
    cfg = ObjectiveConfig()
    scheduler = make_train_scheduler(cfg)
    data = batch()
    del data["style_images"]
    model = ZeroModel()
    a = diffusion_loss(model, scheduler, data, cfg, torch.Generator().manual_seed(3))["loss"]
    b = diffusion_loss(model, scheduler, data, cfg, torch.Generator().manual_seed(3))["loss"]
    assert torch.equal(a, b)
    assert model.calls[0][3] is None


def test_scheduler_follows_the_objective_and_mismatch_is_refused():
    cfg = ObjectiveConfig(prediction_type="v_prediction", num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    scheduler = make_train_scheduler(cfg)
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.num_train_timesteps == 50
    with pytest.raises(ValueError, match="scheduler predicts 'v_prediction' but the objective asks for 'epsilon'"):
        diffusion_loss(ZeroModel(), scheduler, batch(), ObjectiveConfig(prediction_type="epsilon"), None)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"cond_drop": {"style": 1.5}}, "cond_drop.style"),
        ({"cond_drop": {"colour": 0.1}}, "cond_drop.colour: unknown key"),
        ({"min_snr_gamma": 0}, "min_snr_gamma"),
        ({"prediction_type": "sample"}, "prediction_type"),
    ],
)
def test_objective_config_rejects_bad_values(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(ObjectiveConfig, data, "objective.yaml")
