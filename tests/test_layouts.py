"""Layout sources: real-mask augmentation under a class prior, per-mask variants, composed layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segsynth.data.format import DatasetSpec, save_spec
from segsynth.data.io import write_image
from segsynth.data.loader import SegDataset
from segsynth.synth.layouts import (
    AugmentedLayouts,
    ComposedLayouts,
    CompositionPrior,
    VariantLayouts,
    fit_mask,
    make_layout_source,
)


def write_toy_dataset(root: Path, *, side: int = 40, labelled: int = 6, unlabelled: int = 4, channels: int = 1) -> Path:
    """A small dataset folder: grey images with bright discs, masks nucleus=1 (the last one empty),
    two cases, and an unlabelled pool of two other cases."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    cases, pool = {}, {}
    for i in range(labelled):
        mask = np.zeros((side, side), np.uint8)
        if i < labelled - 1:
            for _ in range(2):
                cy, cx, r = rng.integers(6, side - 6, 2).tolist() + [int(rng.integers(3, 6))]
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        image = (40 + 150 * mask + rng.integers(0, 30, mask.shape)).astype(np.uint8)
        if channels > 1:
            image = np.repeat(image[..., None], channels, axis=-1)
        stem = f"case{i % 2}_{i:03d}"
        write_image(root / "images" / f"{stem}.png", image)
        write_image(root / "masks" / f"{stem}.png", mask)
        cases[stem] = f"case{i % 2}"
    for i in range(unlabelled):
        image = (rng.integers(0, 255, (side, side)) // (1 + i % 2 * 3)).astype(np.uint8)
        if channels > 1:
            image = np.repeat(image[..., None], channels, axis=-1)
        stem = f"pool{i % 2}_{i:03d}"
        write_image(root / "unlabeled" / f"{stem}.png", image)
        pool[stem] = f"pool{i % 2}"
    spec = DatasetSpec(
        name="toy",
        modality="fluorescence microscopy",
        prompt="Nuclei, Fluorescence",
        channels=channels,
        labels={"background": 0, "nucleus": 1},
        label_provenance="human",
        licence="CC0",
        cases=cases,
        unlabeled_cases=pool,
    )
    save_spec(root, spec)
    return root


@pytest.fixture
def toy(tmp_path: Path) -> SegDataset:
    return SegDataset(write_toy_dataset(tmp_path / "toy"))


def test_fit_mask_crops_around_centre_and_pads_small_masks() -> None:
    mask = np.arange(100).reshape(10, 10)
    crop = fit_mask(mask, 4, (0, 9))
    np.testing.assert_array_equal(crop, mask[0:4, 6:10])  # clipped to the border
    np.testing.assert_array_equal(fit_mask(mask, 4), mask[3:7, 3:7])
    padded = fit_mask(np.array([[1, 2], [3, 4]]), 4)
    assert padded.shape == (4, 4) and padded.dtype == np.int64
    np.testing.assert_array_equal(padded[1:3, 1:3], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(padded[0, 1:3], [1, 2])  # reflected, not zero-filled


def test_augmented_layouts_follow_class_prior_and_are_augmented(toy: SegDataset) -> None:
    source = AugmentedLayouts(toy, 16, class_prior={"nucleus": 1.0})
    empty_id = toy.refs[-1].id  # the only mask without a nucleus
    draws = [source.draw(i, np.random.default_rng(i)) for i in range(60)]
    for mask, layout_id in draws:
        assert mask.shape == (16, 16) and mask.dtype == np.int64
        assert set(np.unique(mask).tolist()) <= {0, 1}
        assert layout_id in {ref.id for ref in toy.refs} and layout_id != empty_id
    with_nucleus = np.mean([(mask == 1).any() for mask, _ in draws])
    assert with_nucleus >= 0.95
    # heavy augmentation: draws of one source mask are not all the same crop
    first = [m for m, lid in draws if lid == draws[0][1]]
    assert len({m.tobytes() for m in first}) == len(first)
    # same generator state -> same layout
    again, again_id = source.draw(0, np.random.default_rng(0))
    np.testing.assert_array_equal(again, draws[0][0])
    assert again_id == draws[0][1]


def test_augmented_layouts_background_prior_uses_every_mask(toy: SegDataset) -> None:
    source = AugmentedLayouts(toy, 16, class_prior={"background": 1.0})
    ids = {source.draw(i, np.random.default_rng(100 + i))[1] for i in range(80)}
    assert ids == {ref.id for ref in toy.refs}
    assert np.allclose(AugmentedLayouts(toy, 16).probabilities, [0.5, 0.5])  # default: uniform


@pytest.mark.parametrize(
    "prior, message",
    [({"tumour": 1.0}, "unknown labels"), ({"background": -1.0, "nucleus": 1.0}, ">= 0"), ({"nucleus": 0.0}, "positive")],
)
def test_augmented_layouts_reject_bad_priors(toy: SegDataset, prior: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentedLayouts(toy, 16, class_prior=prior)


def test_variant_layouts_repeat_each_mask(toy: SegDataset) -> None:
    source = VariantLayouts(toy, 16, per_mask=3)
    rng = np.random.default_rng(0)
    masks = [source.draw(i, rng) for i in range(3 * len(toy) + 1)]
    assert [lid for _, lid in masks[:6]] == [toy.refs[0].id] * 3 + [toy.refs[1].id] * 3
    assert all(np.array_equal(masks[0][0], m) for m, _ in masks[:3])
    np.testing.assert_array_equal(masks[0][0], fit_mask(toy.load_arrays(0)[1], 16))
    assert masks[-1][1] == toy.refs[0].id  # wraps around after the last mask
    with pytest.raises(ValueError, match="per_mask"):
        VariantLayouts(toy, 16, per_mask=0)


def test_layouts_need_labelled_data(tmp_path: Path) -> None:
    root = write_toy_dataset(tmp_path / "toy")
    with pytest.raises(ValueError, match="labelled"):
        VariantLayouts(SegDataset(root, split="unlabeled"), 16)
    with pytest.raises(ValueError, match="unknown layout source"):
        make_layout_source("random", SegDataset(root), 16)


def test_composed_layouts_match_prior_fractions() -> None:
    """Mean class fractions over 300 layouts equal the prior within 0.02 (4 standard errors)."""
    prior = CompositionPrior(("background", "tissue", "nucleus"), np.array([0.6, 0.3, 0.1]), np.array([0.15, 0.12, 0.05]))
    source = ComposedLayouts(prior, 32)
    fractions = np.stack(
        [np.bincount(source.draw(i, np.random.default_rng(i))[0].ravel(), minlength=3) / 32**2 for i in range(300)]
    )
    np.testing.assert_allclose(fractions.mean(0), prior.mean, atol=0.02)
    assert np.all(fractions.std(0) > 0.02)  # compositions vary from layout to layout


def test_composed_layouts_match_prior_spread_for_two_classes() -> None:
    prior = CompositionPrior(("background", "tumour"), np.array([0.7, 0.3]), np.array([0.1, 0.1]))
    source = ComposedLayouts(prior, 24)
    tumour = np.array([(source.draw(i, np.random.default_rng(i))[0] == 1).mean() for i in range(300)])
    assert abs(tumour.mean() - 0.3) < 0.02
    assert abs(tumour.std() - 0.1) < 0.02


def test_composed_layouts_are_smooth_regions() -> None:
    prior = CompositionPrior(("background", "tissue"), np.array([0.5, 0.5]), np.array([0.0, 0.0]))
    mask, layout_id = ComposedLayouts(prior, 32, smoothness=(0.1, 0.1)).draw(0, np.random.default_rng(0))
    assert layout_id is None and (mask == 1).mean() == 0.5
    # smooth regions: far fewer label changes between neighbours than independent pixels (1.0 summed)
    changes = (np.diff(mask, axis=0) != 0).mean() + (np.diff(mask, axis=1) != 0).mean()
    assert changes < 0.25


def test_composition_prior_from_fingerprint_and_masks(toy: SegDataset) -> None:
    fingerprint = {"per_image_fractions": {"nucleus": {"mean": 0.2, "std": 0.05}}, "class_fractions": {"nucleus": 0.3}}
    prior = CompositionPrior.from_fingerprint(fingerprint, ["background", "nucleus"])
    np.testing.assert_allclose(prior.mean, [0.8, 0.2])
    np.testing.assert_allclose(prior.std, [0.0, 0.05])
    prior = CompositionPrior.from_fingerprint({"class_fractions": {"background": 0.7, "nucleus": 0.3}}, ["background", "nucleus"])
    np.testing.assert_allclose(prior.std, [0.0, 0.0])
    with pytest.raises(ValueError, match="unknown labels"):
        CompositionPrior.from_fingerprint({"class_fractions": {"tumour": 0.3}}, ["background", "nucleus"])
    with pytest.raises(ValueError, match="sum to 1"):
        CompositionPrior.from_fingerprint({"class_fractions": {"background": 0.9, "nucleus": 0.3}}, ["background", "nucleus"])
    measured = CompositionPrior.from_masks(toy)
    masks = np.stack([toy.load_arrays(i)[1] for i in range(len(toy))])
    assert measured.mean[1] == pytest.approx((masks == 1).mean())
    assert CompositionPrior.for_dataset(toy).mean[1] == pytest.approx(measured.mean[1])  # no fingerprint.json


def test_composed_source_measures_its_masks_not_a_file_beside_the_data(toy: SegDataset) -> None:
    # a stale fingerprint.json in the data folder (older segsynth wrote one there) is not read
    (Path(toy.root) / "fingerprint.json").write_text('{"per_image_fractions": {"nucleus": {"mean": 0.25, "std": 0.1}}}')
    source = make_layout_source("composed", toy, 16)
    assert isinstance(source, ComposedLayouts)
    np.testing.assert_allclose(source.prior.mean, CompositionPrior.from_masks(toy).mean)
