"""The CPU fast path: FLOP counting, bf16 detection, thread count, and numerics under autocast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from common import flop_counter_mode
from torch import nn

import segsynth.cpus as cpus
import segsynth.device as device
from segsynth.diffusion.performance import fused_optimizer_options


def test_flop_count_of_a_conv_matches_the_analytic_formula() -> None:
    """Forward: 2 * N * C_out * H_out * W_out * C_in * k * k; backward twice that (input and weight grads)."""
    n, c_in, c_out, k, size = 2, 3, 5, 3, 12
    conv = nn.Conv2d(c_in, c_out, k, padding=1, bias=False)
    x = torch.randn(n, c_in, size, size, requires_grad=True)
    forward = 2 * n * c_out * size * size * c_in * k * k
    counter = flop_counter_mode()
    with counter:
        conv(x)
    assert counter.get_total_flops() == forward
    counter = flop_counter_mode()
    with counter:
        conv(x).sum().backward()
    assert counter.get_total_flops() == 3 * forward


def test_cpu_flags_read_proc_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(info if str(self) == "/proc/cpuinfo" else self,
                                                                         *a, **k))
    device.cpu_flags.cache_clear()
    try:
        assert device.cpu_flags() == {"fpu", "avx2", "avx512f", "avx512_bf16"}
        assert device.cpu_has_native_bf16()
    finally:
        device.cpu_flags.cache_clear()


@pytest.mark.parametrize("flags, expected", [({"avx512f", "avx512_bf16"}, "bf16"), ({"amx_tile", "amx_bf16"}, "bf16"),
                                             ({"avx2", "avx512f", "avx512bw"}, "no"), (set(), "no")])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch, flags: set[str],
                                                               expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert device.resolve_mixed_precision("auto") == expected
    assert device.resolve_mixed_precision("no") == "no"


def test_usable_cpus_follow_affinity_and_cgroup_quota(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: None)
    assert cpus.usable_cpus() == 4
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: 1.5)
    assert cpus.usable_cpus() == 2
    assert cpus.cpu_threads(processes=2) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cpus.cpu_threads() == 1


def test_cgroup_quota_files(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path) == 2.0


def test_training_keeps_the_callers_thread_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A library caller's ``torch.set_num_threads`` survives building a trainer's accelerator."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        device.make_accelerator("no")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_console_entry_chooses_threads_before_torch_starts(tmp_path: Path) -> None:
    """``segsynth`` sets ``OMP_NUM_THREADS`` from the usable CPUs when the environment leaves it unset.

    As one of a launch of two processes it takes half of them, which torch alone would not do."""
    env = ({k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
           | {"LOCAL_WORLD_SIZE": "2", "TMPDIR": str(tmp_path)})  # its own registry of running commands
    code = ("import os, sys; sys.argv = ['segsynth', '--version']\n"
            "from segsynth.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "import torch; from segsynth.cpus import cpu_threads\n"
            "print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads(), cpu_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    env_threads, torch_threads, expected = out.stdout.split()[-3:]
    assert env_threads == torch_threads == expected


def test_fused_optimizer_on_cpu() -> None:
    assert fused_optimizer_options("cpu") == {"fused": True}
    param = nn.Parameter(torch.ones(3))
    torch.optim.AdamW([param], lr=0.1, **fused_optimizer_options("cpu"))  # accepted by this torch


def _tiny_task(tmp_path: Path, precision: str):
    """``train-diffusion``'s own task on a tiny blob dataset, as the trainer builds it."""
    from accelerate.state import AcceleratorState
    from conftest import TINY_DIFFUSION_MODEL
    from test_style_sampling import write_blob_dataset

    from segsynth.config import load_config
    from segsynth.data.format import load_spec
    from segsynth.diffusion.config import DiffusionTrainConfig
    from segsynth.diffusion.samples import SampleSettings, TrainingSamples, select_refs
    from segsynth.diffusion.train import DiffusionTask, engine_settings, fit_config_to_data
    from segsynth.engine import Engine

    data = write_blob_dataset(tmp_path / "blobs", {"a": 2, "b": 2}, size=20)
    cfg = load_config(DiffusionTrainConfig, None, {**{f"model.{k}": v for k, v in TINY_DIFFUSION_MODEL.items()},
                                                   "train.batch_size": 2, "train.mixed_precision": precision,
                                                   "sampling.grid_rows": 1})
    spec = load_spec(data)
    cfg = fit_config_to_data(cfg, spec, data)
    AcceleratorState._reset_state(reset_partial_state=True)
    engine = Engine(tmp_path / "run", engine_settings(cfg), cfg)
    task = DiffusionTask(engine, TrainingSamples(data, select_refs(data, spec, None), SampleSettings.of(cfg)), cfg)
    return task, next(task.batches(0))


@pytest.mark.skipif(not device.cpu_has_native_bf16(), reason="bf16 autocast is only the default with native bf16")
def test_under_bf16_autocast_the_network_runs_bf16_but_loss_weights_and_ema_stay_fp32(tmp_path: Path) -> None:
    task, batch = _tiny_task(tmp_path, "auto")
    assert task.accelerator.mixed_precision == "bf16"
    seen: list[torch.dtype] = []
    hook = task.raw_model.unet.inner.conv_in.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    terms = task.train_step(batch, 0)
    hook.remove()
    assert seen == [torch.bfloat16]  # the convolutions did run in bf16
    assert all(v.dtype == torch.float32 for v in terms.values())
    assert all(p.dtype == torch.float32 for p in task.raw_model.parameters())
    assert all(s.dtype == torch.float32 for s in task.ema.shadow_params)
    assert all(v.dtype == torch.float32 for st in task.optimizer.state_dict()["state"].values()
               for v in st.values() if v.ndim > 0)


def test_without_native_bf16_the_trainer_runs_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    task, batch = _tiny_task(tmp_path, "auto")
    assert task.accelerator.mixed_precision == "no"
    seen: list[torch.dtype] = []
    hook = task.raw_model.unet.inner.conv_in.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    task.train_step(batch, 0)
    hook.remove()
    assert seen == [torch.float32]


def test_one_process_may_train_stages_of_different_precision() -> None:
    """auto (bf16 here) after an explicit fp32 stage, and back: accelerate alone refuses the second."""
    for precision in ("no", "bf16", "no"):
        assert device.make_accelerator(precision).mixed_precision == precision
