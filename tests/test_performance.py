"""GPU-efficiency helpers on the CPU (the library's and the benchmarks'): FLOP counting, fused attention, channels_last, torch.compile."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from common import channels_last_conv_inputs, flop_counter_mode, unet_call_flops, unet_inputs
from conftest import TINY_DIFFUSION_MODEL
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from monai.data import MetaTensor
from test_style_sampling import write_blob_dataset

import segsynth.diffusion.performance as performance
from segsynth.config import ConfigError, load_config
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.performance import apply_memory_format, compile_unavailable_reason, maybe_compile
from segsynth.diffusion.pipeline import SegSynthPipeline
import segsynth.diffusion.train as diffusion_train
from segsynth.diffusion.train import train_diffusion
from segsynth.models import ModelConfig, SegSynthModel

aten = torch.ops.aten


def tiny_model(seed: int = 0, **overrides) -> SegSynthModel:
    torch.manual_seed(seed)
    return SegSynthModel.from_config(ModelConfig(**{**TINY_DIFFUSION_MODEL, **overrides})).eval()


def op_flops(model: SegSynthModel, batch: int, size: int) -> dict[str, int]:
    """FLOPs per aten op of one UNet call (op names without the ``aten.`` prefix)."""
    counter = flop_counter_mode()
    kwargs = unet_inputs(model.unet, batch, size)
    with torch.no_grad(), counter:
        model.unet(**kwargs)
    return {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def test_unet_flops_are_positive_and_linear_in_batch() -> None:
    model = tiny_model()
    one, two = unet_call_flops(model, 1), unet_call_flops(model, 2)
    assert one > 0
    # Every op of the UNet works per sample (convolutions, attention within an image, the
    # time/style MLPs), so twice the batch is twice the work.
    assert two / one == pytest.approx(2.0, rel=0.01)


def test_flops_scale_with_pixels_for_convolutions_and_quadratically_for_attention() -> None:
    # Doubling the image side: a convolution costs a fixed amount per output pixel, so its FLOPs
    # grow exactly 4x. The whole UNet is not conv-only (diffusers' bottleneck always has a
    # self-attention block, and the tiny model attends at its second level); attention over
    # H*W tokens grows 16x, while the time/style MLPs do not grow at all. So the conv part is
    # checked at 4x, the attention part at 16x, and the total must lie between the two.
    model = tiny_model()
    small, large = op_flops(model, 2, 16), op_flops(model, 2, 32)
    assert large["convolution"] / small["convolution"] == pytest.approx(4.0, rel=0.01)
    attention = next(name for name in small if "scaled_dot_product" in name)  # counted on CPU too
    assert small[attention] > 0
    assert large[attention] / small[attention] == pytest.approx(16.0, rel=0.01)
    ratio = sum(large.values()) / sum(small.values())
    assert 4.0 < ratio < 16.0
    assert unet_call_flops(model, 2, 32) == sum(large.values())


@pytest.mark.parametrize("injection", ["time", "cross_attention"])
def test_unet_attention_uses_pytorch_fused_sdpa(injection: str) -> None:
    model = tiny_model(style={**TINY_DIFFUSION_MODEL["style"], "injection": injection})
    processors = {type(m.processor) for m in model.unet.modules() if isinstance(m, Attention)}
    assert processors == {AttnProcessor2_0}  # scaled_dot_product_attention: flash / memory-efficient kernels
    counts = op_flops(model, 1, 16)
    assert any("scaled_dot_product" in name for name in counts)
    assert "bmm" not in counts  # no unfused q @ k^T / softmax / @ v path


def test_channels_last_model_gives_the_same_output() -> None:
    model = tiny_model()
    nhwc = apply_memory_format(copy.deepcopy(model), True)
    assert nhwc.unet.inner.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.style_encoder is not None and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in nhwc.parameters() if p.ndim == 4)
    kwargs = unet_inputs(model.unet, 3)
    refs = torch.rand(3, TINY_DIFFUSION_MODEL["style"]["num_refs"], 1, 16, 16)
    with torch.no_grad():
        expected = model(kwargs["sample"], kwargs["timestep"], kwargs["layout"], refs)
        got = nhwc(kwargs["sample"], kwargs["timestep"], kwargs["layout"], refs)
        # The inputs stay NCHW: the first convolution (of the concatenated image + layout) turns
        # them into NHWC, and every later convolution then sees NHWC activations.
        nhwc_inputs, convs = channels_last_conv_inputs(nhwc, lambda: nhwc.unet(**kwargs))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert nhwc_inputs == convs - 1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def tiny_train_config(**overrides) -> DiffusionTrainConfig:
    """fp32 (``auto`` is bf16 on a CPU with native bf16): these tests bound float-rounding differences."""
    base = {f"model.{k}": v for k, v in TINY_DIFFUSION_MODEL.items()}
    return load_config(DiffusionTrainConfig, None, {
        **base, "train.mixed_precision": "no", "train.batch_size": 3, "train.warmup": 1, "train.log_every": 1, "train.sample_every": 0,
        "train.steps": 2, "train.checkpoint_every": 2, "sampling.steps": 2, "sampling.grid_rows": 2, **overrides,
    })


#: Most weights that may differ (by over 1e-6) between two runs that are "the same training".
SAME_TRAINING_DIFFERING = 0.05


def weights(run: Path) -> dict[str, torch.Tensor]:
    """The trained UNet's weights of a diffusion run folder."""
    return SegSynthPipeline.from_pretrained(run / "pipeline").unet.state_dict()


def weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(fraction of weights differing by more than 1e-6, mean absolute difference) of ``a`` and ``b``."""
    assert a.keys() == b.keys()
    diff = torch.cat([(b[name].float() - a[name].float()).abs().flatten() for name in a])
    return float((diff > 1e-6).float().mean()), float(diff.mean())


def test_trainer_with_channels_last_trains_like_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_blob_dataset(tmp_path / "blobs", {"a": 3, "b": 2}, size=20)
    built: list[torch.nn.Module] = []
    real = performance.apply_memory_format

    def spy(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
        built.append(model)
        return real(model, channels_last)

    monkeypatch.setattr(diffusion_train, "apply_memory_format", spy)
    plain = train_diffusion(data, tiny_train_config(), tmp_path / "plain")
    nhwc = train_diffusion(data, tiny_train_config(**{"train.channels_last": True}), tmp_path / "nhwc")
    assert len(built) == 2
    assert built[1].unet.inner.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    def losses(run: Path) -> list[float]:
        return [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]

    assert losses(nhwc) == pytest.approx(losses(plain), rel=1e-4)
    # Adam moves each weight by about lr in the direction of its gradient's sign, so a gradient
    # near zero whose rounding differs in NHWC may move the other way: such a weight can differ
    # by up to 2 * lr per step, and a bound on the largest difference says little. What separates
    # "the same training" from "another one" is how many weights differ, and the bound below is
    # checked against a run that IS another training: same seed and data, lr 10 % lower. It must
    # fail the very criterion the NHWC run passes, or the tolerance could not tell them apart.
    cfg = tiny_train_config()
    a = weights(plain)
    other = train_diffusion(data, tiny_train_config(**{"train.lr": 0.9 * cfg.train.lr}), tmp_path / "lower-lr")
    nhwc_differ, nhwc_mean = weight_difference(a, weights(nhwc))
    other_differ, other_mean = weight_difference(a, weights(other))
    assert nhwc_differ < SAME_TRAINING_DIFFERING, f"{nhwc_differ:.1%} of the weights differ"
    assert nhwc_mean < 1e-6
    assert other_differ > 10 * SAME_TRAINING_DIFFERING and other_mean > 10 * nhwc_mean, (other_differ, other_mean)
    assert float(max((weights(nhwc)[k].float() - a[k].float()).abs().max() for k in a)) <= 2 * cfg.train.lr * cfg.train.steps
    # A speed setting: a run may resume with it switched.
    resumed = train_diffusion(data, tiny_train_config(**{"train.steps": 3}), nhwc, resume=True)
    assert [json.loads(line)["step"] for line in (resumed / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_compile_refuses_clearly_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(performance.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match=r"train\.compile.*C\+\+ compiler"):
        maybe_compile(tiny_model(), True, "cpu")
    assert maybe_compile(model := tiny_model(), False, "cpu") is model  # off: untouched, nothing checked


def test_compiled_unet_receives_plain_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    # The trainer's batches are MONAI MetaTensors, which compiled autograd cannot trace; the
    # compiled UNet must see plain tensors (checked without compiling: the hook is what matters).
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: None)
    model = maybe_compile(tiny_model().train(), True, "cpu")
    seen: list[type] = []
    model.unet.inner.register_forward_pre_hook(lambda _m, args: seen.extend(type(a) for a in args))
    kwargs = unet_inputs(model.unet, 2)
    model(MetaTensor(kwargs["sample"]), kwargs["timestep"], MetaTensor(kwargs["layout"]), torch.rand(2, 2, 1, 16, 16))
    assert seen and all(t is torch.Tensor for t in seen)


def skip_without_compile() -> None:
    reason = compile_unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(f"torch.compile unavailable on this CPU: {reason}")


def test_compiled_unet_gives_the_same_output() -> None:
    skip_without_compile()
    model = tiny_model()
    compiled = maybe_compile(copy.deepcopy(model), True, "cpu")
    assert compiled.state_dict().keys() == model.state_dict().keys()  # compiled in place: same names
    kwargs = unet_inputs(model.unet, 2)
    with torch.no_grad():
        expected = model.unet(**kwargs)
        got = compiled.unet(**kwargs)  # compiles the inner UNet on first call (~40 s on 2 CPU cores)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_training_step_matches_eager_on_metatensor_inputs() -> None:
    # Forward + backward compile in about 100 s on 2 CPU cores (about 15 s once inductor's cache
    # holds the graphs), hence slow.
    skip_without_compile()
    model = tiny_model().train()
    compiled = maybe_compile(copy.deepcopy(model), True, "cpu")
    kwargs = unet_inputs(model.unet, 2)
    args = (MetaTensor(kwargs["sample"]), kwargs["timestep"], MetaTensor(kwargs["layout"]),
            torch.rand(2, TINY_DIFFUSION_MODEL["style"]["num_refs"], 1, 16, 16))
    for m in (model, compiled):
        m(*args).float().square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads
    for name, p in compiled.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
