"""Report folder detection on real run folders of the stages that share file names.

An autoencoder run and a segmentation run both write ``split.json`` (and ``config.yaml``,
``train_log.jsonl``), so the report must tell them apart by what else each writes and by what the
split holds; these folders are made by the real training functions, not written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_dataset

from segsynth.evaluation import default_seg_config
from segsynth.latent import AutoencoderTrainConfig
from segsynth.latent.train import train_autoencoder
from segsynth.report import build_report, detect, discover
from segsynth.seg.train import train_seg

TINY_AE_TRAIN = {"model": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8}, "tile_size": 16, "steps": 2,
                 "batch_size": 2, "lr": 1e-3, "eval_tiles": 2, "checkpoint_every": 1, "log_every": 1,
                 "mixed_precision": "no"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A data folder, a finished 2-step autoencoder run and a 2-step segmentation run on it."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("detect")
    data = write_tiny_dataset(tmp / "data", cases=("p1", "p2", "p3", "p4"), size=16)
    ae = train_autoencoder(data, AutoencoderTrainConfig.model_validate(TINY_AE_TRAIN), tmp / "ae")
    seg = train_seg(data, tmp / "seg", default_seg_config(16, steps=2))
    return data, Path(ae), Path(seg)


def test_an_autoencoder_run_is_never_taken_for_a_segmentation_run(runs, tmp_path: Path) -> None:
    data, ae, seg = runs
    assert (ae / "split.json").is_file() and (seg / "split.json").is_file()  # the shared name is the trap
    assert detect(ae) == "autoencoder_run" and detect(seg) == "seg_run"
    # Mid-training, before reconstruction.json and autoencoder/ exist, the split's content decides.
    partial = tmp_path / "ae_partial"
    partial.mkdir()
    for name in ("config.yaml", "split.json", "train_log.jsonl"):
        (partial / name).write_bytes((ae / name).read_bytes())
    assert detect(partial) == "autoencoder_run"
    found = {(f.kind, f.path.name) for f in discover([ae.parent])}
    assert {("autoencoder_run", "ae"), ("seg_run", "seg"), ("dataset", "data")} <= found
    assert not any(kind == "seg_run" and name != "seg" for kind, name in found)
    # The report of an autoencoder run lists it as one and shows its held-out quality.
    html = build_report([ae], tmp_path / "report.html").read_text(encoding="utf-8")
    quality = json.loads((ae / "reconstruction.json").read_text())
    assert "autoencoder run" in html and "segmentation run" not in html and "could not be read" not in html
    assert "reconstruction.json" in html and f"{quality['autoencoder']['psnr']}" in html
