"""Generator evaluation: every measure on constructed cases with known answers, then end to end."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from segsynth.artifacts.names import IMAGES_DIR, MASKS_DIR
from segsynth.artifacts.schemas import Guidance, ManifestRecord, read_metrics
from segsynth.cli import app
from segsynth.data.format import DatasetSpec, load_spec, save_spec
from segsynth.data.io import write_image
from segsynth.evaluation import (
    EvaluationConfig,
    SegEncoderFeatures,
    StainTextureFeatures,
    default_seg_config,
    distribution_distance,
    diversity,
    evaluate_synth,
    layout_groups,
    retrieval_accuracy,
    score_layouts,
    split_by_case,
    style_retrieval,
)
from segsynth.seg.config import NetworkConfig
from segsynth.seg.networks import build_network
from segsynth.synth.manifest import read_manifest, write_manifest


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def textures(n: int, rng: np.random.Generator, level: float, smooth: float, channels: int = 1, size: int = 16) -> np.ndarray:
    """``n`` random textures ``(n, C, size, size)`` in [0, 1] around ``level`` with blur ``smooth``."""
    noise = rng.normal(0, 1, (n, channels, size, size))
    noise = np.stack([gaussian_filter(x, (0, smooth, smooth)) for x in noise])
    noise = noise / noise.std(axis=(1, 2, 3), keepdims=True) * 0.1
    return np.clip(noise + np.asarray(level).reshape(1, -1, 1, 1), 0, 1).astype(np.float32)


def write_synthetic_set(
    root: Path,
    images: np.ndarray,
    masks: np.ndarray,
    layout_ids: Sequence[str | None] | None = None,
    styles: Sequence[tuple[str, list[str]]] | None = None,
    labels: Sequence[str] = ("background", "lesion"),
) -> Path:
    """A synthetic set folder as ``segsynth generate`` writes it: images, masks, manifest, dataset.json."""
    records = []
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        sample_id = f"synth_{index:07d}"
        pixels = np.round(np.moveaxis(image, 0, -1) * 255).astype(np.uint8)
        write_image(root / IMAGES_DIR / f"{sample_id}.png", pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        write_image(root / MASKS_DIR / f"{sample_id}.png", mask.astype(np.uint8))
        source, style_ids = styles[index] if styles is not None else (None, [])
        records.append(ManifestRecord(
            id=sample_id, image=f"{IMAGES_DIR}/{sample_id}.png", mask=f"{MASKS_DIR}/{sample_id}.png", index=index,
            seed=index, layout_source="variants", layout_id=layout_ids[index] if layout_ids else None,
            style_source=source, style_sampler="multi_patch" if source else None, style_ids=style_ids,
            prompt="Nuclei, fluorescence microscopy", guidance=Guidance(style=1.5, layout=1.0, rescale=0.7),
            sampler="dpmpp", steps=2, model_hash="0" * 64,
        ))
    write_manifest(root / "manifest.jsonl", records)
    save_spec(root, DatasetSpec(
        name="tiny-synthetic", modality="Fluorescence microscopy", prompt="Nuclei, fluorescence microscopy",
        channels=images.shape[1], labels={name: value for value, name in enumerate(labels)},
        label_provenance="human", derivation="conditioning layouts", licence="CC0-1.0",
        cases={r.id: r.layout_id or r.id for r in records},
    ))
    return root


# --- distribution -----------------------------------------------------------------------------


def test_fid_and_kid_are_zero_for_identical_sets_and_grow_for_different_ones() -> None:
    rng = np.random.default_rng(0)
    real = textures(96, rng, 0.4, 0.5)
    same_distribution = textures(96, rng, 0.4, 0.5)
    different = textures(96, rng, 0.65, 2.0)
    torch.manual_seed(0)
    network = build_network(NetworkConfig(channels=(8, 16), strides=(2,), num_res_units=1), 1, 2)
    extractors = {"seg_encoder": SegEncoderFeatures(network, 2, 1, "unet"), "stain_texture": StainTextureFeatures(1)}
    cases = [f"case{i % 6}" for i in range(len(real))]
    identical = distribution_distance(extractors, real, real.copy(), cases)
    similar = distribution_distance(extractors, real, same_distribution, cases)
    far = distribution_distance(extractors, real, different, cases)
    for key in extractors:
        assert identical[key]["extractor"] == extractors[key].name and extractors[key].name
        zero, near, apart = (r[key]["synthetic_vs_real"] for r in (identical, similar, far))
        assert zero["fid"] == pytest.approx(0.0, abs=1e-4)
        assert zero["kid_mean"] == pytest.approx(0.0, abs=1e-4)
        assert apart["fid"] > 20 * max(near["fid"], 1e-4) and apart["fid"] > 1e-2
        assert apart["kid_mean"] > 20 * max(abs(near["kid_mean"]), 1e-5) and apart["kid_mean"] > 1e-3
        baseline = identical[key]["real_vs_real"]
        assert baseline["split"] == "by case (6 cases)" and baseline["n_real"] + baseline["n_fake"] == len(real)
        assert baseline["fid"] < apart["fid"]
    assert "seg encoder" in identical["seg_encoder"]["extractor"] and "stain" in identical["stain_texture"]["extractor"]


def test_real_halves_never_share_a_case() -> None:
    cases = ["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"] * 1
    half_a, half_b, how = split_by_case(cases, seed=1)
    assert {cases[i] for i in half_a}.isdisjoint({cases[i] for i in half_b})
    assert sorted([*half_a, *half_b]) == list(range(len(cases))) and how == "by case (4 cases)"
    assert abs(len(half_a) - len(half_b)) <= 2
    one_a, one_b, one_how = split_by_case(["x"] * 7)
    assert (len(one_a), len(one_b)) == (3, 4) and "one case" in one_how


# --- style retrieval --------------------------------------------------------------------------


def _style_world(num_styles: int = 12, per_style: int = 2, refs: int = 3):
    """Distinct RGB styles (colour + texture scale); samples and references of each style."""
    rng = np.random.default_rng(3)
    colours = rng.uniform(0.2, 0.8, (num_styles, 3))
    blur = rng.uniform(0.3, 2.5, num_styles)
    images, sets, styles = {}, [], []
    samples = []
    for s in range(num_styles):
        keys = [f"style{s}_ref{r}" for r in range(refs)]
        for key, image in zip(keys, textures(refs, rng, colours[s], blur[s], channels=3, size=24)):
            images[key] = image
        for image in textures(per_style, rng, colours[s], blur[s], channels=3, size=16):
            samples.append(image)
            sets.append(keys)
            styles.append(s)
    return samples, sets, images


def test_style_retrieval_is_high_for_true_references_and_at_chance_when_shuffled() -> None:
    samples, sets, images = _style_world()
    true = style_retrieval(samples, sets, images, channels=3)
    assert true["num_reference_sets"] == 12 and true["top1_chance"] == pytest.approx(1 / 12)
    assert true["top1_accuracy"] >= 0.8 and true["pairwise_accuracy"] >= 0.95  # chance: 0.083 and 0.5
    assert "random conv net" in true["space"] and set(true["by_part"]) == {"stain", "gram"}
    shuffled_sets = [sets[i] for i in np.random.default_rng(0).permutation(len(sets))]
    shuffled = style_retrieval(samples, shuffled_sets, images, channels=3)
    assert shuffled["pairwise_chance"] == 0.5
    assert abs(shuffled["pairwise_accuracy"] - 0.5) < 0.2
    assert shuffled["top1_accuracy"] <= 0.25


def test_retrieval_accuracy_on_known_distances() -> None:
    gallery = np.array([[0.0], [1.0], [3.0]])
    samples = np.array([[0.1], [2.9], [0.9]])
    result = retrieval_accuracy(samples, gallery, own=[0, 2, 0])
    assert result["top1_accuracy"] == pytest.approx(2 / 3)
    # sample 3 (0.9) is nearer to set 1 than to its own set 0, but nearer to its own than to set 2
    assert result["pairwise_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    with pytest.raises(ValueError, match="two distinct"):
        style_retrieval(samples[:, None, None].repeat(4, 2).repeat(4, 3).astype(np.float32), [["a"]] * 3,
                        {"a": np.zeros((1, 4, 4), np.float32)}, channels=1)


# --- layout fidelity --------------------------------------------------------------------------


def _discs(n: int, size: int = 16, classes: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.int64)
    for mask in masks:
        for label in range(1, classes):
            cy, cx, r = rng.integers(4, size - 4, 2).tolist() + [int(rng.integers(2, 5))]
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = label
    return masks


def test_perfect_layouts_give_dice_one_and_missing_structures_dice_zero() -> None:
    masks = _discs(5)
    images = (masks / 2.0).astype(np.float32)[:, None]
    perfect = score_layouts(images, masks, lambda x: torch.round(x[:, 0] * 2).long(), ["background", "a", "b"])
    for metric in ("dice", "iou"):
        for cls in ("a", "b", "mean_fg"):
            assert perfect["summary"][metric][cls]["mean"] == pytest.approx(1.0)
    assert perfect["num_images"] == 5 and perfect["per_image_dice"] == pytest.approx([1.0] * 5)
    blind = score_layouts(images, masks, lambda x: torch.zeros_like(x[:, 0], dtype=torch.long), ["background", "a", "b"])
    assert blind["summary"]["dice"]["mean_fg"]["mean"] == 0.0


# --- diversity --------------------------------------------------------------------------------


def test_diversity_is_zero_for_identical_samples_of_a_layout() -> None:
    rng = np.random.default_rng(0)
    masks = np.repeat(_discs(3, classes=2), 4, axis=0)  # 3 layouts, 4 samples each
    one_per_layout = textures(3, rng, 0.5, 1.0)
    copies = np.repeat(one_per_layout, 4, axis=0)
    real = textures(20, rng, 0.5, 1.0)
    cases = [f"c{i % 4}" for i in range(20)]
    sources = [f"img{i}" for i in range(20)]
    feature = StainTextureFeatures(1)
    same = diversity(copies, masks, [None] * 12, real, cases, sources, feature)
    assert same["grouping"] == "identical conditioning mask" and same["num_groups"] == 3
    assert same["synthetic_same_layout"] == {"num_pairs": 18, "pixel_rmse": 0.0, "stain_texture": 0.0}
    assert same["real_different_images"]["pixel_rmse"] > 0.05 and same["real_same_case"]["num_pairs"] > 0
    assert same["ratio_to_real"]["pixel_rmse"] == 0.0
    varied = diversity(textures(12, rng, 0.5, 1.0), masks, [None] * 12, real, cases, sources, feature)
    assert varied["ratio_to_real"]["pixel_rmse"] == pytest.approx(1.0, abs=0.3)
    groups, how = layout_groups(_discs(4, classes=2), ["a", "a", "b", None])
    assert groups == [[0, 1]] and how.startswith("same source layout")


# --- end to end -------------------------------------------------------------------------------


def real_copies(real: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, list[str]]]]:
    """The labelled images of ``real`` twice over as a synthetic set's images, masks, layout ids and
    style references (drawn from its unlabelled pool)."""
    from segsynth.data.loader import SegDataset

    spec = load_spec(real)
    dataset = SegDataset(real)
    arrays = [dataset.load_arrays(i) for i in range(len(dataset))]
    images = np.stack([a[0] for a in arrays] * 2)
    masks = np.stack([a[1] for a in arrays] * 2)
    layout_ids = [r.id for r in dataset.refs] * 2
    pool = str((real / "unlabeled").resolve())
    stems = sorted(spec.unlabeled_cases)
    styles = [(pool, [stems[i % 4], stems[(i + 1) % 4]]) for i in range(len(images))]
    return images, masks, layout_ids, styles


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    """A tiny real dataset, a synthetic set made of its own images (styles from its pool), evaluated once."""
    tmp = tmp_path_factory.mktemp("evaluate")
    # seed 2: the 15 random masks are all different, so "same layout" means "the same image twice"
    real = write_tiny_dataset(tmp / "real", cases=("p1", "p2", "p3", "p4", "p5"), per_case=3, size=16, unlabeled=4,
                              seed=2)
    synth = write_synthetic_set(tmp / "synth", *real_copies(real))
    seg_config = default_seg_config(16, steps=4)
    result = evaluate_synth(synth, real, seg_config=seg_config, config=EvaluationConfig(max_real_tiles=200))
    return real, synth, result


def test_evaluate_synth_writes_every_section(evaluated) -> None:
    """Every section is written, and where the answer is known it is the answer: the synthetic set
    is the real labelled images twice over, so the real-data network scores each copy alike, its
    copies of the run's test images sit exactly at the ceiling, and two samples of one layout are
    identical (diversity 0)."""
    real, synth, result = evaluated
    saved = json.loads((synth / "evaluation" / "metrics.json").read_text())
    assert saved == result and read_metrics(synth / "evaluation" / "metrics.json").model_dump(exclude_unset=True) == result
    assert result["kind"] == "segsynth.evaluate_synth" and result["num_synthetic"] == 30
    assert result["seg_run"]["trained_here"] and (synth / "evaluation" / "seg_real" / "best" / "model.json").is_file()
    fidelity = result["layout_fidelity"]
    assert set(fidelity["synthetic"]["summary"]) == {"dice", "iou"}
    assert fidelity["real_held_out"]["selection"] == "test split of the run"
    assert set(fidelity["fraction_of_ceiling"]) == {"lesion", "mean_fg"}
    # The copies are the real images: Dice of copy k equals Dice of copy k + 15, and on the copies
    # of the test split the synthetic Dice is the real held-out Dice (fraction of the ceiling 1).
    per_image = fidelity["synthetic"]["per_image_dice"]
    assert len(per_image) == 30 and per_image[:15] == pytest.approx(per_image[15:], abs=1e-6, nan_ok=True)
    layout_of = {r.id: r.layout_id for r in read_manifest(synth / "manifest.jsonl")}
    synthetic_ids = sorted(layout_of)  # load_synthetic keeps id order
    test_ids = set(json.loads((synth / "evaluation" / "seg_real" / "split.json").read_text())["test_ids"])
    on_test = [d for sid, d in zip(synthetic_ids, per_image, strict=True) if layout_of[sid] in test_ids]
    ceiling = fidelity["real_held_out"]["summary"]["dice"]["mean_fg"]
    assert len(on_test) == 2 * fidelity["real_held_out"]["num_images"] > 0
    assert float(np.nanmean(on_test)) == pytest.approx(ceiling["mean"], abs=1e-6)
    assert fidelity["fraction_of_ceiling"]["mean_fg"] == pytest.approx(
        fidelity["synthetic"]["summary"]["dice"]["mean_fg"]["mean"] / ceiling["mean"])
    style = result["style_retrieval"]
    assert style["num_samples"] == 30 and style["num_reference_sets"] == 4 and style["top1_chance"] == 0.25
    for key in ("seg_encoder", "stain_texture"):
        entry = result["distribution"][key]
        assert entry["synthetic_vs_real"]["fid"] >= 0 and "split" in entry["real_vs_real"]
    assert result["diversity"]["grouping"] == "identical conditioning mask"
    same_layout, real_pairs = result["diversity"]["synthetic_same_layout"], result["diversity"]["real_different_images"]
    # Each layout's two samples are the same image: no diversity at all, against real images that differ.
    assert result["diversity"]["num_groups"] == 15 and same_layout["num_pairs"] == 15 and same_layout["pixel_rmse"] == 0 and real_pairs["pixel_rmse"] > 0.05
    assert same_layout["stain_texture"] == pytest.approx(0, abs=1e-9) and result["diversity"]["ratio_to_real"]["pixel_rmse"] == 0
    assert result["provenance"]["real"]["label_provenance"] == "human"
    assert result["real_tiles"] == {"split": "all", "num_tiles": 19, "num_images": 19, "num_cases": 6, "tile_size": [16, 16]}
    assert result["config"] == EvaluationConfig(max_real_tiles=200).model_dump(mode="json")


def test_real_copies_sit_far_closer_to_the_real_data_than_perturbed_copies(evaluated, tmp_path) -> None:
    """FID and KID of the copies of the real images are the floor: the same copies with pixel
    noise (scored by the same network against the same real tiles) sit well above them."""
    real, synth, result = evaluated
    images, masks, layout_ids, styles = real_copies(real)
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 0.15, images.shape), 0, 1).astype(np.float32)
    perturbed = write_synthetic_set(tmp_path / "noisy", noisy, masks, layout_ids, styles)
    other = evaluate_synth(perturbed, real, synth / "evaluation" / "seg_real", config=EvaluationConfig(max_real_tiles=200))
    for key in ("seg_encoder", "stain_texture"):
        copies, noised = result["distribution"][key]["synthetic_vs_real"], other["distribution"][key]["synthetic_vs_real"]
        assert copies["fid"] < 0.25 * noised["fid"], (key, copies, noised)
        assert copies["kid_mean"] < noised["kid_mean"], (key, copies, noised)


def test_cli_evaluate_synth_reuses_a_run_and_refuses_mismatched_data(evaluated, tmp_path) -> None:
    real, synth, _ = evaluated
    run = synth / "evaluation" / "seg_real"
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate-synth", str(synth), "--real", str(real), "--seg-run", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "layout dice lesion" in result.output and "style retrieval top-1" in result.output
    assert "seg encoder" in result.output and (out / "metrics.json").is_file()
    assert not (out / "seg_real").exists()
    # the named options and --set build one EvaluationConfig, recorded with the numbers
    capped = CliRunner().invoke(app, ["evaluate-synth", str(synth), "--real", str(real), "--seg-run", str(run), "--out",
                                      str(tmp_path / "capped"), "--max-samples", "6", "--set", "max_real_tiles=3",
                                      "--set", "real_split=unlabeled"])
    assert capped.exit_code == 0, capped.output
    saved = json.loads((tmp_path / "capped" / "metrics.json").read_text())
    assert saved["num_synthetic"] == 6 and saved["real_tiles"]["num_tiles"] == 3 and saved["real_tiles"]["split"] == "unlabeled"
    assert saved["config"] == {"real_split": "unlabeled", "max_samples": 6, "max_real_tiles": 3, "kid_subsets": 50, "seed": 0}
    bad = CliRunner().invoke(app, ["evaluate-synth", str(synth), "--real", str(real), "--out", str(tmp_path / "bad"),
                                   "--real-split", "everything"])
    assert bad.exit_code == 2 and "real_split" in bad.output and not (tmp_path / "bad").exists()
    other = write_tiny_dataset(tmp_path / "other", labels=("background", "a", "b"))
    refused = CliRunner().invoke(app, ["evaluate-synth", str(synth), "--real", str(other), "--seg-run", str(run), "--out", str(out)])
    assert refused.exit_code == 2 and "differ" in refused.output


def test_former_keywords_still_work_with_a_deprecation_warning(evaluated, tmp_path) -> None:
    real, synth, _ = evaluated
    run = synth / "evaluation" / "seg_real"
    with pytest.warns(DeprecationWarning, match="EvaluationConfig"):
        result = evaluate_synth(synth, real, run, out=tmp_path / "old", max_samples=4, seed=3)
    assert result["num_synthetic"] == 4 and result["config"]["seed"] == 3
    with pytest.raises(TypeError, match="max_tiles"):
        evaluate_synth(synth, real, run, out=tmp_path / "typo", max_tiles=4)
