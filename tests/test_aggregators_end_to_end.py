"""Every style aggregator through the whole life of a model: train, release, reload, sample, generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_style_sampling import write_blob_dataset
from test_train_diffusion import TINY as TRAIN_TINY

from segsynth.config import load_config
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.diffusion.train import train_diffusion
from segsynth.models.style import AGGREGATORS
from segsynth.synth.config import GenerationConfig
from segsynth.synth.generate import generate
from segsynth.synth.manifest import read_manifest

#: Aggregators that pool a set: the order and the number of references must not matter.
ORDER_INVARIANT = ("mean", "max", "attention")

TINY = {
    **TRAIN_TINY,
    "train.steps": 2,
    "train.batch_size": 2,
    "train.log_every": 25,
    "train.sample_every": 1,  # the preview path runs, and the final preview is the one that used to crash
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_blob_dataset(tmp_path_factory.mktemp("blobs"), {"a": 2, "b": 2}, size=16, unlabeled={"u": 3})


@pytest.fixture(scope="module", params=AGGREGATORS)
def run(request: pytest.FixtureRequest, blobs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained with ``request.param`` as its aggregator."""
    cfg = load_config(DiffusionTrainConfig, None, {**TINY, "model.style.aggregator": request.param})
    return train_diffusion(blobs, cfg, tmp_path_factory.mktemp("run"))


def sample(pipe: SegSynthPipeline, refs: torch.Tensor) -> torch.Tensor:
    layout = torch.zeros(2, 16, 16, dtype=torch.long)
    layout[:, 4:12, 4:12] = 1
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    return pipe(layout, refs, num_inference_steps=2, generator=gens).images


def load(folder: Path) -> SegSynthPipeline:
    pipe = SegSynthPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_trains_releases_and_reloads_to_identical_samples(run: Path, tmp_path: Path) -> None:
    # a preview after every step: the final one is where a weight-free aggregator used to crash
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000000001.png", "step_000000002.png"]
    refs = torch.rand(2, 2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    released = load(run / "pipeline").to("cpu")
    out = sample(released, refs)
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
    released.save_pretrained(tmp_path / "again")
    assert torch.equal(out, sample(load(tmp_path / "again"), refs))


def test_set_aggregators_ignore_order_and_take_any_number(run: Path) -> None:
    pipe = load(run / "pipeline")
    if pipe.style_aggregator.config.mode not in ORDER_INVARIANT:
        pytest.skip("the linear aggregator sees the order and needs exactly num_refs references")
    refs = torch.rand(2, 3, 1, 16, 16, generator=torch.Generator().manual_seed(1))  # trained with 2
    out = sample(pipe, refs)
    assert torch.allclose(out, sample(pipe, refs[:, [2, 0, 1]]), atol=1e-5)
    assert not torch.allclose(out, sample(pipe, refs[:, :1]), atol=1e-5)  # the references do act
    assert sample(pipe, torch.rand(2, 5, 1, 16, 16)).shape == (2, 1, 16, 16)


def test_generate_writes_a_set_from_the_run(run: Path, tmp_path: Path) -> None:
    result = generate(run, tmp_path / "synth", GenerationConfig(n=3, steps=2, batch_size=2), device="cpu")
    assert result.complete and result.generated == 3
    assert [r.index for r in read_manifest(tmp_path / "synth" / "manifest.jsonl")] == [0, 1, 2]
    if load(run / "pipeline").style_aggregator.config.mode in ORDER_INVARIANT:  # more references than trained with
        generate(run, tmp_path / "more", GenerationConfig(n=2, num_refs=3, steps=2), device="cpu")
        assert all(len(r.style_ids) == 3 for r in read_manifest(tmp_path / "more" / "manifest.jsonl"))
    else:
        with pytest.raises(ValueError, match="built for 2 references"):
            generate(run, tmp_path / "more", GenerationConfig(n=2, num_refs=3, steps=2), device="cpu")
        assert not (tmp_path / "more").exists()  # refused before any output
