"""What the benchmark scripts share: the one helper module they import (no script imports another).

- **Run records**: the ``--quick`` / full profiles (:func:`fill_profile`), the command line and the
  first keys of every result (:func:`command_line`, :func:`record_header`, :func:`run_record`), the
  machine's name, the console and the result files.
- **The library's own tasks** on a built-in dataset (:func:`diffusion_task`, :func:`seg_task`,
  :func:`autoencoder_task`) and "train unless a finished run is there" (:func:`train_unless_done`).
- **Measuring**: device sync, autocast of a variant, parameter and call counts, FLOPs counted by
  PyTorch (:func:`flop_counter_mode`, :func:`counted_flops`, :func:`unet_call_flops`), the device's
  matmul rate, and how many convolutions see NHWC inputs.
- **The diffusion speed benchmarks' step**: a synthetic batch of discs, :class:`TrainLoop` and the
  model's loss.
- **Scores of a synthetic set** as the style studies report them (:func:`summarise`).

The scripts run as ``.venv/bin/python benchmarks/NAME.py`` and find this module next to them; the
tests import it through pytest's ``pythonpath`` (``pyproject.toml``). Only the standard library is
imported at module level: ``cpu_threads.py`` lets the library choose a child's thread count before
torch starts, so torch, accelerate, rich and segsynth are imported by the helpers that use them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from segsynth.diffusion.config import DiffusionTrainConfig
    from segsynth.diffusion.train import DiffusionTask
    from segsynth.engine import Engine, EngineSettings
    from segsynth.models import ModelConfig, SegSynthModel
    from segsynth.models.unet import LayoutStyleUNet

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "segsynth" / "recipes" / "tiny.yaml"
#: Where a style study keeps a run's training seconds, so a reused run still reports them.
TRAIN_SECONDS = "bench_train_seconds.json"


# --------------------------------------------------------------------------------------------
# Run records: profiles, command line, machine, console, result files.


def fill_profile(args: argparse.Namespace, quick: Mapping[str, Any], full: Mapping[str, Any]) -> argparse.Namespace:
    """Set every option that is still None to the value of the ``--quick`` profile or of the full one."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def command_line(name: str, argv: Sequence[str] | None, prefix: Sequence[str] = (), quote: bool = False) -> str:
    """How ``benchmarks/NAME.py`` was called: ``prefix``, the script and its arguments (``argv``, or
    the process's own when None); ``quote`` joins them shell-quoted (:func:`shlex.join`)."""
    words = [*prefix, f"benchmarks/{name}.py", *(argv if argv is not None else sys.argv[1:])]
    return shlex.join(words) if quote else " ".join(words)


def record_header(name: str, argv: Sequence[str] | None) -> dict[str, Any]:
    """The keys a result starts with: the benchmark's name, when it was made, and its command."""
    return {"benchmark": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(name, argv)}


def processor() -> str:
    """The processor as :mod:`platform` names it (its architecture where it has no name)."""
    return platform.processor() or platform.machine()


def cpu_model_name() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo``, or None where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = cpu_model_name()
    return name if name is not None else processor()


def table_console(width: int) -> Console:
    """A console for the tables: the terminal's width, or ``width`` when the output is a file or a pipe."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=width)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` to ``path`` as indented JSON (keys in their order), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def save_result(path: Path, result: dict[str, Any], console: Console) -> dict[str, Any]:
    """Write a speed benchmark's ``result`` to ``path`` (atomic, key-sorted JSON), say so, and return it."""
    from segsynth.io.atomic import atomic_write_json

    atomic_write_json(path, result)
    console.print(f"wrote {path}")
    return result


def set_threads(threads: int | None) -> None:
    """Run torch on ``threads`` CPU threads; None (or 0) leaves the count as it is."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def seconds_since(start: float) -> float:
    """Wall seconds since ``start`` (a :func:`time.perf_counter` reading), to a tenth."""
    return round(time.perf_counter() - start, 1)


# --------------------------------------------------------------------------------------------
# The library's own tasks (what ``train-diffusion``, ``train-seg`` and ``train-autoencoder`` run).
#
# Why not a private loop: a benchmark of a rebuilt step measures the rebuild. These build the very
# :class:`~segsynth.engine.TrainTask` objects the commands run (same constructor, accelerator,
# optimiser, EMA and autocast), so timing ``task.train_step(batch, step)`` times what a user's run
# does per step, minus data loading (one batch of the task's own loader is reused). accelerate keeps
# one mixed-precision setting per process, so every builder resets its state first; a task keeps
# the autocast wrapper it was prepared with, so tasks of different precisions can be timed side by
# side in one process.


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state, so the next accelerator may use another precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def builtin_data(dataset: str = "brain-mri", folder: Path | None = None) -> Path:
    """A built-in dataset (64 px tiles) in ``folder`` (default: a fresh temporary folder)."""
    from segsynth.data.builtin import build_builtin

    folder = Path(folder or tempfile.mkdtemp(prefix="segsynth-speed-"))
    root = folder / dataset
    return root if root.is_dir() else build_builtin(dataset, root)


def _fresh_engine(out: Path, settings: EngineSettings, cfg: Any) -> Engine:
    from segsynth.engine import Engine

    reset_accelerate()
    return Engine(out, settings, cfg)


def diffusion_task(data: Path, out: Path, overrides: dict[str, Any] | None = None,
                   config: Path = TINY) -> tuple[DiffusionTask, dict[str, Any]]:
    """``train-diffusion``'s task for ``config`` (+ dotted ``overrides``) on ``data``, and one batch of its loader."""
    from segsynth.config import load_config
    from segsynth.data.format import load_spec
    from segsynth.diffusion.config import DiffusionTrainConfig
    from segsynth.diffusion.samples import SampleSettings, TrainingSamples, select_refs
    from segsynth.diffusion.train import DiffusionTask, fit_config_to_data
    from segsynth.diffusion.train import engine_settings as diffusion_settings

    cfg = load_config(DiffusionTrainConfig, config, overrides or {})
    spec = load_spec(data)
    cfg = fit_config_to_data(cfg, spec, data)
    engine = _fresh_engine(out, diffusion_settings(cfg), cfg)
    samples = TrainingSamples(data, select_refs(data, spec, None), SampleSettings.of(cfg))
    task = DiffusionTask(engine, samples, cfg)
    return task, next(task.batches(0))


def seg_task(data: Path, out: Path, overrides: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """``train-seg``'s task (default network, real data only) on ``data``, and one batch of its loader."""
    from segsynth.config import load_config
    from segsynth.data.dataset import SegDataset
    from segsynth.data.loader import index_dataset
    from segsynth.seg.config import SegTrainConfig
    from segsynth.seg.mixing import make_mixing
    from segsynth.seg.train import SegTask
    from segsynth.seg.train import engine_settings as seg_settings

    cfg = load_config(SegTrainConfig, None, overrides or {})
    refs = index_dataset(data)
    real, val = SegDataset(data, refs=refs[2:]), SegDataset(data, refs=refs[:2])
    engine = _fresh_engine(out, seg_settings(cfg), cfg)
    task = SegTask(engine, cfg, [real], val, make_mixing(cfg.mix, real, [], cfg.train.seed))
    return task, next(task.batches(0))


def autoencoder_task(data: Path, out: Path, overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``train-autoencoder``'s task on ``data``, and one batch of its tile draws."""
    from segsynth.config import load_config
    from segsynth.engine import EngineSettings
    from segsynth.autoencoder.config import AutoencoderTrainConfig
    from segsynth.autoencoder.train import AutoencoderTask, ImagePool

    cfg = load_config(AutoencoderTrainConfig, None, overrides or {})
    pool = ImagePool([data.resolve()], cfg.holdout, cfg.seed)
    engine = _fresh_engine(out, EngineSettings(label="train-autoencoder", steps=cfg.steps, log_every=cfg.log_every,
                                               checkpoint_every=cfg.checkpoint_every,
                                               mixed_precision=cfg.mixed_precision), cfg)
    task = AutoencoderTask(engine, pool, cfg)
    return task, next(task.batches(0))


def train_unless_done(data: Path | list[Path], cfg: DiffusionTrainConfig, run: Path,
                      console: Console | None = None) -> float | None:
    """Train ``run`` with ``train_diffusion`` unless a finished one is there (its ``pipeline/``
    folder, written atomically); the seconds it took, or None when it was reused. An unfinished run
    continues where it stopped."""
    from segsynth.artifacts.names import PIPELINE_DIR
    from segsynth.diffusion.train import train_diffusion

    if (run / PIPELINE_DIR).is_dir():
        return None
    tick = time.perf_counter()
    train_diffusion(data, cfg, run, resume=run.is_dir(), console=console)
    return time.perf_counter() - tick


def train_keeping_seconds(data: Path, cfg: DiffusionTrainConfig, run: Path) -> tuple[float | None, bool]:
    """:func:`train_unless_done`, keeping the seconds in ``run/TRAIN_SECONDS``: the training seconds
    the run recorded (None when it has no record), and whether it was reused."""
    seconds = train_unless_done(data, cfg, run)
    if seconds is not None:
        (run / TRAIN_SECONDS).write_text(json.dumps({"train_s": round(seconds, 1)}))
    record = run / TRAIN_SECONDS
    return (json.loads(record.read_text())["train_s"] if record.is_file() else None), seconds is None


# --------------------------------------------------------------------------------------------
# Measuring: sync, autocast, counts, FLOPs, the matmul rate, NHWC inputs.


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work, so a wall-clock time measures the work, not its launch."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device | str, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``bf16``, else a context that changes nothing (``generate``'s own)."""
    import torch

    from segsynth.device import sampling_autocast

    return sampling_autocast(torch.device(device), "bf16" if bf16 else "fp32")


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def count_calls(module: nn.Module) -> Iterator[dict[str, Any]]:
    """Count ``module``'s forward calls, the batch rows they carried (CFG doubles the rows) and the
    shape of the largest input (``"largest"``, which bounds the activation memory)."""
    counts: dict[str, Any] = {"calls": 0, "rows": 0, "largest": None}

    def hook(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        counts["calls"] += 1
        counts["rows"] += int(sample.shape[0])
        if counts["largest"] is None or sample.numel() > _numel(counts["largest"]):
            counts["largest"] = list(sample.shape)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counts
    finally:
        handle.remove()


def _numel(shape: list[int]) -> int:
    n = 1
    for side in shape:
        n *= side
    return n


def _cpu_sdpa_flop(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                   out_val: Any = None, **kwargs: Any) -> int:
    from torch.utils import flop_counter

    return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


def _cpu_sdpa_backward_flop(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    from torch.utils import flop_counter

    return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_cpu_sdpa_flop._get_raw = True  # type: ignore[attr-defined]
_cpu_sdpa_backward_flop._get_raw = True  # type: ignore[attr-defined]


def flop_counter_mode() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the CPU's fused attention kernel.

    PyTorch's table covers the CUDA attention kernels (flash, efficient, cuDNN) but not
    ``_scaled_dot_product_flash_attention_for_cpu``; without it a CPU count would miss the
    attention matmuls and differ from the same model's count on a GPU.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping: dict[Any, Callable[..., int]] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flop
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)


def counted_flops(call: Callable[[], Any], grad: bool = True) -> int:
    """FLOPs of ``call()`` as PyTorch dispatches them (multiply-add = 2), under :func:`flop_counter_mode`.

    ``grad=False`` enters ``no_grad`` before the counter: the counter's module tracker fails on
    a call that switches gradients off inside it.
    """
    import torch

    counter = flop_counter_mode()
    with torch.set_grad_enabled(grad), counter:
        call()
    return int(counter.get_total_flops())


def unet_inputs(unet: LayoutStyleUNet, batch_size: int, image_size: int | None = None,
                device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Keyword arguments for one call of ``unet`` on random data (every condition given).

    ``image_size`` is the side of the images and layouts; a latent model denoises a sample
    ``latent_factor`` times smaller per side with its latent channel count.
    """
    import torch

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
    from segsynth.models.model import SegSynthModel
    from segsynth.models.unet import LayoutStyleUNet

    unet = model.unet if isinstance(model, SegSynthModel) else model
    if not isinstance(unet, LayoutStyleUNet):
        raise TypeError(f"expected a SegSynthModel or LayoutStyleUNet, got {type(model).__name__}")
    kwargs = unet_inputs(unet, batch_size, image_size, device)
    return counted_flops(lambda: unet(**kwargs), grad=False)


def measured_matmul_tflops(device: torch.device | str, dtype: torch.dtype | None = None, size: int = 8192,
                           iters: int = 20, warmup: int = 3) -> float:
    """The rate (TFLOP/s) at which this device multiplies two ``size`` x ``size`` matrices.

    Why measured, not a datasheet number: clocks, power limits, MIG slices and the library
    build decide what the chip actually reaches. A large square matmul is the best case for the
    hardware, so a model's FLOPs/s divided by this rate is its achievable utilisation (1.0 is
    the ceiling in practice, not just in theory).

    Args:
        device: where to measure.
        dtype: element type (default bf16: what mixed-precision training runs in).
        size: side of the square matrices (8192 saturates a large GPU; use ~1024 on a CPU).
        iters: timed multiplications.
        warmup: untimed multiplications first (kernel selection, clocks ramping up).

    Returns:
        ``2 * size**3 * iters / seconds / 1e12``.
    """
    import torch

    device = torch.device(device)
    dtype = dtype or torch.bfloat16
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
    import torch
    from torch import nn

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


# --------------------------------------------------------------------------------------------
# The diffusion speed benchmarks (bench_diffusion.py, bench_gpu.py): data, step and record.


def synthetic_discs(batch_size: int, size: int, num_classes: int, channels: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, channels, S, S)`` in [0, 1] and masks ``(B, S, S)`` of one random disc per
    foreground class (each class its own grey level, plus noise), drawn from ``generator``."""
    import torch

    g, s, k = generator, size, num_classes
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    mask = torch.zeros(batch_size, s, s, dtype=torch.long)
    for label in range(1, k):
        centre = torch.randint(s // 4, 3 * s // 4, (batch_size, 2), generator=g)
        radius = torch.randint(max(2, s // 10), max(3, s // 4), (batch_size,), generator=g)
        inside = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2 <= radius[:, None, None] ** 2
        mask[inside] = label
    image = (0.2 + 0.6 * mask.float() / (k - 1)).unsqueeze(1).expand(-1, channels, -1, -1)
    image = (image + 0.05 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    return image, mask


def synthetic_batch(mc: ModelConfig, batch_size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images in [0, 1], a layout of random discs (one per foreground class) and N references."""
    import torch

    g = torch.Generator().manual_seed(seed)
    image, mask = synthetic_discs(batch_size, mc.image_size, mc.num_classes, mc.image_channels, g)
    s = mc.image_size
    refs = torch.rand(batch_size, mc.style.num_refs, mc.image_channels, s, s, generator=g)
    return {"image": image.to(device), "mask": mask.to(device), "style_images": refs.to(device)}


class TrainLoop:
    """One optimiser step per call; the same AdamW, clipping and (optional) EMA for every model.

    ``variant`` names the precision: a name starting with ``bf16`` runs the loss under bf16 autocast.
    """

    def __init__(self, module: nn.Module, loss_fn: Callable[[torch.Generator], torch.Tensor],
                 cfg: DiffusionTrainConfig, device: torch.device, variant: str, ema: bool) -> None:
        import torch
        from diffusers.training_utils import EMAModel

        self.module, self.loss_fn, self.device, self.variant = module, loss_fn, device, variant
        self.grad_clip = cfg.train.grad_clip
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.ema = EMAModel(module.parameters(), decay=cfg.train.ema_decay) if ema else None
        if self.ema is not None:
            self.ema.to(device)
        self.generator = torch.Generator(device=device).manual_seed(cfg.train.seed)

    def step(self) -> torch.Tensor:
        import torch

        self.module.train()
        with autocast(self.device, self.variant.startswith("bf16")):
            loss = self.loss_fn(self.generator)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.module.parameters())
        return loss.detach()


def ours_loss(model: SegSynthModel, cfg: DiffusionTrainConfig, batch: dict[str, torch.Tensor]):
    """The library's training loss of ``model`` on ``batch`` (objective, style encoder, condition drops)."""
    from segsynth.diffusion import diffusion_loss, make_train_scheduler

    scheduler = make_train_scheduler(cfg.objective)
    return lambda g: diffusion_loss(model, scheduler, batch, cfg.objective, g)["loss"]


def run_record(name: str, argv: list[str] | None, args: argparse.Namespace, device: torch.device, device_name: str,
               cfg: DiffusionTrainConfig) -> dict[str, Any]:
    """What every diffusion speed benchmark's JSON starts with: the command, the machine and software, and the config."""
    import diffusers
    import torch

    return {
        **record_header(name, argv),
        "quick": args.quick,
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "config_file": str(args.config.relative_to(ROOT) if args.config.resolve().is_relative_to(ROOT) else args.config),
        "config": cfg.model_dump(mode="json"),
    }


def add_model_arguments(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """The options every diffusion speed benchmark shares: which model, at what size, timed for how long."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--config", type=Path, default=None, help="training config (default base.yaml; tiny.yaml with --quick)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--image-size", type=int, default=None, help="override model.image_size")
    parser.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    parser.add_argument("--num-classes", type=int, default=None, help="override model.num_classes (K of the layout)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed training steps per model / variant")
    parser.add_argument("--train-steps", type=int, default=None, help="timed training steps per model / variant")
    parser.add_argument("--sample-images", type=int, default=None, help="images per sampling setting")


# --------------------------------------------------------------------------------------------
# Scores of a synthetic set (style_ablation.py, unlabeled_pool.py).


def summarise(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one ``metrics.json`` that the style studies' tables show (the whole file is kept alongside)."""
    style, div = metrics["style_retrieval"], metrics["diversity"]
    fid = metrics["layout_fidelity"]
    dist = metrics["distribution"]
    return {
        "pairwise": style["pairwise_accuracy"], "top1": style["top1_accuracy"], "top1_chance": style["top1_chance"],
        "stain_pairwise": style["by_part"]["stain"]["pairwise_accuracy"],
        "stain_top1": style["by_part"]["stain"]["top1_accuracy"],
        "gram_pairwise": style["by_part"]["gram"]["pairwise_accuracy"],
        "gram_top1": style["by_part"]["gram"]["top1_accuracy"],
        "num_reference_sets": style["num_reference_sets"],
        "diversity_synthetic": div["synthetic_same_layout"]["stain_texture"],
        "diversity_real": div["real_different_images"]["stain_texture"],
        "diversity_ratio": div["ratio_to_real"]["stain_texture"],
        "dice": fid["synthetic"]["summary"]["dice"]["mean_fg"]["mean"],
        "dice_ceiling": fid["real_held_out"]["summary"]["dice"]["mean_fg"]["mean"],
        "fidelity_fraction": fid["fraction_of_ceiling"]["mean_fg"],
        **{f"{kind}_{feature}": dist[feature]["synthetic_vs_real"][f"{kind}_mean" if kind == "kid" else kind]
           for feature in ("seg_encoder", "stain_texture") for kind in ("fid", "kid")},
        **{f"{kind}_{feature}_real_vs_real": dist[feature]["real_vs_real"][f"{kind}_mean" if kind == "kid" else kind]
           for feature in ("seg_encoder", "stain_texture") for kind in ("fid", "kid")},
    }
