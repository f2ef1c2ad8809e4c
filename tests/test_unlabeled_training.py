"""``data.include_unlabeled``: the denoiser also learns from unlabelled images, with no layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_dataset
from test_train_diffusion import tiny_config

from segsynth.data.loader import SegDataset
from segsynth.diffusion.objective import ObjectiveConfig, diffusion_loss, make_train_scheduler
from segsynth.diffusion.samples import SampleSettings, TrainingSamples, select_refs
from segsynth.diffusion.train import train_diffusion
from segsynth.models import SegSynthModel


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unlabeled") / "data"
    return write_tiny_dataset(root, unlabeled=4, size=16)


def samples(data: Path, include: bool) -> TrainingSamples:
    cfg = tiny_config(**{"data.include_unlabeled": include, "data.style_sampler": "multi_patch"})
    return TrainingSamples(data, select_refs(data, SegDataset(data).spec, None), SampleSettings.of(cfg))


def test_unlabelled_images_follow_the_labelled_ones_without_a_layout(data: Path) -> None:
    plain, pooled = samples(data, False), samples(data, True)
    assert len(plain) == 6 and len(pooled) == 10 and pooled.num_labeled_samples == 6
    assert "labelled" not in plain[(0, 0)]
    for index in range(len(pooled)):
        item = pooled[(0, index)]
        assert bool(item["labelled"]) == (index < 6)
        if index >= 6:
            assert item["id"].startswith("u1_") and not item["mask"].any()  # background only
            assert item["style_images"].shape == (2, 1, 16, 16)
    assert pooled.unlabeled_ids() == [f"data/u1_{i}" for i in range(4)]
    # The labelled examples draw exactly as without the pool: adding it changes nothing of theirs.
    for index in range(6):
        a, b = plain[(1, index)], pooled[(1, index)]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert torch.equal(a["style_images"], b["style_images"])


def test_the_objective_drops_the_layout_of_unlabelled_samples_only(data: Path) -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    model = SegSynthModel.from_config(cfg.model)
    objective = ObjectiveConfig()  # layout drop probability 0: only the label flag drops it
    scheduler = make_train_scheduler(objective)
    batch = torch.utils.data.default_collate([samples(data, True)[(0, i)] for i in (0, 1, 6, 7)])
    terms = diffusion_loss(model, scheduler, batch, objective, torch.Generator().manual_seed(1))
    assert float(terms["drop_layout"]) == 0.5
    # An unlabelled sample's (background) mask is never seen: another mask gives the same loss.
    other = {**batch, "mask": batch["mask"].clone()}
    other["mask"][2:] = 1
    again = diffusion_loss(model, scheduler, other, objective, torch.Generator().manual_seed(1))
    assert torch.equal(terms["loss"], again["loss"])
    other["mask"][:2] = 1 - other["mask"][:2]
    changed = diffusion_loss(model, scheduler, other, objective, torch.Generator().manual_seed(1))
    assert not torch.equal(terms["loss"], changed["loss"])  # a labelled sample's mask is


def test_a_run_records_the_unlabelled_images_it_trained_on(data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(**{"data.include_unlabeled": True, "train.steps": 2})
    run = train_diffusion(data, cfg, tmp_path / "run")
    record = json.loads((run / "training_data.json").read_text())
    assert record["unlabeled_ids"] == [f"data/u1_{i}" for i in range(4)]
    assert len(record["train_ids"]) == 6 and (run / "pipeline" / "model_index.json").is_file()
