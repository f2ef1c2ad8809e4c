"""Overlapping-tile sampling of layouts larger than the model: coverage, exact blending, bounded
denoiser input, and no visible seams on a flat-style layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_tiling import train_flat_model  # the benchmark's flat-image model (benchmarks/ is on pytest's pythonpath)
from conftest import TINY_DIFFUSION_MODEL

from segsynth.diffusion.objective import ObjectiveConfig, make_train_scheduler
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.diffusion.tiling import blend_window, seam_ratio, tile_starts, tile_windows, tiled_prediction
from segsynth.models import SegSynthModel
from segsynth.models.config import ModelConfig

#: Border-to-interior gradient-energy ratio above which a seam is visible (1 = no seam).
SEAM_THRESHOLD = 1.25


@pytest.mark.parametrize("length,tile,overlap,multiple", [(64, 16, 4, 1), (100, 32, 8, 4), (16, 16, 4, 1), (40, 16, 0, 8)])
def test_tiles_cover_the_image_with_the_requested_overlap(length, tile, overlap, multiple):
    starts = tile_starts(length, tile, overlap, multiple)
    assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
    assert all(s % multiple == 0 for s in starts)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tile_arguments_are_checked():
    with pytest.raises(ValueError, match="overlap must lie in"):
        tile_starts(64, 16, 16)
    with pytest.raises(ValueError, match="multiples of 4"):
        tile_starts(66, 16, 4, multiple=4)


def test_blend_window_is_positive_and_flat_inside():
    w = blend_window(16, 4)
    assert w.min() > 0 and torch.all(w[4:12, 4:12] == 1)
    assert torch.allclose(w, w.T) and torch.allclose(w, w.flip(0))


def test_blending_a_pointwise_prediction_reproduces_it_exactly():
    """Normalising by the summed window weights makes the blend an average: a prediction that depends
    only on each pixel's own value comes out as if the image had been processed whole."""
    x = torch.randn(2, 3, 48, 80)
    calls = []

    def predict(tiles, windows):
        calls.append(tuple(tiles.shape))
        return torch.tanh(tiles) * 3

    out = tiled_prediction(predict, x, tile=16, overlap=6, multiple=2, tiles_per_call=5)
    assert torch.allclose(out, torch.tanh(x) * 3, atol=1e-6)
    assert max(shape[0] for shape in calls) <= 5 * 2 and all(shape[2:] == (16, 16) for shape in calls)


@pytest.fixture(scope="module")
def random_pipeline() -> SegSynthPipeline:
    torch.manual_seed(0)
    model = SegSynthModel.from_config(ModelConfig.model_validate(TINY_DIFFUSION_MODEL))
    pipe = SegSynthPipeline.from_model(model, make_train_scheduler(ObjectiveConfig()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_large_layouts_never_reach_the_denoiser_whole(random_pipeline):
    """Peak memory is bounded by the tile: the UNet only ever sees 16 px windows of a 96 px layout."""
    seen = []
    hook = random_pipeline.unet.inner.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        layout = torch.zeros(1, 96, 64, dtype=torch.long)
        layout[:, 20:70, 10:40] = 1
        images = random_pipeline(layout, None, num_inference_steps=2, style_guidance_scale=1.0,
                                 generator=torch.Generator().manual_seed(0), tiles_per_call=3).images
    finally:
        hook.remove()
    assert images.shape == (1, 1, 96, 64)
    assert {s[2:] for s in seen} == {(16, 16)} and max(s[0] for s in seen) <= 3
    assert len(seen) == 2 * -(-len(tile_windows(96, 64, 16, 4)) // 3)


def test_a_layout_of_the_model_size_is_sampled_untiled(random_pipeline):
    layout = torch.zeros(2, 16, 16, dtype=torch.long)
    a = random_pipeline(layout, None, num_inference_steps=3, generator=torch.Generator().manual_seed(1)).images
    b = random_pipeline(layout, None, num_inference_steps=3, generator=torch.Generator().manual_seed(1), tile_overlap=8).images
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def flat_pipeline(tmp_path_factory) -> SegSynthPipeline:
    """A tiny model of flat grey images (one random level each): tiles denoised independently
    disagree visibly, so seams are measurable (see ``benchmarks/bench_tiling.py``)."""
    return train_flat_model(tmp_path_factory.mktemp("tiling"))


def test_blended_tiles_leave_no_seam_where_independent_tiles_do(flat_pipeline):
    layout = torch.zeros(2, 64, 64, dtype=torch.long)
    ratios = {}
    for overlap in (0, 4):
        generators = [torch.Generator().manual_seed(i) for i in range(2)]
        images = flat_pipeline(layout, None, num_inference_steps=10, style_guidance_scale=1.0,
                               generator=generators, tile_overlap=overlap).images
        ratios[overlap] = seam_ratio(images, tile_windows(64, 64, 16, overlap))
    assert ratios[4] < SEAM_THRESHOLD, ratios  # the default overlap (a quarter tile) blends
    assert ratios[0] > 1.5, ratios  # the measure does see the seams of unblended tiles


def test_generate_writes_large_images_and_masks(random_pipeline, tiny_dataset, tmp_path):
    from segsynth.data.loader import SegDataset
    from segsynth.synth.config import GenerationConfig
    from segsynth.synth.generate import generate

    out = tmp_path / "large"
    large = GenerationConfig(n=2, styles=tiny_dataset / "unlabeled", layout_data=tiny_dataset, steps=2, size=48,
                             batch_size=2)
    result = generate(random_pipeline, out, large)
    assert result.complete
    sample = SegDataset(out)[1]
    assert sample["image"].shape == (1, 48, 48) and sample["mask"].shape == (48, 48)
    assert '"size": 48' in (out / "generation.json").read_text()
    with pytest.raises(ValueError, match="tile_overlap 16 must be smaller than the tile"):
        generate(random_pipeline, tmp_path / "bad", GenerationConfig(n=1, layout_data=tiny_dataset, steps=1, size=48,
                                                                     tile_overlap=16))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="size 49 must be a multiple of 2"):
        generate(random_pipeline, tmp_path / "bad", GenerationConfig(n=1, layout_data=tiny_dataset, steps=1, size=49))
