"""Style samplers: N references from the right case, never the training target, deterministic for a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segsynth.config import ConfigError, load_config
from segsynth.data import DatasetSpec, SegDataset, save_spec, write_image
from segsynth.data.style_sampling import STYLE_SAMPLERS, make_style_sampler
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.samples import SampleSettings, TrainingSamples

#: The samplers whose references come from the target's case-mates (not copies of the target).
CASE_SAMPLERS = ("nearby", "multi_patch")


def write_blob_dataset(
    root: Path, cases: dict[str, int], size: int = 24, unlabeled: dict[str, int] | None = None, seed: int = 0
) -> Path:
    """A dataset folder of random bright blobs on dark noise; each case has its own brightness.

    Args:
        root: folder to create.
        cases: case id -> number of labelled images.
        size: image side in pixels.
        unlabeled: case id -> number of unlabelled images.
        seed: makes the images reproducible.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]

    def blob_pair(level: float) -> tuple[np.ndarray, np.ndarray]:
        mask = np.zeros((size, size), np.uint8)
        for _ in range(3):
            cy, cx, r = rng.integers(3, size - 3), rng.integers(3, size - 3), rng.integers(2, size // 4)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        image = 0.15 * rng.random((size, size)) + level * mask
        return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask

    def write_split(folder: str, counts: dict[str, int], with_masks: bool) -> dict[str, str]:
        stems = {}
        for c, (case, count) in enumerate(sorted(counts.items())):
            for i in range(count):
                stem = f"{case}_{i:03d}"
                image, mask = blob_pair(0.4 + 0.2 * c)
                write_image(root / folder / f"{stem}.png", image)
                if with_masks:
                    write_image(root / "masks" / f"{stem}.png", mask)
                stems[stem] = case
        return stems

    spec = DatasetSpec(
        name="blobs",
        modality="synthetic fluorescence",
        prompt="Nuclei, Fluorescence",
        channels=1,
        labels={"background": 0, "nucleus": 1},
        label_provenance="human",
        licence="CC0-1.0",
        cases=write_split("images", cases, True),
        unlabeled_cases=write_split("unlabeled", unlabeled or {}, False),
    )
    save_spec(root, spec)
    return root


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_blob_dataset(tmp_path_factory.mktemp("blobs"), {"a": 4, "b": 3, "c": 1}, unlabeled={"u": 3})


@pytest.mark.parametrize("name", sorted(STYLE_SAMPLERS))
@pytest.mark.parametrize("n", [1, 5])
def test_n_references_from_the_anchor_case(blobs: Path, name: str, n: int) -> None:
    dataset = SegDataset(blobs)
    sampler = make_style_sampler(name, patch_size=16, anchor_is_target=False)
    for anchor in range(len(dataset)):
        images, ids = sampler(dataset, anchor, n, np.random.default_rng(0))
        assert images.shape == (n, 1, 16, 16) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0
        assert len(ids) == n
        case = dataset.refs[anchor].case_id
        by_id = {ref.id: ref.case_id for ref in dataset.refs}
        assert {by_id[i] for i in ids} == {case}


@pytest.mark.parametrize("name", sorted(STYLE_SAMPLERS))
def test_deterministic_for_a_seed(blobs: Path, name: str) -> None:
    dataset = SegDataset(blobs)
    sampler = make_style_sampler(name, patch_size=12)
    a = sampler(dataset, 1, 4, np.random.default_rng(7))
    b = sampler(dataset, 1, 4, np.random.default_rng(7))
    c = sampler(dataset, 1, 4, np.random.default_rng(8))
    assert a[1] == b[1] and np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])  # crops (and for multi_patch the picks) move with the seed


def test_what_each_sampler_picks(blobs: Path) -> None:
    dataset = SegDataset(blobs)
    rng = np.random.default_rng(0)
    anchor = [ref.id for ref in dataset.refs].index("a_001")
    assert make_style_sampler("augmented")(dataset, anchor, 3, rng)[1] == ["a_001"] * 3
    # a training target is never its own neighbour; a case of four cycles through the other three
    assert make_style_sampler("nearby")(dataset, anchor, 4, rng)[1] == ["a_000", "a_002", "a_003", "a_000"]
    picks = make_style_sampler("multi_patch")(dataset, anchor, 3, rng)[1]
    assert "a_001" not in picks and len(set(picks)) == 3  # without replacement while the case allows
    # a pool anchor only picks the style, so it may be a reference itself
    pool = {name: make_style_sampler(name, anchor_is_target=False) for name in CASE_SAMPLERS}
    assert pool["nearby"](dataset, anchor, 5, rng)[1] == ["a_001", "a_000", "a_002", "a_003", "a_001"]
    single = [ref.id for ref in dataset.refs].index("c_000")
    assert pool["multi_patch"](dataset, single, 2, rng)[1] == ["c_000", "c_000"]


@pytest.mark.parametrize("name", CASE_SAMPLERS)
def test_a_training_target_is_never_its_own_reference(tmp_path: Path, name: str) -> None:
    cases = write_blob_dataset(tmp_path / "pairs", {"a": 2, "b": 3, "c": 4}, size=16)
    cfg = load_config(DiffusionTrainConfig, None, {
        "model.image_size": 16, "model.style.num_refs": 3, "data.style_sampler": name})
    samples = TrainingSamples(cases, SegDataset(cases).refs, SampleSettings.of(cfg))
    draws = []
    real_sampler = samples.sampler

    def spy(dataset: SegDataset, anchor: int, n: int, rng: np.random.Generator):
        images, ids = real_sampler(dataset, anchor, n, rng)
        draws.append((dataset.refs[anchor].id, ids))
        return images, ids

    samples.sampler = spy
    for epoch in range(3):
        for index in range(len(samples)):
            assert samples[epoch, index]["style_images"].shape == (3, 1, 16, 16)
    samples.preview_rows(4, seed=0)
    assert len(draws) == 3 * len(samples) + 4
    for target, ids in draws:
        assert target not in ids and {i.split("_")[0] for i in ids} == {target.split("_")[0]}


@pytest.mark.parametrize("name", CASE_SAMPLERS)
def test_training_refuses_a_case_of_one_image_naming_it(blobs: Path, name: str) -> None:
    dataset = SegDataset(blobs)  # case "c" holds one image
    sampler = make_style_sampler(name)
    with pytest.raises(ConfigError, match=r"case\(s\) 'c' hold a single image.*style_sampler: augmented"):
        sampler.check_targets(dataset)
    with pytest.raises(ConfigError, match="'c'"):
        sampler(dataset, [ref.id for ref in dataset.refs].index("c_000"), 2, np.random.default_rng(0))
    cfg = load_config(DiffusionTrainConfig, None, {"model.image_size": 16, "data.style_sampler": name})
    with pytest.raises(ConfigError, match="'c'"):
        TrainingSamples(blobs, dataset.refs, SampleSettings.of(cfg))
    make_style_sampler("augmented").check_targets(dataset)  # copies of the target: the stated choice
    make_style_sampler(name, anchor_is_target=False).check_targets(dataset)  # a generation pool


def test_augmented_copies_differ_but_keep_intensities(blobs: Path) -> None:
    dataset = SegDataset(blobs)
    images, _ = make_style_sampler("augmented")(dataset, 0, 6, np.random.default_rng(3))
    original = dataset.load_arrays(0)[0]
    assert any(not np.array_equal(image, original) for image in images)
    for image in images:  # geometry only: the histogram (the style) is untouched
        assert np.array_equal(np.sort(image.ravel()), np.sort(original.ravel()))


def test_unlabeled_split_and_padding(blobs: Path) -> None:
    dataset = SegDataset(blobs, split="unlabeled")
    images, ids = make_style_sampler("multi_patch", patch_size=40)(dataset, 0, 2, np.random.default_rng(0))
    assert images.shape == (2, 1, 40, 40)  # 24-px images reflect-padded to the patch size
    assert all(i.startswith("u_") and i != "u_000" for i in ids)


def test_bad_arguments(blobs: Path) -> None:
    dataset = SegDataset(blobs)
    with pytest.raises(ValueError, match="unknown style sampler 'random'"):
        make_style_sampler("random")
    with pytest.raises(ValueError, match="patch_size"):
        make_style_sampler("nearby", patch_size=0)
    with pytest.raises(ValueError, match="out of range"):
        make_style_sampler("nearby")(dataset, len(dataset), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n must be"):
        make_style_sampler("nearby")(dataset, 0, 0, np.random.default_rng(0))
