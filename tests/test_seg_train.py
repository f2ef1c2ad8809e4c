"""train-seg / evaluate-seg on toy blob datasets: learning, leakage guards, resume equality, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

from segsynth.data.format import DatasetFormatError, DatasetSpec, save_spec
from segsynth.data.io import read_image, write_image
from segsynth.data.loader import SegDataset, index_dataset
from segsynth.io.checkpoint import CheckpointManager
from segsynth.seg import train as seg_train
from segsynth.seg.config import SegTrainConfig
from segsynth.seg.evaluate import evaluate_seg
from segsynth.seg.train import train_seg
from segsynth.seg.training_data import check_no_leakage, resolve_split

QUIET = Console(quiet=True)


def blob_pair(rng: np.random.Generator, size: int, brightness: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with one bright disk and its mask (uint8 image, uint8 mask in {0, 1})."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
    radius = rng.uniform(size * 0.15, size * 0.3)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.uint8)
    image = 0.2 + (brightness - 0.2) * mask + rng.normal(0, 0.08, (size, size))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def make_toy_dataset(root: Path, cases: int = 6, per_case: int = 2, size: int = 32, seed: int = 0) -> Path:
    """A labelled dataset folder with ``cases`` x ``per_case`` blob images named ``c{k}_{i}``."""
    rng = np.random.default_rng(seed)
    stems = {}
    for c in range(cases):
        for i in range(per_case):
            stem = f"c{c}_{i}"
            image, mask = blob_pair(rng, size)
            write_image(root / "images" / f"{stem}.png", image)
            write_image(root / "masks" / f"{stem}.png", mask)
            stems[stem] = f"case{c}"
    spec = DatasetSpec(
        name="toy-blobs", modality="synthetic test", prompt="blob", channels=1,
        labels={"background": 0, "blob": 1}, label_provenance="human", licence="CC0", cases=stems,
    )
    save_spec(root, spec)
    return root


def make_synthetic_set(
    root: Path, real: Path, variants: int = 2, layout_ids: list[str] | None = None, layout_source: str = "variants"
) -> Path:
    """A synthetic set following the contract: the real masks re-drawn with a darker style.

    ``variants`` images per real sample id in ``layout_ids`` (default all), each with a
    ``manifest.jsonl`` row whose ``layout_id`` names the real sample.
    """
    rng = np.random.default_rng(1)
    refs = [r for r in index_dataset(real) if layout_ids is None or r.id in layout_ids]
    rows, cases = [], {}
    for r in refs:
        mask = read_image(r.mask_path)
        for v in range(variants):
            stem = f"syn_{r.id}_{v}"
            image = 0.1 + 0.5 * mask + rng.normal(0, 0.05, mask.shape)
            write_image(root / "images" / f"{stem}.png", (np.clip(image, 0, 1) * 255).astype(np.uint8))
            write_image(root / "masks" / f"{stem}.png", mask.astype(np.uint8))
            cases[stem] = f"syn_{r.case_id}"
            rows.append({
                "id": stem, "image": f"images/{stem}.png", "mask": f"masks/{stem}.png", "index": len(rows),
                "seed": len(rows), "layout_source": layout_source, "layout_id": r.id, "style_source": "pool",
                "style_sampler": "augmented", "style_ids": [], "prompt": "blob",
                "guidance": {"style": 1.5, "layout": 1.0, "rescale": 0.7}, "sampler": "dpmpp", "steps": 4,
                "model_hash": "0" * 8,
            })
    spec = DatasetSpec(
        name="toy-synth", modality="synthetic test", prompt="blob", channels=1,
        labels={"background": 0, "blob": 1}, label_provenance="derived", derivation="toy generator",
        licence="CC0", cases=cases,
    )
    save_spec(root, spec)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def tiny_config(**train) -> SegTrainConfig:
    return SegTrainConfig.model_validate({
        "network": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "optim": {"lr": 1e-2, "schedule": "constant"},
        "train": {"steps": 18, "val_every": 3, "batch_size": 4, "augment": "light", **train},
        "split": {"test_fraction": 0.34, "val_fraction": 0.25},
    })


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


def test_tiny_run_learns_and_writes_its_folder(toy: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = train_seg(toy, tiny_config(steps=20, val_every=2), tmp_path / "run", console=QUIET)
    for name in ("config.yaml", "split.json", "train_log.jsonl", "training.json", "best/model.json", "best/model.safetensors"):
        assert (run / name).is_file(), name
    assert CheckpointManager(run).complete_steps()
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(2, 21, 2))
    assert log[-1]["loss"] < log[0]["loss"]
    summary = json.loads((run / "training.json").read_text())
    assert summary["steps"] == 20 and summary["examples_seen"] == 80 and not summary["stopped_early"]
    assert summary["best_val_dice"] == max(r["val_dice"] for r in log)
    assert json.loads((run / "best/model.json").read_text())["step"] == summary["best_step"]
    result = evaluate_seg(run, toy)
    split = json.loads((run / "split.json").read_text())
    assert result["selection"] == "test split of the run"
    assert sorted(r["id"] for r in result["per_image"]) == split["test_ids"]
    # A disk covering ~15 % of the image: predicting everything foreground gives Dice ~0.26.
    assert result["summary"]["dice"]["blob"]["mean"] > 0.8
    assert result["summary"]["hd95"]["blob"]["mean"] < 5.0


def test_default_split_is_by_case_and_validation_inside_training(toy: Path) -> None:
    refs = index_dataset(toy)
    split = resolve_split(refs, tiny_config())
    case_of = {r.id: r.case_id for r in refs}
    assert len(split.test_cases) == 2 and len(split.val_cases) == 1
    assert not set(split.val_cases) & set(split.test_cases)
    assert {case_of[i] for i in split.val_ids} == set(split.val_cases)
    assert sorted(split.train_ids + split.val_ids + split.test_ids) == sorted(case_of)
    # With explicit training ids, validation cases are drawn from those ids' cases.
    train_ids = [i for i in case_of if case_of[i] in {"case0", "case1", "case2", "case3"}]
    given = resolve_split(refs, tiny_config(), train_ids=train_ids)
    assert set(given.val_cases) < {"case0", "case1", "case2", "case3"}
    assert set(given.test_cases) == {"case4", "case5"}
    low = tiny_config()
    low.split.low_label = 2  # of the 4 non-test cases: 1 train + 1 validation
    few = resolve_split(refs, low)
    assert len(few.train_cases) == 1 and len(few.val_cases) == 1 and few.test_cases == split.test_cases
    low.split.low_label = 0.5
    assert resolve_split(refs, low).train_cases == few.train_cases
    with pytest.raises(ValueError, match="both the val and the test split|both the train and the val split"):
        resolve_split(refs, tiny_config(), train_ids=["c0_0"], val_ids=["c0_1"])


def test_synthetic_from_held_out_layouts_never_trains_and_real_images_are_refused(toy: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    synth = make_synthetic_set(tmp_path / "synth", toy, variants=1)
    cfg = tiny_config(steps=2, val_every=2)
    cfg.mix.strategy = "concat"
    run = train_seg(toy, cfg, tmp_path / "run", synthetic=[synth], console=QUIET)
    split = json.loads((run / "split.json").read_text())
    excluded = split["synthetic"][0]["excluded_held_out_layouts"]
    held = set(split["val_ids"]) | set(split["test_ids"])
    assert sorted(excluded) == sorted(f"syn_{i}_0" for i in held)
    assert split["synthetic"][0]["used"] == len(split["train_ids"])
    # The real dataset passed as a "synthetic" set would put validation images into training: it has
    # no manifest, so it is refused for that first, and declared independent, for its images.
    with pytest.raises(ValueError, match="manifest.jsonl: missing"):
        train_seg(toy, cfg, tmp_path / "run2", synthetic=[toy], console=QUIET)
    independent = cfg.model_copy(update={"mix": cfg.mix.model_copy(update={"layouts_independent": True})})
    with pytest.raises(ValueError, match="synthetic set contains real validation/test image"):
        train_seg(toy, independent, tmp_path / "run3", synthetic=[toy], console=QUIET)
    refs = index_dataset(toy)
    split_obj = resolve_split(refs, cfg)
    from segsynth.seg.synthetic_sets import SyntheticTrainingSet

    n = len(SegDataset(synth))
    leaky = SyntheticTrainingSet(synth, SegDataset(synth), [split_obj.val_ids[0]] * n, True, ["variants"] * n)
    with pytest.raises(ValueError, match="use validation/test layouts"):
        check_no_leakage(split_obj, refs, [leaky])


def test_a_synthetic_set_made_only_from_held_out_layouts_is_refused_by_name(toy: Path, tmp_path: Path) -> None:
    """Every sample dropped as held out leaves nothing to mix in: a clear refusal, not an IndexError."""
    split = resolve_split(index_dataset(toy), tiny_config(steps=2, val_every=2))
    held = [*split.val_ids, *split.test_ids]
    synth = make_synthetic_set(tmp_path / "synth", toy, variants=1, layout_ids=held)
    with pytest.raises(DatasetFormatError, match=rf"synth: all {len(held)} synthetic samples were drawn from layouts "
                                                 "of validation or test cases"):
        train_seg(toy, tiny_config(steps=2, val_every=2), tmp_path / "run", synthetic=[synth], console=QUIET)
    assert not (tmp_path / "run").exists()


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_resumed_run_equals_uninterrupted(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    synth = make_synthetic_set(tmp_path / "synth", toy, variants=2)
    cfg = tiny_config(steps=8, val_every=2)
    cfg.network.dropout = 0.1  # exercises the global torch RNG across the interruption
    cfg.optim.schedule = "cosine"
    cfg.mix.strategy = "merge"
    cfg.mix.cell = 96  # 8 px cells at 32 px
    full = train_seg(toy, cfg, tmp_path / "full", synthetic=[synth], console=QUIET)

    real_step = seg_train.SegTask.train_step
    calls = {"n": 0}

    def crash_in_third_stretch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # step 5 of 8: the first of the third validation interval
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(seg_train.SegTask, "train_step", crash_in_third_stretch)
    with pytest.raises(KeyboardInterrupt):
        train_seg(toy, cfg, tmp_path / "resumed", synthetic=[synth], console=QUIET)
    monkeypatch.setattr(seg_train.SegTask, "train_step", real_step)
    assert CheckpointManager(tmp_path / "resumed").complete_steps() == [4]
    with pytest.raises(FileExistsError, match="--resume"):
        train_seg(toy, cfg, tmp_path / "resumed", synthetic=[synth], console=QUIET)
    resumed = train_seg(toy, cfg, tmp_path / "resumed", synthetic=[synth], resume=True, console=QUIET)

    def untimed_log(run: Path) -> list[dict]:  # every field but the speed is a pure function of the seed
        return [{k: v for k, v in json.loads(line).items() if k != "it_per_s"}
                for line in (run / "train_log.jsonl").read_text().splitlines()]

    assert untimed_log(full) == untimed_log(resumed) and len(untimed_log(full)) == 4
    assert (full / "training.json").read_text() == (resumed / "training.json").read_text()
    a, b = _tensors(full / "best/model.safetensors"), _tensors(resumed / "best/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final_a = CheckpointManager(full).latest()[1]["model"]
    final_b = CheckpointManager(resumed).latest()[1]["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)

    changed = cfg.model_copy(deep=True)
    changed.optim.lr = 0.5
    from segsynth.config import ConfigError

    with pytest.raises(ConfigError, match="cannot resume with a different optim.lr"):
        train_seg(toy, changed, tmp_path / "resumed", synthetic=[synth], resume=True, console=QUIET)


def test_cli_train_seg_and_evaluate_seg(toy: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    from segsynth.cli import app

    synth = make_synthetic_set(tmp_path / "synth", toy, variants=1)
    cfg_path = tmp_path / "seg.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(tiny_config(steps=4, val_every=2).model_dump(mode="json")))
    runner = CliRunner()
    args = ["train-seg", str(toy), "--synthetic", str(synth), "--mix", "ratio:0.5", "--out", str(tmp_path / "run"), "--config", str(cfg_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (tmp_path / "run/train_log.jsonl").read_text().splitlines()]
    assert log[0]["synthetic_examples"] == log[0]["real_examples"] == 4
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    # Resuming a finished run without --config reuses the run's own config.yaml and trains nothing more.
    resumed = runner.invoke(app, [*args[:8], "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert len((tmp_path / "run/train_log.jsonl").read_text().splitlines()) == 2
    bad = runner.invoke(app, [*args[:4], "--mix", "blend:0.3", "--out", str(tmp_path / "run2")])
    assert bad.exit_code == 2 and "--mix" in bad.output
    out = tmp_path / "metrics.json"
    result = runner.invoke(app, ["evaluate-seg", str(tmp_path / "run"), str(toy), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "hd95" in result.output
    metrics = json.loads(out.read_text())
    assert set(metrics["summary"]) == {"dice", "iou", "precision", "recall", "hd95", "assd"}
    assert metrics["num_cases"] == 2


@pytest.mark.parametrize("name", ["unet", "attention_unet", "flexible_unet"])
def test_networks_predict_any_size_and_round_trip(name: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    from segsynth.seg.config import NetworkConfig
    from segsynth.seg.networks import build_network, load_network, predict_logits, save_network, size_divisor

    cfg = NetworkConfig(name=name, channels=(4, 8, 16), strides=(2, 2), decoder_channels=(32, 16, 16, 8, 8))
    torch.manual_seed(0)
    model = build_network(cfg, in_channels=2, num_classes=3).eval()
    image = torch.rand(1, 2, 40, 24)
    with torch.no_grad():
        whole = predict_logits(model, image, size_divisor(cfg))
        tiled = predict_logits(model, image, size_divisor(cfg), patch_size=32)
    assert whole.shape == tiled.shape == (1, 3, 40, 24)
    save_network(tmp_path / "best", model, cfg, 2, ["background", "a", "b"], extra={"epoch": 0})
    loaded, loaded_cfg, meta = load_network(tmp_path / "best")
    assert loaded_cfg == cfg and meta["epoch"] == 0
    with torch.no_grad():
        assert torch.equal(predict_logits(loaded, image, size_divisor(cfg)), whole)
    with pytest.raises(ValueError, match="num_classes"):
        build_network(cfg, 1, 1)


def test_a_non_finite_loss_stops_training_before_anything_is_saved(toy: Path, tmp_path: Path) -> None:
    from segsynth.io.finite import NonFiniteError

    cfg = tiny_config(steps=6, val_every=3)
    cfg.optim.lr = 1e30  # finite, but the weights overflow within a few steps
    with pytest.raises(NonFiniteError, match=r"train-seg: step [1-6]: loss term 'loss' is (nan|inf)"):
        train_seg(toy, cfg, tmp_path / "run", console=QUIET)
    assert not CheckpointManager(tmp_path / "run").complete_steps()
