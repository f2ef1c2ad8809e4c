"""Denoiser, style encoder and aggregators: shapes over the condition grid, training, invariances."""

from __future__ import annotations

import itertools

import pytest
import torch

from segsynth.config import ConfigError, parse_config
from segsynth.diffusion.objective import ObjectiveConfig, diffusion_loss, make_train_scheduler
from segsynth.models import LayoutStyleUNet, ModelConfig, SegSynthModel, StyleAggregator, StyleEncoder

torch.set_num_threads(1)


def tiny_config(**overrides) -> ModelConfig:
    style = {"encoder_channels": (8, 16), "dim": 16, "num_refs": 2, **overrides.pop("style", {})}
    base = dict(
        image_size=16,
        image_channels=1,
        num_classes=3,
        block_out_channels=(8, 16),
        attention_levels=(False, True),
        style=style,
    )
    return ModelConfig(**{**base, **overrides})


GRID = list(itertools.product(["mean", "max", "linear", "attention"], ["time", "cross_attention", "both"], [False, True]))


@pytest.mark.parametrize("aggregator,injection,spade", GRID)
def test_forward_shapes_for_every_condition_combination(aggregator, injection, spade):
    torch.manual_seed(0)
    model = SegSynthModel.from_config(tiny_config(style={"aggregator": aggregator, "injection": injection}, spade=spade))
    b = 3
    noisy, t = torch.randn(b, 1, 16, 16), torch.tensor([0, 10, 999])
    layout = torch.randint(0, 3, (b, 16, 16))
    counts = [2] if aggregator == "linear" else [1, 2, 3]
    outputs = [model(noisy, t, layout, None)]
    for n in counts:
        style = torch.rand(b, n, 1, 16, 16)
        drop = {"style": torch.tensor([True, False, False]), "layout": torch.tensor([False, True, False])}
        outputs += [model(noisy, t, layout, style), model(noisy, t, layout, style, drop)]
    for out in outputs:
        assert out.shape == (b, 1, 16, 16)
        assert torch.isfinite(out).all()
    assert not torch.allclose(outputs[0], outputs[1]), "the style vector must change the prediction"


def test_dropped_style_equals_no_style_and_dropped_layout_ignores_the_mask():
    torch.manual_seed(0)
    model = SegSynthModel.from_config(tiny_config(spade=True)).eval()
    with torch.no_grad():  # give the null embeddings and SPADE convs non-trivial values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    noisy, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 500])
    style = torch.rand(2, 2, 1, 16, 16)
    layout_a, layout_b = torch.randint(0, 3, (2, 2, 16, 16))
    all_true = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(model(noisy, t, layout_a, style, {"style": all_true}), model(noisy, t, layout_a, None))
        dropped_a = model(noisy, t, layout_a, style, {"layout": all_true})
        dropped_b = model(noisy, t, layout_b, style, {"layout": all_true})
        assert torch.allclose(dropped_a, dropped_b)
        assert not torch.allclose(model(noisy, t, layout_a, style), model(noisy, t, layout_b, style))


def test_spade_starts_as_identity_of_the_plain_network():
    cfg_plain, cfg_spade = tiny_config(), tiny_config(spade=True)
    torch.manual_seed(0)
    plain = SegSynthModel.from_config(cfg_plain)
    spade = SegSynthModel.from_config(cfg_spade)
    missing, unexpected = spade.load_state_dict(_spade_keys(plain.state_dict()), strict=False)
    assert not unexpected and all(k.split(".")[-2] in ("0", "gamma", "beta") for k in missing)
    args = (torch.randn(2, 1, 16, 16), torch.tensor([3, 300]), torch.randint(0, 3, (2, 16, 16)), torch.rand(2, 2, 1, 16, 16))
    with torch.no_grad():
        assert torch.allclose(plain(*args), spade(*args), atol=1e-6)


def _spade_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename decoder norm weights of a plain model to the wrapped names of a SPADE model."""
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("unet.inner.up_blocks") and parts[-2] in ("norm1", "norm2") and "resnets" in parts:
            key = ".".join(parts[:-1] + ["norm", parts[-1]])
        renamed[key] = value
    return renamed


def test_style_encoder_trains_with_the_diffusion_loss():
    torch.manual_seed(0)
    model = SegSynthModel.from_config(tiny_config())
    objective = ObjectiveConfig(cond_drop={"style": 0.0, "layout": 0.0})
    scheduler = make_train_scheduler(objective)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.style_encoder.state_dict().items()}
    batch = {"image": torch.rand(4, 1, 16, 16), "mask": torch.randint(0, 3, (4, 16, 16)), "style_images": torch.rand(4, 2, 1, 16, 16)}
    loss = diffusion_loss(model, scheduler, batch, objective, torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    grads = [p.grad for p in model.style_encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    assert model.style_aggregator.query.grad.abs().sum() > 0
    optimizer.step()
    after = model.style_encoder.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) == set(before), f"unchanged style-encoder tensors: {set(before) - set(changed)}"


def test_attention_aggregator_is_permutation_invariant_and_accepts_any_n():
    torch.manual_seed(0)
    agg = StyleAggregator(dim=16, mode="attention", num_refs=3).eval()
    vectors = torch.randn(2, 5, 16)
    with torch.no_grad():
        out = agg(vectors)
        assert torch.allclose(out, agg(vectors[:, torch.randperm(5)]), atol=1e-6)
        for n in (1, 2, 7):
            assert agg(torch.randn(2, n, 16)).shape == (2, 16)
        # a set of identical vectors pools to the same result whatever its size
        single = torch.randn(2, 1, 16)
        assert torch.allclose(agg(single), agg(single.expand(-1, 4, -1)), atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_parameter_free_aggregators_match_their_reduction(mode):
    vectors = torch.randn(3, 4, 8)
    expected = vectors.mean(1) if mode == "mean" else vectors.amax(1)
    assert torch.equal(StyleAggregator(dim=8, mode=mode)(vectors), expected)


def test_linear_aggregator_needs_exactly_num_refs():
    agg = StyleAggregator(dim=8, mode="linear", num_refs=3)
    assert agg(torch.randn(2, 3, 8)).shape == (2, 8)
    with pytest.raises(ValueError, match="built for 3 references, got 2"):
        agg(torch.randn(2, 2, 8))


def test_style_encoder_output_and_validation():
    enc = StyleEncoder(image_channels=3, channels=(8, 16), dim=12, norm_num_groups=4)
    assert enc(torch.rand(5, 3, 16, 24)).shape == (5, 12)
    with pytest.raises(ValueError, match="norm_num_groups 8 must divide"):
        StyleEncoder(channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="aggregator mode"):
        StyleAggregator(mode="median")
    with pytest.raises(ValueError, match="injection"):
        LayoutStyleUNet(injection="concat")


def test_bad_inputs_are_named():
    model = SegSynthModel.from_config(tiny_config())
    noisy, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\], got \[3, 3\]"):
        model(noisy, t, torch.full((2, 16, 16), 3))
    with pytest.raises(ValueError, match="layout must be"):
        model(noisy, t, torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown condition"):
        model(noisy, t, torch.zeros(2, 16, 16, dtype=torch.long), drop={"text": torch.ones(2, dtype=torch.bool)})


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"image_size": 18, "block_out_channels": (8, 16, 16), "attention_levels": (False, False, True)}, "not divisible by 2\\*\\*\\(levels-1\\) \\* latent_factor = 4"),
        ({"style": {"num_refs": 0}}, "style.num_refs"),
        ({"attention_levels": (False,)}, "attention_levels has 1 entries"),
        ({"attention_levels": (False, False), "style": {"injection": "cross_attention"}}, "needs at least one attention level"),
        ({"block_out_channels": (8, 12)}, "not divisible by norm_num_groups"),
        ({"style": {"aggregator": "median"}}, "style.aggregator"),
        ({"spade": True, "colour": 1}, "colour: unknown key"),
    ],
)
def test_model_config_rejects_impossible_values(overrides, message):
    data = tiny_config().model_dump()
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=message):
        parse_config(ModelConfig, data, "model.yaml")
