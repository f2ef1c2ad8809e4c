"""Several processes (``accelerate launch``, DDP over gloo on CPU) give the single-process result.

``train-diffusion`` on 2 processes of batch b must learn what 1 process of batch 2b learns: same
samples per step, same noise, timesteps and condition drops per sample, gradients averaged. Only
float summation order differs, so weights and logged losses agree to float rounding.
``generate`` on 2 processes splits the set by RANK / WORLD_SIZE and the last one merges it.

The processes are started as ``python -m accelerate.commands.launch --multi_gpu --num_processes 2``
(torchrun underneath): ``accelerate launch --cpu`` starts one process unless MPI is installed.
With no CUDA device (hidden here by ``CUDA_VISIBLE_DEVICES=""``) the trainer runs the process
group on gloo by itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_DIFFUSION_MODEL, write_tiny_dataset
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.config import load_config
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.objective import ObjectiveConfig, diffusion_loss, make_train_scheduler
from segsynth.io.checkpoint import CheckpointManager
from segsynth.models import SegSynthModel
from segsynth.synth.generate import launched_shard, resolve_shard
from segsynth.synth.manifest import read_manifest

#: Weights (and logged losses, relatively) of the 1- and 2-process runs agree to this; observed
#: about 1e-7, i.e. float32 rounding of a different summation order.
ATOL = 1e-5
STEPS, LR, BATCH = 4, 2e-4, 2
DIFFUSION = {
    "model": TINY_DIFFUSION_MODEL,
    "train": {"steps": STEPS, "lr": LR, "warmup": 1, "log_every": 1, "sample_every": 0,
              "checkpoint_every": STEPS, "mixed_precision": "no"},
    "sampling": {"steps": 2, "grid_rows": 2},
}
ENTRY = "import sys\nfrom segsynth.cli import main\nsys.argv[0] = 'segsynth'\nmain()\n"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp: Path, processes: int, args: list[str]) -> None:
    """``segsynth ARGS`` in ``processes`` processes started by ``accelerate launch``."""
    entry = tmp / "segsynth_entry.py"
    entry.write_text(ENTRY, encoding="utf-8")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), str(entry), *args]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"


def cli(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{args}\n{result.output}\n{result.exception!r}"


def one_and_two_processes(tmp: Path, command: list[str], batch_key: str) -> dict[int, Path]:
    """``segsynth COMMAND`` as 2 processes of batch ``BATCH`` (``tmp/two``) and as 1 process of batch
    ``2 * BATCH`` on one thread (``tmp/one``); the run folders by process count."""
    launch(tmp, 2, [*command, "-o", str(tmp / "two"), "--set", f"{batch_key}={BATCH}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli([*command, "-o", str(tmp / "one"), "--set", f"{batch_key}={2 * BATCH}"])
    finally:
        torch.set_num_threads(threads)
    return {1: tmp / "one", 2: tmp / "two"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The same training as 2 processes of batch 2 and as 1 process of batch 4 (6 samples)."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    data = write_tiny_dataset(tmp / "data")
    config = tmp / "diffusion.yaml"
    config.write_text(yaml.safe_dump(DIFFUSION), encoding="utf-8")
    return one_and_two_processes(tmp, ["train-diffusion", str(data), "--config", str(config)], "train.batch_size")


def gradient_free(run: Path) -> set[str]:
    """Parameters whose loss gradient vanishes in exact arithmetic (checked in float64).

    A conv bias right before a GroupNorm of one channel per group, a time-embedding projection
    added there, an attention key bias (softmax ignores it): their float32 gradients are pure
    rounding noise, and Adam, which divides a gradient by its own running scale, turns that
    noise into steps of up to ``lr``. Any change of summation order moves them by that much;
    the model's output does not depend on them.
    """
    cfg = load_config(DiffusionTrainConfig, run / "config.yaml")
    torch.manual_seed(0)
    model = SegSynthModel.from_config(cfg.model).double()
    g = torch.Generator().manual_seed(0)
    b, c, s, k = 4, cfg.model.image_channels, cfg.model.image_size, cfg.model.num_classes
    batch = {"image": torch.rand(b, c, s, s, generator=g, dtype=torch.float64),
             "mask": torch.randint(0, k, (b, s, s), generator=g),
             "style_images": torch.rand(b, cfg.model.style.num_refs, c, s, s, generator=g, dtype=torch.float64)}
    diffusion_loss(model, make_train_scheduler(cfg.objective), batch, cfg.objective,
                   torch.Generator().manual_seed(1))["loss"].backward()
    return {name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().max() < 1e-12}


def test_two_processes_learn_what_one_process_of_the_global_batch_learns(runs: dict[int, Path]) -> None:
    one, two = runs[1], runs[2]
    files = sorted(p.relative_to(one / "pipeline") for p in (one / "pipeline").rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(two / "pipeline") for p in (two / "pipeline").rglob("*.safetensors"))
    free = gradient_free(one)
    worst, worst_free = 0.0, 0.0
    for rel in files:
        a, b = load_file(one / "pipeline" / rel), load_file(two / "pipeline" / rel)
        assert a.keys() == b.keys()
        for key in a:
            diff = (a[key].double() - b[key].double()).abs().max().item()
            if f"{rel.parts[0]}.{key}" in free:
                worst_free = max(worst_free, diff)
            else:
                assert diff <= ATOL, (str(rel), key, diff)
                worst = max(worst, diff)
    assert worst_free <= 2 * STEPS * LR  # Adam moves a parameter by about lr per step at most
    print(f"max |w1 - w2|: {worst:.3g}; gradient-free parameters: {worst_free:.3g}")

    logs = [[json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()] for run in (one, two)]
    assert [e["step"] for e in logs[0]] == [e["step"] for e in logs[1]] == list(range(1, STEPS + 1))
    for a, b in zip(*logs):
        assert a.keys() == b.keys() and a["epoch"] == b["epoch"] and a["lr"] == b["lr"]
        for name in set(a) - {"step", "epoch", "lr", "it_per_s"}:
            assert b[name] == pytest.approx(a[name], rel=ATOL, abs=1e-7), (a["step"], name)

    # The previews sample with the released EMA weights: the same images up to one grey level.
    grids = [np.asarray(Image.open(run / "samples" / f"step_{STEPS:09d}.png"), dtype=np.int16) for run in (one, two)]
    assert np.abs(grids[0] - grids[1]).max() <= 1


def test_generate_on_two_processes_writes_the_whole_set_once(runs: dict[int, Path], tmp_path: Path) -> None:
    out, n = tmp_path / "synth", 9
    launch(tmp_path, 2, ["generate", str(runs[2]), "--out", str(out), "-n", str(n), "--steps", "2", "--batch-size", "2"])
    records = read_manifest(out / "manifest.jsonl")
    assert [r.index for r in records] == list(range(n))
    parts = [read_manifest(out / f"manifest.shard-{i}-of-2.jsonl") for i in range(2)]
    assert [sorted(r.index for r in part) for part in parts] == [list(range(0, 4)), list(range(4, 9))]
    files = [{name for r in part for name in (r.image, r.mask)} for part in parts]
    assert not files[0] & files[1]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert files[0] | files[1] == on_disk and len(on_disk) == 2 * n
    assert not [p for p in out.rglob(".*")]  # no temporaries left by either process
    spec = json.loads((out / "dataset.json").read_text())
    assert sorted(spec["cases"]) == [f"synth_{i:07d}" for i in range(n)]
    assert json.loads((out / "generation.json").read_text())["config"]["num_shards"] == 2


def test_each_process_draws_the_rows_of_its_global_positions() -> None:
    """``share=(r, W)`` gives rows ``r::W`` of the draws one process makes for the global batch."""
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, noisy, t, mask, style, drop, **extra):
            seen.append((noisy, t, drop))
            return noisy * 0.5

    cfg = ObjectiveConfig(cond_drop={"style": 0.5, "layout": 0.3, "edge": 0.4, "text": 0.6})
    scheduler = make_train_scheduler(cfg)
    g = torch.Generator().manual_seed(0)
    world, b = 3, 2
    batch = {"image": torch.rand(world * b, 1, 8, 8, generator=g), "mask": torch.zeros(world * b, 8, 8, dtype=torch.long),
             "edge": torch.rand(world * b, 1, 8, 8, generator=g), "text": torch.rand(world * b, 4, generator=g)}
    whole = diffusion_loss(Recorder(), scheduler, batch, cfg, torch.Generator().manual_seed(5))
    shares = [diffusion_loss(Recorder(), scheduler, {k: v[r::world] for k, v in batch.items()}, cfg,
                             torch.Generator().manual_seed(5), share=(r, world)) for r in range(world)]
    (noisy, t, drop), rows = seen[0], seen[1:]
    for r, (noisy_r, t_r, drop_r) in enumerate(rows):
        assert torch.equal(noisy_r, noisy[r::world]) and torch.equal(t_r, t[r::world])
        assert drop_r.keys() == drop.keys() == {"style", "layout", "edge", "text"}
        assert all(torch.equal(drop_r[k], drop[k][r::world]) for k in drop)
    # equal shares: the mean of the per-process losses is the global mean (what DDP's average needs)
    assert torch.stack([s["loss"] for s in shares]).mean().item() == pytest.approx(whole["loss"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="share"):
        diffusion_loss(Recorder(), scheduler, batch, cfg, share=(2, 2))


def test_the_launch_decides_the_shard_and_a_contradicting_shard_is_refused(tmp_path: Path) -> None:
    assert launched_shard({}) is None and launched_shard({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert launched_shard({"WORLD_SIZE": "4", "RANK": "3"}) == (3, 4)
    assert resolve_shard(None, {}) == (0, 1) and resolve_shard("1/3", {}) == (1, 3)
    assert resolve_shard(None, {"WORLD_SIZE": "2", "RANK": "1"}) == (1, 2)
    assert resolve_shard("1/2", {"WORLD_SIZE": "2", "RANK": "1"}) == (1, 2)
    with pytest.raises(ValueError, match="contradicts the launch"):
        resolve_shard("0/2", {"WORLD_SIZE": "2", "RANK": "1"})
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "-n", "4",
                                      "--shard", "0/1"], env={"WORLD_SIZE": "2", "RANK": "0"})
    assert result.exit_code == 2 and "contradicts the launch" in result.output
    assert not (tmp_path / "out").exists()


def seg_gradient_free(run: Path) -> set[str]:
    """Segmentation parameters with no loss gradient in exact arithmetic (float64): the bias of a
    convolution followed by an instance norm, which the norm subtracts again (see
    :func:`gradient_free` for why Adam moves them by rounding noise)."""
    from monai.losses import DiceCELoss

    from segsynth.seg.config import SegTrainConfig
    from segsynth.seg.networks import build_network

    cfg = load_config(SegTrainConfig, run / "config.yaml")
    torch.manual_seed(0)
    model = build_network(cfg.network, 1, 2).double()
    g = torch.Generator().manual_seed(0)
    image = torch.rand(4, 1, 16, 16, generator=g, dtype=torch.float64)
    mask = torch.randint(0, 2, (4, 1, 16, 16), generator=g)
    DiceCELoss(to_onehot_y=True, softmax=True)(model(image), mask).backward()
    return {name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().max() < 1e-12}


def test_train_seg_on_two_processes_equals_one_process_of_the_global_batch(tmp_path: Path) -> None:
    """Segmentation DDP: 2 processes of batch 2 take the rows of the batch of 4 that 1 process takes
    (same examples, augmentation and merge grid cells), so weights, losses and validation agree."""
    from test_seg_train import make_synthetic_set, make_toy_dataset, tiny_config

    data = make_toy_dataset(tmp_path / "data", cases=4, per_case=3, size=16)
    synth = make_synthetic_set(tmp_path / "synth", data, variants=2)
    cfg = tiny_config(steps=4, val_every=2, batch_size=BATCH).model_dump(mode="json")
    cfg["mix"] = {"strategy": "merge", "alpha": 0.5, "cell": 96}
    cfg["train"]["mixed_precision"] = "no"
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    runs = one_and_two_processes(tmp_path, ["train-seg", str(data), "-c", str(config), "--synthetic", str(synth)],
                                 "train.batch_size")
    summaries = {k: json.loads((run / "training.json").read_text()) for k, run in runs.items()}
    assert summaries[1]["batch_size"] == summaries[2]["batch_size"] == 2 * BATCH
    assert (summaries[1]["processes"], summaries[2]["processes"]) == (1, 2)
    a, b = (CheckpointManager(run).latest()[1]["model"] for run in (runs[1], runs[2]))
    assert a.keys() == b.keys()
    free = seg_gradient_free(runs[1])
    assert free and all(name.endswith("bias") for name in free)  # conv biases right before an instance norm
    diffs = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a}
    worst = max(d for k, d in diffs.items() if k not in free)
    assert worst <= ATOL, worst
    assert max(diffs[k] for k in free) <= 2 * 4 * cfg["optim"]["lr"]  # Adam: at most about lr per step
    logs = [[json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()] for run in runs.values()]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [2, 4]
    for one, two in zip(*logs, strict=True):
        assert two["loss"] == pytest.approx(one["loss"], rel=ATOL)
        assert two["val_dice"] == pytest.approx(one["val_dice"], abs=1e-6)
        assert two["paired_with_variant"] == one["paired_with_variant"] == 2 * BATCH * 2


def test_train_autoencoder_on_two_processes_equals_one_process_of_the_global_batch(tmp_path: Path) -> None:
    """Autoencoder DDP: rank r takes tile slots r*b..(r+1)*b-1 of the global draw and its rows of the
    global posterior noise, so 2 processes of batch 2 learn what 1 process of batch 4 learns."""
    data = write_tiny_dataset(tmp_path / "data")
    cfg = {"model": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8}, "tile_size": 16, "steps": 3,
           "batch_size": BATCH, "lr": 1e-3, "eval_tiles": 2, "checkpoint_every": 3, "log_every": 1,
           "mixed_precision": "no"}
    config = tmp_path / "ae.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    runs = one_and_two_processes(tmp_path, ["train-autoencoder", str(data), "-c", str(config)], "batch_size")
    a, b = (CheckpointManager(runs[n]).latest()[1]["model"] for n in (1, 2))
    assert a.keys() == b.keys()
    diffs = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a}
    # Biases feeding a group norm get near-zero gradients, which Adam rescales to steps of about lr:
    # there, float rounding of the summation order can show as up to lr per step.
    worst = max(d for k, d in diffs.items() if not k.endswith("bias"))
    assert worst <= ATOL, worst
    assert max(diffs.values()) <= cfg["steps"] * cfg["lr"]
    logs = [[json.loads(line)["loss"] for line in (runs[n] / "train_log.jsonl").read_text().splitlines()]
            for n in (1, 2)]
    assert len(logs[0]) == 3 and np.allclose(logs[0], logs[1], rtol=1e-4)
