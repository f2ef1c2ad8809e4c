"""Training speed options: memory format, the fused optimiser and compilation.

Training options ``train.channels_last`` and ``train.compile`` go through :func:`apply_memory_format`
and :func:`maybe_compile`; neither changes what a training step computes (up to float rounding),
so both may change when a run is resumed. The tools that measure them (FLOP counting, the device's
matmul rate) belong to the benchmarks (``benchmarks/common.py``), not to the library.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch
from torch import nn

from segsynth.config import ConfigError
from segsynth.models.model import SegSynthModel
from segsynth.models.unet import LayoutStyleUNet


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
    The denoiser's inputs are turned into plain tensors on the way in (a caller's own MONAI
    loader yields ``MetaTensor`` s, which compilation cannot trace); values and gradients are unchanged.

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
    """Hand the compiled UNet plain tensors: a batch from a MONAI loader holds ``MetaTensor`` s, a
    tensor subclass whose ``__torch_function__`` the compiler's autograd tracing cannot handle."""
    return tuple(_plain(v) for v in args), {k: _plain(v) for k, v in kwargs.items()}
