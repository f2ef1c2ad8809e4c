"""``SegDataset`` samples and paired augmentation: dtypes, ranges, alignment, per-(seed, epoch, index) draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segsynth.data.augment import paired_augmentation
from segsynth.data.format import DatasetSpec, save_spec
from segsynth.data.io import write_image
from segsynth.data.loader import SegDataset, index_dataset


@pytest.fixture
def mirror_dataset(tmp_path: Path) -> Path:
    """Images that equal their (binary, asymmetric) mask x 255, so any misalignment shows."""
    root = tmp_path / "mirror"
    rng = np.random.default_rng(0)
    stems = {}
    for i in range(4):
        mask = np.zeros((24, 24), np.uint8)
        y, x = rng.integers(2, 12, size=2)
        mask[y : y + 10, x : x + 6] = 1
        mask[y : y + 3, x : x + 12] = 1  # an L shape: no flip or rotation maps it onto itself
        write_image(root / "images" / f"c{i // 2}_{i}.png", mask * 255)
        write_image(root / "masks" / f"c{i // 2}_{i}.png", mask)
        stems[f"c{i // 2}_{i}"] = f"c{i // 2}"
    save_spec(root, DatasetSpec(name="mirror", modality="test", prompt="L shapes", channels=1,
                                labels={"background": 0, "shape": 1}, label_provenance="human",
                                licence="CC0-1.0", cases=stems))
    return root


def test_samples_have_documented_dtypes_ranges_and_shapes(dataset_factory) -> None:
    root = dataset_factory(channels=3, labels=("background", "a", "b"), size=20)
    ds = SegDataset(root)
    assert len(ds) == 6
    sample = ds[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 20, 20)
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (20, 20)
    assert set(sample["mask"].unique().tolist()) <= {0, 1, 2}
    assert (sample["case_id"], sample["id"]) == ("p1", "p1_0")
    unlabeled = SegDataset(root, split="unlabeled")
    assert len(unlabeled) == 2 and "mask" not in unlabeled[0] and unlabeled[0]["case_id"] == "u1"


def test_refs_restrict_to_a_fold(dataset_factory) -> None:
    root = dataset_factory()
    fold = [r for r in index_dataset(root) if r.case_id == "p2"]
    assert [s["id"] for s in SegDataset(root, refs=fold)] == ["p2_0", "p2_1"]


@pytest.mark.parametrize("strength", ["light", "heavy"])
def test_augmentation_keeps_image_and_mask_aligned(mirror_dataset: Path, strength: str) -> None:
    ds = SegDataset(mirror_dataset, augment=paired_augmentation(strength), seed=3)
    changed = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            sample = ds[i]
            image, mask = sample["image"][0], sample["mask"]
            agreement = float(((image > 0.5).long() == mask).float().mean())
            # flips/rot90 are exact; rotation/scale/shear interpolate the image bilinearly, the mask nearest
            assert agreement == 1.0 if strength == "light" else agreement > 0.95
            changed += int(not torch.equal(mask, torch.from_numpy(ds.load_arrays(i)[1])))
    assert changed >= 6  # the augmentation actually moved most samples


def test_heavy_augmentation_applies_one_draw_to_all_label_keys(mirror_dataset: Path) -> None:
    augment = paired_augmentation("heavy", image_keys=(), label_keys=("image", "mask"))
    ds = SegDataset(mirror_dataset, augment=augment, seed=1)
    for i in range(len(ds)):
        sample = ds[i]
        assert torch.equal((sample["image"][0] > 0.5).long(), sample["mask"])


def test_augmentation_is_deterministic_per_seed_epoch_index(mirror_dataset: Path) -> None:
    def draws(seed: int, epoch: int) -> list[torch.Tensor]:
        ds = SegDataset(mirror_dataset, augment=paired_augmentation("heavy"), seed=seed)
        ds.set_epoch(epoch)
        return [ds[i]["image"] for i in reversed(range(len(ds)))]  # order of access must not matter

    first, again = draws(0, 0), draws(0, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, draws(0, 1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, draws(1, 0), strict=True))


def test_strength_none_is_identity_and_bad_strength_fails(mirror_dataset: Path) -> None:
    ds = SegDataset(mirror_dataset, augment=paired_augmentation("none"))
    image, mask = ds.load_arrays(0)
    assert torch.equal(ds[0]["mask"], torch.from_numpy(mask)) and torch.equal(ds[0]["image"], torch.from_numpy(image))
    with pytest.raises(ValueError, match="strength must be"):
        paired_augmentation("medium")


def test_duplicate_stems_are_refused_by_the_loader(tmp_path):
    """Two files with one stem are ambiguous: loading names the file instead of picking one."""
    from conftest import write_tiny_dataset

    from segsynth.data.io import DataReadError, read_image

    root = write_tiny_dataset(tmp_path / "ds")
    first = sorted((root / "images").iterdir())[0]
    write_image(first.with_suffix(".tif"), read_image(first))
    with pytest.raises(DataReadError, match="shares the stem"):
        index_dataset(root)


@pytest.mark.parametrize("strength", ["light", "heavy"])
def test_untracked_augmentation_draws_and_values_equal_monais_tracked_compose(strength: str) -> None:
    """The augmentation skips MONAI's metadata tracking for speed; what it draws and returns is unchanged."""
    from monai.data import MetaTensor, get_track_meta
    from monai.transforms import Compose

    plain = paired_augmentation(strength)
    tracked = Compose(plain.transforms)
    g = torch.Generator().manual_seed(0)
    sample = {"image": torch.rand(1, 24, 24, generator=g), "mask": torch.randint(0, 3, (1, 24, 24), generator=g)}
    for seed in range(6):
        plain.set_random_state(seed=seed)
        a = plain({k: v.clone() for k, v in sample.items()})
        tracked.set_random_state(seed=seed)
        b = tracked({k: v.clone() for k, v in sample.items()})
        for key in sample:
            assert type(a[key]) is torch.Tensor and isinstance(b[key], MetaTensor)
            assert torch.equal(a[key], b[key].as_tensor())
    assert get_track_meta()  # the process-wide switch is back as it was
