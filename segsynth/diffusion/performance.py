"""GPU efficiency helpers: memory format, compilation, FLOP counting and the device's matmul rate.

Training options ``train.channels_last`` and ``train.compile`` go through :func:`apply_memory_format`
and :func:`maybe_compile`; neither changes what a training step computes (up to float rounding),
so both may change when a run is resumed. :func:`unet_call_flops` and :func:`measured_matmul_tflops`
turn a measured speed into the fraction of the hardware's matmul rate it achieves
(``benchmarks/bench_gpu.py``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from segsynth.config import ConfigError
from segsynth.models.model import SegSynthModel
from segsynth.models.unet import LayoutStyleUNet

aten = torch.ops.aten


def apply_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """Store every 4-D weight of ``model`` in ``torch.channels_last`` (NHWC) order, in place.

    Why: on tensor-core GPUs cuDNN runs convolutions natively in NHWC; with NCHW weights and
    activations every convolution transposes its input and output. The inputs need no
    conversion: a convolution whose weight is channels_last returns a channels_last output even
    for an NCHW input (PyTorch picks the output format from input *or* weight), so the first
    convolution converts the few-channel input once and the layout then propagates through the
    network. Parameters keep their identity (``Module.to`` replaces ``.data``), so an optimiser
    or EMA built before or after this call sees the same tensors; safetensors checkpoints store
    them contiguously either way.

    Args:
        model: any module (the whole :class:`SegSynthModel`: its style encoder is a CNN too).
        channels_last: False leaves the model untouched.

    Returns:
        ``model`` itself.
    """
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def fused_optimizer_options(device: torch.device | str) -> dict[str, bool]:
    """``{"fused": True}`` where PyTorch has a fused Adam/AdamW kernel for ``device``, else ``{}``.

    Why: the default CPU AdamW updates each of the model's ~200 tensors in a Python loop; the
    fused kernel does all of them in one pass (the tiny recipe's optimiser step took 10 ms
    looped, 1.6 ms fused, on one core). The update is the same up to float rounding, and
    deterministic, so resumption stays exact.
    """
    return {"fused": True} if torch.device(device).type in ("cpu", "cuda", "mps") else {}


def compile_target(model: nn.Module) -> nn.Module:
    """The module :func:`maybe_compile` compiles: the diffusers UNet inside our denoiser.

    ``LayoutStyleUNet.forward`` checks the layout's labels on the host (``int(layout.min())``),
    which would break the graph; the diffusers UNet it wraps holds all the convolutions and
    attention, so compiling it captures the expensive part in one graph.
    """
    if isinstance(model, SegSynthModel):
        return model.unet.inner
    if isinstance(model, LayoutStyleUNet):
        return model.inner
    return model


def compile_unavailable_reason(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run on ``device`` here, or None when it can.

    Compilation fails lazily, at the first forward, with a long backend traceback; checking its
    prerequisites up front turns that into one clear message before any work starts.
    """
    device = torch.device(device)
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return "TorchDynamo does not support this Python version or platform"
    except Exception as exc:  # noqa: BLE001 - any import failure means compile is unavailable
        return f"torch._dynamo cannot be imported ({exc})"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "this PyTorch has no Triton support"
        if not has_triton():
            return "Triton (inductor's GPU code generator) is not installed or does not support this GPU"
    elif device.type == "cpu":
        compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in compilers):
            return "inductor generates C++ for the CPU and needs a C++ compiler (g++ or clang++; none on PATH)"
    return None


def maybe_compile(model: nn.Module, enabled: bool, device: torch.device | str | None = None,
                  mode: str | None = None) -> nn.Module:
    """Compile the UNet's forward with ``torch.compile``, in place, when ``enabled``.

    Why in place (``nn.Module.compile``) rather than ``torch.compile(module)``: the wrapper of the
    latter prefixes every parameter name with ``_orig_mod.``, which would change checkpoints,
    the EMA and the released pipeline. In place, the module and its ``state_dict`` stay as they
    are; only its calls go through the compiled graph (recompiled when shapes or train/eval
    mode change, e.g. once for training and once for guided sampling with its doubled batch).
    The denoiser's inputs are turned into plain tensors on the way in (the data loader yields
    MONAI ``MetaTensor`` s, which compilation cannot trace); values and gradients are unchanged.

    Args:
        model: a :class:`SegSynthModel`, a :class:`LayoutStyleUNet` or any module; see
            :func:`compile_target` for what is compiled.
        enabled: False returns ``model`` untouched.
        device: where the model will run (default: its parameters' device); checked with
            :func:`compile_unavailable_reason` so a missing compiler fails now, clearly.
        mode: ``torch.compile`` mode (None: the default).

    Returns:
        ``model`` itself.

    Raises:
        ConfigError: compilation cannot work on ``device`` (the CLI prints it as a one-line error).
    """
    if not enabled:
        return model
    if device is None:
        device = next(model.parameters()).device
    reason = compile_unavailable_reason(device)
    if reason is not None:
        raise ConfigError(f"torch.compile (train.compile) cannot run on {torch.device(device)}: {reason}; "
                          "set train.compile: false")
    compile_target(model).compile(mode=mode)
    caller = model.unet if isinstance(model, SegSynthModel) else model if isinstance(model, LayoutStyleUNet) else None
    if caller is not None:
        caller.register_forward_pre_hook(_plain_tensor_inputs, with_kwargs=True)
    return model


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and type(value) is not torch.Tensor and not isinstance(value, nn.Parameter):
        return value.as_subclass(torch.Tensor)  # same storage, still attached to the autograd graph
    return value


def _plain_tensor_inputs(_module: nn.Module, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Hand the compiled UNet plain tensors: the training batches are MONAI ``MetaTensor`` s, a
    tensor subclass whose ``__torch_function__`` the compiler's autograd tracing cannot handle."""
    return tuple(_plain(v) for v in args), {k: _plain(v) for k, v in kwargs.items()}


def _cpu_sdpa_flop(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                   out_val: Any = None, **kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


def _cpu_sdpa_backward_flop(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_cpu_sdpa_flop._get_raw = True  # type: ignore[attr-defined]
_cpu_sdpa_backward_flop._get_raw = True  # type: ignore[attr-defined]


def flop_counter_mode() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the CPU's fused attention kernel.

    PyTorch's table covers the CUDA attention kernels (flash, efficient, cuDNN) but not
    ``_scaled_dot_product_flash_attention_for_cpu``; without it a CPU count would miss the
    attention matmuls and differ from the same model's count on a GPU.
    """
    mapping: dict[Any, Callable[..., int]] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flop
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)


def unet_inputs(unet: LayoutStyleUNet, batch_size: int, image_size: int | None = None,
                device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Keyword arguments for one call of ``unet`` on random data (every condition given).

    ``image_size`` is the side of the images and layouts; a latent model denoises a sample
    ``latent_factor`` times smaller per side with its latent channel count.
    """
    cfg = unet.config
    size = image_size or cfg.image_size
    factor = getattr(unet, "latent_factor", 1)
    channels = getattr(unet, "sample_channels", cfg.image_channels)
    param = next(unet.parameters())
    device = torch.device(device) if device is not None else param.device
    dtype = dtype or param.dtype
    kwargs: dict[str, Any] = {
        "sample": torch.randn(batch_size, channels, size // factor, size // factor, device=device, dtype=dtype),
        "timestep": torch.randint(0, 1000, (batch_size,), device=device),
        "layout": torch.randint(0, cfg.num_classes, (batch_size, size, size), device=device),
        "style": torch.randn(batch_size, cfg.style_dim, device=device, dtype=dtype),
    }
    if unet.uses_edge:
        kwargs["edge"] = torch.rand(batch_size, 1, size, size, device=device, dtype=dtype)
    if unet.uses_text:
        kwargs["text"] = torch.randn(batch_size, cfg.text_dim, device=device, dtype=dtype)
    return kwargs


def unet_call_flops(model: nn.Module, batch_size: int, image_size: int | None = None,
                    device: torch.device | str | None = None) -> int:
    """FLOPs of one forward call of the denoiser on ``batch_size`` images (multiply-add = 2 FLOPs).

    Counted, not estimated: the call runs once under :func:`flop_counter_mode`, which adds up the
    convolutions, matmuls and attention kernels PyTorch dispatches (normalisations and
    elementwise ops are not counted; they are memory-bound and small next to them). This is
    the unit of the speed/FLOPs comparison: a training step costs about 3 forward calls
    (forward, plus backward's gradients with respect to inputs and to weights), a guided
    sampling step one call on the doubled batch.

    Args:
        model: a :class:`SegSynthModel` (its UNet is counted) or a :class:`LayoutStyleUNet`.
        batch_size: images in the call.
        image_size: side of the images (default: the model's ``image_size``).
        device: where to run it (default: the model's device).

    Returns:
        The FLOPs of the call (exactly linear in ``batch_size``).
    """
    unet = model.unet if isinstance(model, SegSynthModel) else model
    if not isinstance(unet, LayoutStyleUNet):
        raise TypeError(f"expected a SegSynthModel or LayoutStyleUNet, got {type(model).__name__}")
    kwargs = unet_inputs(unet, batch_size, image_size, device)
    counter = flop_counter_mode()
    with torch.no_grad(), counter:
        unet(**kwargs)
    return int(counter.get_total_flops())


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work, so a wall-clock time measures the work, not its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_matmul_tflops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, size: int = 8192,
                           iters: int = 20, warmup: int = 3) -> float:
    """The rate (TFLOP/s) at which this device multiplies two ``size`` x ``size`` matrices.

    Why measured, not a datasheet number: clocks, power limits, MIG slices and the library
    build decide what the chip actually reaches. A large square matmul is the best case for the
    hardware, so a model's FLOPs/s divided by this rate is its achievable utilisation (1.0 is
    the ceiling in practice, not just in theory).

    Args:
        device: where to measure.
        dtype: element type (bf16 by default: what mixed-precision training runs in).
        size: side of the square matrices (8192 saturates a large GPU; use ~1024 on a CPU).
        iters: timed multiplications.
        warmup: untimed multiplications first (kernel selection, clocks ramping up).

    Returns:
        ``2 * size**3 * iters / seconds / 1e12``.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        torch.mm(a, b, out=out)
    sync(device)
    seconds = time.perf_counter() - start
    return 2 * size**3 * iters / seconds / 1e12


def channels_last_conv_inputs(module: nn.Module, call: Callable[[], Any]) -> tuple[int, int]:
    """``(channels_last, total)`` input counts of the 2-D convolutions run by ``call()``.

    Shows whether the NHWC layout survives the whole network (e.g. through group norms and
    attention reshapes) or falls back to NCHW somewhere, which costs a transpose per switch.
    """
    counts = [0, 0]

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if x.ndim == 4 and x.shape[1] > 1:  # one-channel tensors are both formats at once
            counts[1] += 1
            counts[0] += int(x.is_contiguous(memory_format=torch.channels_last))

    handles = [m.register_forward_pre_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        call()
    finally:
        for handle in handles:
            handle.remove()
    return counts[0], counts[1]
