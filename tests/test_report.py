"""The HTML report: built from a tiny benchmark-shaped folder of real runs, complete and self-contained."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_dataset
from PIL import Image
from test_train_diffusion import TINY
from typer.testing import CliRunner

from segsynth.artifacts.detect import detect, discover
from segsynth.benchmark import BenchmarkConfig, summarise
from segsynth.cli import app
from segsynth.config import load_config, save_resolved_config
from segsynth.data.format import load_spec, save_spec
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.train import train_diffusion
from segsynth.evaluation import EvaluationConfig, default_seg_config, evaluate_synth
from segsynth.io.atomic import atomic_write_json
from segsynth.report import build_report
from segsynth.seg.evaluate import evaluate_seg
from segsynth.seg.train import train_seg
from segsynth.synth.config import GenerationConfig
from segsynth.synth.generate import generate

SECTIONS = ("answer", "samples", "curves", "benchmark", "fidelity", "configs", "provenance", "overview")
HOSTILE_NAME = 'tiny <script>alert("x")</script> & co'


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchmark folder as ``run_benchmark`` leaves it, made of genuine tiny runs of every stage."""
    tmp = tmp_path_factory.mktemp("report")
    data = write_tiny_dataset(tmp / "data", cases=("p1", "p2", "p3", "p4"), per_case=2, size=16, unlabeled=4)
    spec = load_spec(data)
    save_spec(data, spec.model_copy(update={"name": HOSTILE_NAME}))
    bench = tmp / "bench"
    config = load_config(BenchmarkConfig, None, {"folds": 2, "seeds": [0], "settings": ["ratio:0.5"]})
    save_resolved_config(config, bench / "benchmark.yaml")
    fold = bench / "fold_0"
    dcfg = load_config(DiffusionTrainConfig, None, {**TINY, "train.steps": 2})
    run = train_diffusion(data, dcfg, fold / "diffusion")
    generate(run, fold / "synth", GenerationConfig(n=6, layouts="variants", per_mask=2, steps=2, batch_size=6))
    seg_cfg = default_seg_config(16, steps=2)
    runs = []
    for setting, mix in (("baseline", {}), ("ratio_0.5", {"mix": {"strategy": "ratio", "synthetic_fraction": 0.5}})):
        cfg = seg_cfg.model_copy(update={"mix": seg_cfg.mix.model_copy(update=mix.get("mix", {}))})
        seg = fold / "seg" / setting / "seed_0"
        train_seg(data, cfg, seg, synthetic=[fold / "synth"] if mix else ())
        metrics = evaluate_seg(seg, data)
        atomic_write_json(seg / "metrics.json", metrics)
        runs.append({"fold": 0, "seed": 0, "setting": setting.replace("_", ":"), "run": str(seg), "metrics": metrics})
    results = summarise(runs, ["baseline", "ratio:0.5"], baseline="baseline")
    atomic_write_json(bench / "results.json", {**results, "data": str(data.resolve()), "config": config.model_dump(mode="json")})
    evaluate_synth(fold / "synth", data, fold / "seg" / "baseline" / "seed_0", config=EvaluationConfig(max_real_tiles=100))
    return bench


def test_folders_are_recognised(bench: Path) -> None:
    kinds = {(f.kind, f.path.relative_to(bench).as_posix()) for f in discover([bench])}
    assert kinds == {
        ("benchmark", "."),
        ("diffusion_run", "fold_0/diffusion"),
        ("synthetic_set", "fold_0/synth"),
        ("evaluation", "fold_0/synth/evaluation"),
        ("seg_run", "fold_0/seg/baseline/seed_0"),
        ("seg_run", "fold_0/seg/ratio_0.5/seed_0"),
    }
    assert detect(bench / "fold_0" / "synth" / "evaluation" / "metrics.json") == "evaluation"
    assert detect(bench / "fold_0" / "seg") is None


def test_report_has_every_section_and_is_self_contained(bench: Path, tmp_path: Path) -> None:
    out = build_report([bench], tmp_path / "report.html")
    html = out.read_text(encoding="utf-8")
    positions = [html.index(f'<section id="{section}">') for section in SECTIONS]
    assert positions == sorted(positions)  # the answer opens the page, the folder inventory closes it
    answer = html[positions[0]:positions[1]]
    assert "Does synthetic data help?" in answer and "ΔDice" in answer and "gap closed" in answer
    assert "1 real test case from 1 fold, 1 seed per setting" in answer and "ratio:0.5" in answer
    # every section has content, none shows its "nothing found" placeholder
    assert 'class="empty"' not in html
    # self-contained: images are data URIs, links stay inside the page, no script, no external style
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', html))
    assert "<script" not in html and "<link" not in html and "url(" not in html
    # the hostile dataset name is escaped wherever it appears
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in html
    # content of each part
    assert "class &#x27;lesion&#x27;" in html and "style source data/unlabeled: u1" in html  # synthetic grids
    assert "step 2 (latest)" in html  # diffusion preview grid
    assert "ΔDice" in html and "Wilcoxon" in html and "per-case Dice" in html  # benchmark table + plot
    assert "layout fidelity" in html and "style retrieval" in html and "seg encoder" in html and "diversity" in html
    assert "benchmark.yaml" in html and "generation.json" in html and "config.yaml" in html
    assert 'class="tag human"' in html and "conditioning layouts" in html
    assert len(sources) >= 7  # preview grid, 2 synthetic grids, 2 curve plots, case Dice, fidelity bars


def test_report_of_a_single_run_keeps_every_section(bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.html"
    result = CliRunner().invoke(app, ["report", str(bench / "fold_0" / "diffusion"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 diffusion run" in result.output and str(out.resolve()) in result.output.replace("\n", "")
    html = out.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert "No benchmark found." in html and "No evaluate-synth metrics.json found" in html
    (tmp_path / "empty").mkdir()
    refused = CliRunner().invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "x.html")])
    assert refused.exit_code == 2 and "not a benchmark" in refused.output
    assert not (tmp_path / "x.html").exists()


def _render_script():
    path = Path(__file__).resolve().parent.parent / "scripts" / "render_report.py"
    spec = importlib.util.spec_from_file_location("render_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_report_renders_in_headless_chromium(bench: Path, tmp_path: Path) -> None:
    render = _render_script()
    if render.find_browser() is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    report = build_report([bench], tmp_path / "report.html")
    shot = render.render(report, tmp_path / "report.png", width=1200, height=3000)
    with Image.open(shot) as picture:
        assert picture.size == (1200, 3000)
        colours = picture.convert("RGB").resize((60, 150)).getcolors(9000)
    assert colours is not None and len(colours) > 20  # not a blank page


def test_an_out_that_is_a_folder_is_refused_by_name(tmp_path: Path) -> None:
    """``report -o FOLDER``: exit 2 naming the folder, not a crash writing a file over it."""
    data = write_tiny_dataset(tmp_path / "data")
    (tmp_path / "html").mkdir()
    result = CliRunner().invoke(app, ["report", str(data), "-o", str(tmp_path / "html")])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "html is an existing folder" in result.output and list((tmp_path / "html").iterdir()) == []
