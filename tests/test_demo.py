"""`segsynth demo`, the README's first command, end to end on its smoke profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from segsynth.cli import app


@pytest.mark.slow
def test_demo_runs_every_stage_and_prints_a_fair_table(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--smoke", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for stage in ("1/4", "2/4", "3/4", "4/4", "done"):
        assert stage in result.output
    # the table names what it rests on, and every setting trained the same steps
    assert "real test cases from 1 fold" in result.output and "4 optimiser steps of batch 8" in result.output
    results = json.loads((out / "benchmark" / "results.json").read_text())
    assert results["order"] == ["baseline", "baseline+heavy-aug", "self-training", "ratio:0.5", "merge:0.6"]
    assert {r["steps"] for r in results["runs"]} == {4}
    assert (out / "benchmark" / "fold_0" / "synth_variants" / "manifest.jsonl").is_file()
    assert (out / "nnUNet_raw" / "Dataset501_NucleiFluoSyn" / "dataset.json").is_file()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.index('<section id="answer">') < html.index('<section id="samples">')
    # re-running continues: nothing is trained again
    before = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    again = CliRunner().invoke(app, ["demo", "--smoke", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == before
