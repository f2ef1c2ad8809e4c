"""``benchmarks/bench_seg.py`` on a toy grid: the step it times is the trainer's (the loss falls),
every variant is timed in the same cell, and bf16 is either timed or its absence explained."""

from __future__ import annotations

import json
from pathlib import Path

import bench_seg  # the benchmark script itself (benchmarks/ is on pytest's pythonpath)
import torch


def test_bench_seg_times_every_variant_and_writes_its_command(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "bench_seg.json"
    argv = ["--quick", "--networks", "small", "--image-sizes", "16", "--batch-sizes", "2", "--warmup-steps", "1",
            "--train-steps", "4", "--infer-batches", "1", "--out", str(out)]
    result = bench_seg.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["command"] == "benchmarks/bench_seg.py " + " ".join(argv) and result["threads"] == 1
    timed = {row["variant"] for row in result["rows"]}
    if result["bf16"]["available"]:
        assert timed == {"fp32", "fp32_cl", "bf16", "bf16_cl"}
    else:
        assert timed == {"fp32", "fp32_cl"} and result["bf16"]["reason"]
    for row in result["rows"]:
        assert row["finite"] and row["train_steps"] == 4 and row["infer_batches"] == 1
        assert row["last_loss"] < row["first_loss"], row  # four AdamW steps on one batch: it learns
    fp32 = next(row for row in result["rows"] if row["variant"] == "fp32")
    assert fp32["train_ratio_vs_fp32"] == 1.0 and fp32["infer_ratio_vs_fp32"] == 1.0
