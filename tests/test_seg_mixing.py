"""Mixing strategies: ratio per batch, concat union, DiffBoost merge pairing, grid and merge maths."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from test_seg_train import make_synthetic_set, make_toy_dataset
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.config import ConfigError
from segsynth.data.format import DatasetFormatError
from segsynth.data.io import read_image, write_image
from segsynth.data.loader import SegDataset
from segsynth.seg.config import MixConfig, parse_mix
from segsynth.seg.mixing import (
    ConcatMixing,
    MergeMixing,
    RatioMixing,
    make_mixing,
    merge_cell_size,
    merge_grid,
    random_merge,
)
from segsynth.seg.plan_dataset import PlanDataset
from segsynth.seg.synthetic_sets import load_synthetic_set


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mix")
    real = make_toy_dataset(root / "real", cases=3, per_case=2, size=16)
    # Variants only for the first four real images: the last two have none.
    synth = make_synthetic_set(root / "synth", real, variants=2, layout_ids=["c0_0", "c0_1", "c1_0", "c1_1"])
    return real, synth


@pytest.mark.parametrize("fraction", [0.8, 0.5, 0.3, 0.0])
def test_ratio_holds_the_proportion_in_every_batch(fraction: float) -> None:
    mixing = RatioMixing([10, 30, 20], fraction, seed=3)
    batch = 8
    for step in range(12):
        plan = mixing.plan(step * batch, batch)
        assert len(plan) == batch
        synthetic = sum(1 for (source, _), _ in plan if source != 0)
        assert abs(synthetic - fraction * batch) < 1
    whole = mixing.plan(0, 12 * batch)
    assert sum(1 for (s, _), _ in whole if s != 0) == int(fraction * 12 * batch + 1e-9)  # floor(p·f) before p
    # The stream is one sequence: a stretch equals the same positions cut from a longer plan.
    assert mixing.plan(16, 24) == whole[16:40] == RatioMixing([10, 30, 20], fraction, seed=3).plan(16, 24)
    assert mixing.plan(0, 8) != mixing.plan(8, 8)


def test_ratio_walks_the_whole_synthetic_pool_before_repeating() -> None:
    mixing = RatioMixing([5, 30, 20], 0.8, seed=0)
    seen = Counter()
    for step in range(5):  # 125 examples, 100 synthetic = exactly two passes over the 50-image pool
        seen.update(key for key, _ in mixing.plan(step * 25, 25) if key[0] != 0)
    assert len(seen) == 50 and set(seen.values()) == {2}
    real = Counter(key for key, _ in mixing.plan(0, 125) if key[0] == 0)
    assert set(real.values()) == {5}  # 25 real examples: five passes over the five real images
    with pytest.raises(ValueError, match="non-empty synthetic"):
        RatioMixing([4], 0.8)


def test_every_strategy_fills_the_same_budget() -> None:
    """Synthetic data changes what a batch holds, never how many examples a run consumes."""
    for mixing in (ConcatMixing([6]), ConcatMixing([6, 40]), RatioMixing([6, 40], 0.8),
                   MergeMixing([[(1, i)] for i in range(6)])):
        assert len(mixing.plan(0, 200)) == 200 and len(mixing.plan(200, 8)) == 8


def test_concat_is_the_plain_union_walked_in_permutations() -> None:
    mixing = ConcatMixing([3, 4, 2], seed=1)
    passes = [mixing.plan(9 * k, 9) for k in range(2)]
    for plan in passes:
        assert sorted(key for key, _ in plan) == [(0, 0), (0, 1), (0, 2), *[(1, i) for i in range(4)], (2, 0), (2, 1)]
        assert all(partner is None for _, partner in plan)
    assert passes[0] != passes[1]


def test_merge_pairs_each_real_image_with_one_of_its_own_variants(sets: tuple[Path, Path]) -> None:
    real_root, synth_root = sets
    real = SegDataset(real_root)
    synth = load_synthetic_set(synth_root, real)
    mixing = make_mixing(MixConfig(strategy="merge"), real, [synth], seed=0)
    assert isinstance(mixing, MergeMixing) and mixing.paired
    chosen = Counter()
    for k in range(40):
        plan = mixing.plan(k * len(real), len(real))
        assert sorted(i for (_, i), _ in plan) == list(range(len(real)))
        for (_, i), partner in plan:
            real_id = real.refs[i].id
            if real_id in {"c2_0", "c2_1"}:
                assert partner is None
            else:
                assert partner is not None and synth.layout_ids[partner[1]] == real_id
                chosen[partner] += 1
    # Both variants of each real image get picked.
    assert len(chosen) == 8 and min(chosen.values()) > 5


def test_paired_examples_share_one_augmentation(sets: tuple[Path, Path]) -> None:
    real_root, synth_root = sets
    real = SegDataset(real_root)
    synth = load_synthetic_set(synth_root, real)
    mixing = make_mixing(MixConfig(strategy="merge"), real, [synth], seed=0)
    data = PlanDataset([real, synth.dataset], mixing.plan(0, 6), range(6), True, "heavy", None, seed=0)
    flags = []
    for k in range(len(data)):
        item = data[k]
        assert item["image"].shape == item["partner_image"].shape == (1, 16, 16)
        # The toy variants keep the real mask, so identical geometry means identical masks.
        assert torch.equal(item["mask"], item["partner_mask"])
        flags.append(item["has_partner"])
    assert flags.count(False) == 2
    again = PlanDataset([real, synth.dataset], mixing.plan(0, 6), range(6), True, "heavy", None, seed=0)
    assert torch.equal(again[3]["image"], data[3]["image"])
    cropped = PlanDataset([real, synth.dataset], mixing.plan(0, 6), range(6), True, "light", 8, seed=0)[0]
    assert cropped["image"].shape == cropped["partner_image"].shape == (1, 8, 8)


def test_merge_refuses_a_variant_whose_mask_is_not_the_real_mask(tmp_path: Path) -> None:
    real_root = make_toy_dataset(tmp_path / "real", cases=2, per_case=1, size=16)
    synth_root = make_synthetic_set(tmp_path / "synth", real_root, variants=1)
    mask_path = synth_root / "masks" / "syn_c0_0_0.png"
    write_image(mask_path, np.rot90(read_image(mask_path)).copy())  # claims to be a variant, is rotated
    real = SegDataset(real_root)
    synth = load_synthetic_set(synth_root, real)
    mixing = make_mixing(MixConfig(strategy="merge"), real, [synth], seed=0)
    plan = [item for item in mixing.plan(0, 8) if item[1] == (1, 0)][:1]
    with pytest.raises(ValueError, match=r"syn_c0_0_0.png: differs from the mask of its real image"):
        PlanDataset([real, synth.dataset], plan, [0], True, "none", None, seed=0)[0]


def test_merge_cell_scales_with_image_size() -> None:
    assert merge_cell_size(384) == 64
    assert merge_cell_size(768) == 128
    assert merge_cell_size(32) == 5  # round(64 * 32 / 384) = round(5.33)
    assert merge_cell_size(4) == 1


def test_merge_grid_alpha_in_expectation_and_square_cells() -> None:
    generator = torch.Generator().manual_seed(0)
    grid = merge_grid(64, 384, 384, alpha=0.6, cell=64, generator=generator)
    assert grid.shape == (64, 1, 384, 384) and grid.dtype == torch.bool
    cells = grid[:, 0, ::64, ::64].float()
    assert abs(cells.mean().item() - 0.6) < 0.03  # 2304 Bernoulli cells: std 0.01
    blocks = grid[:, 0].reshape(64, 6, 64, 6, 64)
    assert torch.all(blocks.all(dim=(2, 4)) | ~blocks.any(dim=(2, 4)))  # each cell is uniform
    partial = merge_grid(2, 10, 7, alpha=0.5, cell=4, generator=generator)
    assert partial.shape == (2, 1, 10, 7)
    assert merge_grid(3, 8, 8, alpha=1.0, cell=2).all() and not merge_grid(3, 8, 8, alpha=0.0, cell=2).any()
    with pytest.raises(ValueError, match="alpha"):
        merge_grid(1, 8, 8, alpha=1.5, cell=2)


def test_random_merge_takes_prediction_and_label_from_the_same_cells() -> None:
    generator = torch.Generator().manual_seed(1)
    real_mask = torch.randint(0, 3, (4, 12, 12), generator=generator)
    syn_mask = torch.randint(0, 3, (4, 12, 12), generator=generator)
    # Logits that encode their own label, so a merged pair is consistent iff argmax == label.
    real_logits = torch.nn.functional.one_hot(real_mask, 3).permute(0, 3, 1, 2).float()
    syn_logits = torch.nn.functional.one_hot(syn_mask, 3).permute(0, 3, 1, 2).float() * 2
    grid = merge_grid(4, 12, 12, 0.6, 4, generator)
    has_partner = torch.tensor([True, True, True, False])
    logits, mask = random_merge(real_logits, syn_logits, real_mask, syn_mask, grid, has_partner)
    assert logits.shape == (4, 3, 12, 12) and mask.shape == (4, 12, 12)
    assert torch.equal(logits.argmax(1), mask)
    take_real = grid[:3, 0]
    assert torch.equal(mask[:3][take_real], real_mask[:3][take_real])
    assert torch.equal(mask[:3][~take_real], syn_mask[:3][~take_real])
    assert torch.equal(logits[:3].amax(1)[~take_real], torch.full_like(logits[:3].amax(1)[~take_real], 2.0))
    # No variant: the all-real grid.
    assert torch.equal(mask[3], real_mask[3]) and torch.equal(logits[3], real_logits[3])


def test_strategy_selection_and_errors(sets: tuple[Path, Path], tmp_path: Path) -> None:
    real_root, synth_root = sets
    real = SegDataset(real_root)
    synth = load_synthetic_set(synth_root, real)
    assert isinstance(make_mixing(MixConfig(strategy="ratio"), real, [synth], 0), RatioMixing)
    assert isinstance(make_mixing(MixConfig(strategy="concat"), real, [synth], 0), ConcatMixing)
    assert isinstance(make_mixing(MixConfig(), real, [], 0), ConcatMixing)
    with pytest.raises(ValueError, match="mix.strategy is 'none'"):
        make_mixing(MixConfig(), real, [synth], 0)
    with pytest.raises(ValueError, match="needs at least one synthetic set"):
        make_mixing(MixConfig(strategy="merge"), real, [], 0)
    (tmp_path / "nomanifest").mkdir()
    bare = make_synthetic_set(tmp_path / "nomanifest", real_root, variants=1)
    (bare / "manifest.jsonl").unlink()
    bare_set = load_synthetic_set(bare, real, layouts_independent=True)
    assert bare_set.layout_ids == [None] * len(bare_set)
    with pytest.raises(DatasetFormatError, match="manifest.jsonl: missing"):
        make_mixing(MixConfig(strategy="merge"), real, [bare_set], 0)
    # A set of augmented layouts (rotated/sheared copies of the masks) cannot be merged with the real image.
    augmented = make_synthetic_set(tmp_path / "augmented", real_root, variants=1, layout_source="augmented")
    with pytest.raises(DatasetFormatError, match=r"augmented.*--layouts variants"):
        make_mixing(MixConfig(strategy="merge"), real, [load_synthetic_set(augmented, real)], 0)
    (bare / "manifest.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(DatasetFormatError, match=r"manifest.jsonl: line 1: .*image: Field required"):
        load_synthetic_set(bare, real, layouts_independent=True)
    spec = (bare / "dataset.json").read_text().replace('"blob": 1', '"tumour": 1')
    (bare / "dataset.json").write_text(spec)
    with pytest.raises(DatasetFormatError, match="differ from the real data"):
        load_synthetic_set(bare, real)


def manifest_rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def write_rows(root: Path, rows: list[dict]) -> None:
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def own_copy(sets: tuple[Path, Path], tmp_path: Path) -> tuple[SegDataset, Path]:
    real_root, synth_root = sets
    shutil.copytree(synth_root, tmp_path / "synth")
    return SegDataset(real_root), tmp_path / "synth"


def test_a_set_without_manifest_is_refused_unless_declared_independent(own_copy) -> None:
    real, synth = own_copy
    (synth / "manifest.jsonl").unlink()
    with pytest.raises(DatasetFormatError, match=r"manifest.jsonl: missing.*independent of this real data"):
        load_synthetic_set(synth, real)
    assert len(load_synthetic_set(synth, real, layouts_independent=True)) == 8


@pytest.mark.parametrize("damage", ["null layout", "no row"])
def test_samples_whose_layout_is_unknown_are_refused(own_copy, damage: str) -> None:
    real, synth = own_copy
    rows = manifest_rows(synth)
    if damage == "null layout":
        rows[3]["layout_id"] = None
    else:
        del rows[3]
    write_rows(synth, rows)
    with pytest.raises(DatasetFormatError, match=rf"1 sample\(s\) without a row naming their layout.*{rows[3]['id'] if damage == 'null layout' else 'syn_c0_1_1'}"):
        load_synthetic_set(synth, real)
    assert len(load_synthetic_set(synth, real, layouts_independent=True)) == 8


def test_composed_layouts_name_no_real_layout_and_are_accepted(own_copy) -> None:
    real, synth = own_copy
    rows = [{**r, "layout_source": "composed", "layout_id": None} for r in manifest_rows(synth)]
    write_rows(synth, rows)
    assert load_synthetic_set(synth, real).layout_ids == [None] * 8


@pytest.mark.parametrize("key", ["id", "image"])
def test_duplicate_manifest_ids_or_images_are_an_error(own_copy, key: str) -> None:
    real, synth = own_copy
    rows = manifest_rows(synth)
    rows[2][key] = rows[1][key]
    write_rows(synth, rows)
    with pytest.raises(DatasetFormatError, match=rf"manifest.jsonl: line 3: duplicate {key}"):
        load_synthetic_set(synth, real, layouts_independent=True)


def test_parse_mix() -> None:
    assert parse_mix("ratio:0.8") == {"mix.strategy": "ratio", "mix.synthetic_fraction": 0.8}
    assert parse_mix("merge:0.6") == {"mix.strategy": "merge", "mix.alpha": 0.6}
    assert parse_mix("concat") == {"mix.strategy": "concat"}
    for bad in ("blend", "ratio:x", "concat:0.2"):
        with pytest.raises(ConfigError):
            parse_mix(bad)
    assert np.isclose(MixConfig().synthetic_fraction, 0.8) and MixConfig().alpha == 0.6


def test_train_seg_refuses_a_manifest_less_set_before_writing(own_copy, sets, tmp_path: Path) -> None:
    real_root, _ = sets
    _, synth = own_copy
    (synth / "manifest.jsonl").unlink()
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train-seg", str(real_root), "--out", str(out), "--synthetic", str(synth)])
    assert result.exit_code == 2, result.output
    assert f"{synth / 'manifest.jsonl'}: missing" in " ".join(result.output.split())
    assert "--layouts-independent" in " ".join(result.output.split())
    assert not out.exists()
    declared = CliRunner().invoke(app, ["train-seg", str(real_root), "--out", str(out), "--synthetic", str(synth),
                                        "--layouts-independent", "--set", "train.steps=2", "--set", "train.val_every=2",
                                        "--set", "train.batch_size=2"])
    assert declared.exit_code == 0, declared.output
    assert json.loads((out / "split.json").read_text())["synthetic"][0]["manifest"] is False
