"""Sampling pipeline: guidance identities, samplers, per-sample generators, save/load round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from segsynth.diffusion.objective import ObjectiveConfig, make_train_scheduler
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.config import ConfigError, load_config
from segsynth.diffusion.schedulers import SAMPLERS, make_sampler
from segsynth.models import ModelConfig, SegSynthModel

torch.set_num_threads(1)


def tiny_pipeline(injection: str = "time", spade: bool = False, prediction_type: str = "epsilon",
                  channels: int = 1) -> SegSynthPipeline:
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=16,
        image_channels=channels,
        num_classes=3,
        block_out_channels=(8, 16),
        attention_levels=(False, True),
        style={"encoder_channels": (8, 16), "dim": 16, "num_refs": 2, "injection": injection},
        spade=spade,
    )
    model = SegSynthModel.from_config(cfg).eval()
    with torch.no_grad():  # move the learned nulls away from zero so every branch differs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pipe = SegSynthPipeline.from_model(model, make_train_scheduler(ObjectiveConfig(prediction_type=prediction_type)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(42)
    return torch.randint(0, 3, (b, 16, 16), generator=g), torch.rand(b, 2, 1, 16, 16, generator=g)


def test_guidance_scale_one_equals_the_plain_conditional_loop():
    pipe = tiny_pipeline()
    layout, refs = inputs()
    out = pipe(layout, refs, num_inference_steps=4, sampler="ddim", style_guidance_scale=1.0,
               layout_guidance_scale=1.0, guidance_rescale=0.7, generator=torch.Generator().manual_seed(0)).images

    solver = make_sampler("ddim", pipe.scheduler.config)
    solver.set_timesteps(4)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        style = pipe.encode_style(refs)
        for t in solver.timesteps:
            x = solver.step(pipe.unet(x, t.repeat(2), layout, style), t, x).prev_sample
    assert torch.equal(out, (x / 2 + 0.5).clamp(0, 1))


def branch_predictions(pipe, x, t, layout, style):
    """e(L,S), e(L,∅), e(∅,∅) from separate single-branch UNet calls."""
    b = x.shape[0]
    yes, no = torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)
    with torch.no_grad():
        full = pipe.unet(x, t, layout, style)
        layout_only = pipe.unet(x, t, layout, style, drop_style=no, drop_layout=yes)
        none = pipe.unet(x, t, layout, style, drop_style=no, drop_layout=no)
    return full, layout_only, none


@pytest.mark.parametrize("injection", ["time", "cross_attention"])
def test_batched_guidance_matches_the_formula_and_rescale_zero_is_plain_cfg(injection):
    pipe = tiny_pipeline(injection)
    layout, refs = inputs()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([600, 600])
    with torch.no_grad():
        style = pipe.encode_style(refs)
        full, layout_only, none = branch_predictions(pipe, x, t, layout, style)
        style_cfg = pipe.guided_prediction(x, t[0], layout, style, 1.5, 1.0, 0.0)
        both_cfg = pipe.guided_prediction(x, t[0], layout, style, 1.5, 2.0, 0.0)
        rescaled = pipe.guided_prediction(x, t[0], layout, style, 3.0, 1.0, 1.0)
    assert not torch.allclose(full, layout_only, atol=1e-4)
    assert torch.allclose(style_cfg, layout_only + 1.5 * (full - layout_only), atol=1e-5)
    assert torch.allclose(both_cfg, none + 2.0 * (layout_only - none) + 1.5 * (full - layout_only), atol=1e-5)
    # phi = 1 restores the per-sample standard deviation of the conditional prediction
    assert torch.allclose(rescaled.std(dim=(1, 2, 3)), full.std(dim=(1, 2, 3)), rtol=1e-4)


def test_rescale_zero_over_a_whole_sampling_run_equals_plain_cfg():
    pipe = tiny_pipeline(prediction_type="v_prediction")  # bounded x0 estimates: no blow-up of rounding
    layout, refs = inputs()
    common = dict(num_inference_steps=3, sampler="ddim", style_guidance_scale=2.0)
    plain = pipe(layout, refs, guidance_rescale=0.0, generator=torch.Generator().manual_seed(1), **common).images
    solver = make_sampler("ddim", pipe.scheduler.config)
    solver.set_timesteps(3)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        style = pipe.encode_style(refs)
        for t in solver.timesteps:
            full, layout_only, _ = branch_predictions(pipe, x, t.repeat(2), layout, style)
            x = solver.step(layout_only + 2.0 * (full - layout_only), t, x).prev_sample
    assert torch.allclose(plain, (x / 2 + 0.5).clamp(0, 1), atol=1e-5)
    rescaled = pipe(layout, refs, guidance_rescale=0.7, generator=torch.Generator().manual_seed(1), **common).images
    assert not torch.allclose(plain, rescaled)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_samplers_share_the_training_schedule_and_are_deterministic(sampler):
    pipe = tiny_pipeline(prediction_type="v_prediction")
    solver = make_sampler(sampler, pipe.scheduler.config)
    assert solver.config.prediction_type == "v_prediction"
    assert torch.allclose(solver.alphas_cumprod, pipe.scheduler.alphas_cumprod)
    layout, refs = inputs()
    a = pipe(layout, refs, num_inference_steps=3, sampler=sampler, generator=torch.Generator().manual_seed(5)).images
    b = pipe(layout, refs, num_inference_steps=3, sampler=sampler, generator=torch.Generator().manual_seed(5)).images
    assert a.shape == (2, 1, 16, 16) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_per_sample_generators_make_samples_independent_of_the_batch():
    pipe = tiny_pipeline(injection="both")
    layout, refs = inputs(b=3)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = pipe(layout, refs, num_inference_steps=3, generator=gens([10, 11, 12])).images
    alone = pipe(layout[1:2], refs[1:2], num_inference_steps=3, generator=gens([11])).images
    reordered = pipe(layout[[2, 1]], refs[[2, 1]], num_inference_steps=3, generator=gens([12, 11])).images
    # bitwise on CPU: generation's byte-identical resume relies on it
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(batch[1], reordered[1])
    assert torch.equal(batch[2], reordered[0])


@pytest.mark.parametrize("spade", [False, True])
def test_save_load_round_trip_gives_identical_samples_without_pickle(tmp_path: Path, spade: bool):
    pipe = tiny_pipeline(injection="both", spade=spade)
    layout, refs = inputs()
    before = pipe(layout, refs, num_inference_steps=3, generator=torch.Generator().manual_seed(9)).images
    pipe.save_pretrained(tmp_path / "pipe")
    files = sorted(p.relative_to(tmp_path / "pipe").as_posix() for p in (tmp_path / "pipe").rglob("*") if p.is_file())
    assert files == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "style_aggregator/config.json",
        "style_aggregator/diffusion_pytorch_model.safetensors",
        "style_encoder/config.json",
        "style_encoder/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    assert json.loads((tmp_path / "pipe/unet/config.json").read_text())["spade"] is spade
    loaded = SegSynthPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    after = loaded(layout, refs, num_inference_steps=3, generator=torch.Generator().manual_seed(9)).images
    assert torch.equal(before, after)


def test_loading_refuses_pickled_weights(tmp_path: Path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    weights = tmp_path / "pipe/unet/diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(EnvironmentError, match="safetensors"):
        SegSynthPipeline.from_pretrained(tmp_path / "pipe")


def test_null_style_runs_and_bad_inputs_are_refused():
    pipe = tiny_pipeline()
    layout, refs = inputs()
    out = pipe(layout, None, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        pipe(layout, refs, sampler="euler")
    with pytest.raises(ValueError, match="multiples of 2"):
        pipe(torch.zeros(2, 15, 15, dtype=torch.long), None)
    with pytest.raises(ValueError, match="B = 2"):
        pipe(layout, refs[:1])
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        pipe(layout, refs, generator=[torch.Generator()] * 3)
    with pytest.raises(ValueError, match="guidance_rescale"):
        pipe(layout, refs, guidance_rescale=1.5)


def test_plain_diffusers_loader_builds_the_same_pipeline(tmp_path: Path):
    pipe = tiny_pipeline()
    layout, refs = inputs()
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe/model_index.json").read_text())["_class_name"] == "SegSynthPipeline"
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded) is SegSynthPipeline
    loaded.set_progress_bar_config(disable=True)
    run = lambda p: p(layout, refs, num_inference_steps=2, generator=torch.Generator().manual_seed(3)).images  # noqa: E731
    assert torch.equal(run(pipe), run(loaded))
    # in a fresh interpreter, `import segsynth.diffusion` is what makes the plain loader find the class
    script = ("import segsynth.diffusion, sys; from diffusers import DiffusionPipeline; "
              "print(type(DiffusionPipeline.from_pretrained(sys.argv[1])).__name__)")
    fresh = subprocess.run([sys.executable, "-c", script, str(tmp_path / "pipe")], capture_output=True, text=True)
    assert fresh.stdout.split() == ["SegSynthPipeline"], fresh.stderr[-2000:]


def test_output_types_and_return_dict_follow_diffusers():
    pipe = tiny_pipeline()
    layout, refs = inputs()

    def run(**kwargs):
        return pipe(layout, refs, num_inference_steps=2, generator=torch.Generator().manual_seed(4), **kwargs)

    pt = run().images
    assert pt.shape == (2, 1, 16, 16) and pt.device.type == "cpu" and torch.equal(pt, run(output_type="pt").images)
    as_np = run(output_type="np").images
    assert isinstance(as_np, np.ndarray) and np.array_equal(as_np, pt.permute(0, 2, 3, 1).numpy())
    pil = run(output_type="pil").images
    assert [(image.mode, image.size) for image in pil] == [("L", (16, 16))] * 2
    assert np.array_equal(np.asarray(pil[1]), np.round(as_np[1, ..., 0] * 255).astype(np.uint8))
    as_tuple = run(return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], pt)
    with pytest.raises(ValueError, match="output_type must be one of"):
        run(output_type="latent")
    two_channel = tiny_pipeline(channels=2)
    with pytest.raises(ValueError, match="'pil' needs 1, 3 or 4 channels"):
        two_channel(layout, None, output_type="pil")


def test_every_config_accepts_exactly_the_samplers_that_exist() -> None:
    """One sampler name type: each config refuses a name without a factory and accepts each factory's."""
    from typing import get_args

    from segsynth.controlnet.config import ControlNetTrainConfig
    from segsynth.benchmark import BenchmarkConfig
    from segsynth.config import SamplerName
    from segsynth.diffusion.config import DiffusionTrainConfig
    from segsynth.diffusion.schedulers import SAMPLERS
    from segsynth.synth.config import GenerationConfig

    assert set(get_args(SamplerName)) == set(SAMPLERS)
    for cls, key, base in ((GenerationConfig, "sampler", {"n": 1}), (BenchmarkConfig, "generation.sampler", {}),
                           (DiffusionTrainConfig, "sampling.sampler", {}), (ControlNetTrainConfig, "sampling.sampler", {})):
        for name in SAMPLERS:
            assert load_config(cls, None, {**base, key: name}) is not None
        with pytest.raises(ConfigError, match="sampler"):
            load_config(cls, None, {**base, key: "euler"})
