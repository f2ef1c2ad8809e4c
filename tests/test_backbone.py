"""Pretrained-backbone option: a ControlNet on a frozen Stable Diffusion folder (tiny random components, CPU)."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from typer.testing import CliRunner

from segsynth.controlnet import BackboneError, check_backbone_folder, load_backbone, sample_images
from segsynth.controlnet.config import ControlNetTrainConfig
from segsynth.controlnet.hint import HINT_CHANNELS, hints_from_layouts
from segsynth.controlnet.train import train_controlnet
from segsynth.cli import app
from segsynth.config import load_config
from segsynth.io.checkpoint import CheckpointManager

SIZE = 32  # the tiny VAE has two levels (factor 2): 32 px images, 16 x 16 latents, 8 x 8 at the UNet's bottom

TINY = {
    "data.image_size": SIZE,
    "train.steps": 2,
    "train.batch_size": 2,
    "train.log_every": 1,
    "sampling.steps": 2,
}


def byte_level_chars() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (GPT-2 / CLIP), so any text tokenises."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in kept]
    return [chr(c) for c in kept] + [chr(256 + i) for i in range(len(extra))]


def write_tiny_tokenizer(folder: Path, max_length: int) -> CLIPTokenizer:
    """A CLIP tokenizer from a written vocab (single bytes, no merges): nothing is downloaded."""
    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in byte_level_chars():
            vocab.setdefault(char + suffix, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}), encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, randomly initialised Stable Diffusion folder, written as StableDiffusionPipeline saves it."""
    root = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    tokenizer = write_tiny_tokenizer(root / "tokenizer-src", max_length=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    folder = root / "sd-tiny"
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", size=SIZE)


@pytest.fixture(scope="module")
def straight(backbone: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step run through the command line."""
    run = tmp_path_factory.mktemp("runs") / "straight"
    args = ["train-diffusion", str(data), "--backbone", str(backbone), "--out", str(run)]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{path.relative_to(folder)}/{k}": v for path in sorted(folder.rglob("*.safetensors"))
            for k, v in load_file(path).items()}


def test_training_changes_only_the_controlnet(backbone: Path, straight: Path) -> None:
    before = weights(backbone)
    assert any(k.startswith("unet/") for k in before) and any(k.startswith("text_encoder/") for k in before)
    run_files = {p.name for p in straight.iterdir()}
    assert {"controlnet", "backbone.json", "config.yaml", "train_log.jsonl", "checkpoints", "training_data.json"} <= run_files
    # the backbone's files are untouched, and its weights in the trained state equal the files
    after = weights(backbone)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    recorded = json.loads((straight / "backbone.json").read_text())
    assert recorded["path"] == str(backbone.resolve()) and len(recorded["sha256"]) == 64
    # the ControlNet started as a copy of the UNet's encoder and moved away from it
    unet = UNet2DConditionModel.from_pretrained(backbone / "unet")
    initial = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    trained = ControlNetModel.from_pretrained(straight / "controlnet", use_safetensors=True)
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, initial.state_dict()[k])]
    assert any(k.startswith("controlnet_down_blocks") for k in changed) and any(k.startswith("down_blocks") for k in changed)
    lines = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in lines] == [1, 2] and all(np.isfinite(entry["loss"]) for entry in lines)


def test_backbone_is_frozen_during_a_step(backbone: Path, data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """In memory too: after training, the loaded UNet, VAE and text encoder hold the file's weights."""
    import segsynth.controlnet.train as train_module

    seen = {}
    real = train_module.ControlNetTask.release

    def keep(self: train_module.ControlNetTask, step: int) -> None:
        seen["unet"] = {k: v.clone() for k, v in self.backbone.unet.state_dict().items()}
        seen["text"] = {k: v.clone() for k, v in self.backbone.text_encoder.state_dict().items()}
        seen["grad"] = [p.requires_grad for m in (self.backbone.unet, self.backbone.vae, self.backbone.text_encoder)
                        for p in m.parameters()]
        real(self, step)

    monkeypatch.setattr(train_module.ControlNetTask, "release", keep)
    train_controlnet(data, backbone, load_config(ControlNetTrainConfig, None, {**TINY, "train.steps": 1}), tmp_path / "run")
    unet_file = load_file(backbone / "unet" / "diffusion_pytorch_model.safetensors")
    assert seen["unet"].keys() == unet_file.keys() and all(torch.equal(seen["unet"][k], unet_file[k]) for k in unet_file)
    text_file = load_file(backbone / "text_encoder" / "model.safetensors")
    assert all(torch.equal(seen["text"][k], v) for k, v in text_file.items() if k in seen["text"])
    assert not any(seen["grad"])


def test_controlnet_logs_its_curve_to_csv(backbone: Path, data: Path, tmp_path: Path) -> None:
    from test_tracking import assert_csv_matches_train_log

    cfg = load_config(ControlNetTrainConfig, None, {**TINY, "train.log_with": "csv"})
    assert_csv_matches_train_log(train_controlnet(data, backbone, cfg, tmp_path / "run"), "loss")


def test_controlnet_saves_reloads_and_samples_images_of_the_hint_size(straight: Path, data: Path) -> None:
    masks = np.zeros((2, SIZE, SIZE), dtype=np.int64)
    masks[:, 8:24, 8:24] = 1
    hints = hints_from_layouts(masks, num_classes=2)
    assert hints.shape == (2, len(HINT_CHANNELS), SIZE, SIZE) and hints.min() >= 0 and hints.max() <= 1
    assert torch.equal(hints[:, 0] > 0, torch.from_numpy(masks == 1))
    images = sample_images(straight, masks)
    assert images.shape == (2, 1, SIZE, SIZE)  # the tiny dataset is single-channel
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    again = sample_images(straight, masks[:1])
    assert torch.allclose(again, images[:1], atol=1e-5)  # sample i has its own seed


def test_resume_after_stopping_at_step_one_equals_the_straight_run(backbone: Path, data: Path, straight: Path,
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segsynth.controlnet.train as train_module

    run = tmp_path / "resumed"
    cfg = load_config(ControlNetTrainConfig, None, {**TINY, "train.checkpoint_every": 1})
    real_loss, calls = train_module.ControlNetTask.loss, {"n": 0}

    def stops_in_step_two(self: train_module.ControlNetTask, *args: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_loss(self, *args)

    monkeypatch.setattr(train_module.ControlNetTask, "loss", stops_in_step_two)
    with pytest.raises(KeyboardInterrupt):
        train_controlnet(data, backbone, cfg, run)
    monkeypatch.setattr(train_module.ControlNetTask, "loss", real_loss)
    assert CheckpointManager(run).complete_steps() == [1] and not (run / "controlnet").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train_controlnet(data, backbone, cfg, run)
    train_controlnet(data, backbone, cfg, run, resume=True)
    assert CheckpointManager(run).complete_steps() == [2]
    a, b = weights(straight / "controlnet"), weights(run / "controlnet")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = lambda r: [json.loads(line)["loss"] for line in (r / "train_log.jsonl").read_text().splitlines()]  # noqa: E731
    assert log(straight) == log(run)


def test_pickled_file_in_the_backbone_is_refused_naming_it(backbone: Path, data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sd"
    shutil.copytree(backbone, copy)
    marker = tmp_path / "pwned"
    evil = copy / "unet" / "diffusion_pytorch_model.bin"
    evil.write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(BackboneError, match="diffusion_pytorch_model.bin"):
        load_backbone(copy)
    result = CliRunner().invoke(app, ["train-diffusion", str(data), "--backbone", str(copy), "--out",
                                      str(tmp_path / "run"), "--set", f"data.image_size={SIZE}"])
    assert result.exit_code == 2, result.output
    assert "diffusion_pytorch_model.bin" in "".join(result.output.split()) and "never pickle" in result.output
    assert not marker.exists() and not (tmp_path / "run").exists()


class Exploit:
    """Unpickling this would create ``marker``: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("damage", ["folder", "entry", "foreign"])
def test_a_missing_or_foreign_component_is_a_clear_error(backbone: Path, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "sd"
    shutil.copytree(backbone, copy)
    index_path = copy / "model_index.json"
    index = json.loads(index_path.read_text())
    if damage == "folder":
        shutil.rmtree(copy / "text_encoder")
        expected = "text_encoder"
    elif damage == "entry":
        del index["unet"]
        expected = "no 'unet' component"
    else:
        index["unet"] = ["evil_unet", "EvilUNet"]
        expected = "component 'unet'"
    index_path.write_text(json.dumps(index))
    with pytest.raises(BackboneError, match=expected):
        check_backbone_folder(copy)


def test_without_transformers_the_error_names_the_extra(backbone: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(BackboneError, match=r"pip install 'segsynth\[backbone\]'"):
        load_backbone(backbone)


def test_bad_config_fails_before_the_backbone_loads(data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train-diffusion", str(data), "--backbone", str(tmp_path / "nowhere"), "--out",
                                      str(tmp_path / "run"), "--set", "data.prompt_dropp=0.5"])
    assert result.exit_code == 2 and "data.prompt_dropp" in result.output and "unknown key" in result.output


def test_generate_writes_a_synthetic_set_from_a_controlnet_run(straight: Path, data: Path, tmp_path: Path) -> None:
    """`segsynth generate` takes the ControlNet run like any other: variants of the real masks with
    the real images' edges, the usual set format and manifest, and an exact resume."""
    from segsynth.data.loader import SegDataset
    from segsynth.synth.config import GenerationConfig
    from segsynth.synth.generate import generate
    from segsynth.synth.manifest import ManifestRecord, read_manifest

    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["generate", str(straight), "--out", str(out), "-n", "4", "--layouts", "variants",
                                      "--per-mask", "2", "--edges", "image", "--steps", "2", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    records = read_manifest(out / "manifest.jsonl")
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert records[0].layout_id == records[1].layout_id != records[2].layout_id  # 2 variants per real mask
    assert {r.prompt for r in records} == {"Nuclei, fluorescence microscopy"} and records[0].edge_source == "image"
    synthetic = SegDataset(out)
    assert len(synthetic) == 4 and synthetic[0]["image"].shape == (1, 32, 32)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = (out / "manifest.jsonl").read_bytes()
    (out / "images" / "synth_0000003.png").unlink()  # a lost sample is redone, the others kept
    again = generate(straight, out, GenerationConfig(n=4, layouts="variants", per_mask=2, edges="image", steps=2,
                                                      batch_size=2), resume=True)
    assert (again.generated, again.skipped) == (1, 3)
    # Exact: the redone sample is byte for byte the lost one, and the set (manifest included) is unchanged.
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after.keys() == before.keys()
    assert after[Path("images/synth_0000003.png")] == before[Path("images/synth_0000003.png")]
    assert (out / "manifest.jsonl").read_bytes() == manifest
    changed = [str(k) for k in before if after[k] != before[k]]
    assert changed in ([], ["generation.json"]), changed
    # A run stopped after its third committed sample (mid-block: batches are [0, 1], [2, 3]) and
    # resumed writes the same bytes as the uninterrupted run, file for file.
    stopped = tmp_path / "stopped"
    committed: list[int] = []

    def stop_after_three(record: ManifestRecord) -> None:
        committed.append(record.index)
        if len(committed) == 3:
            raise KeyboardInterrupt

    settings = GenerationConfig(n=4, layouts="variants", per_mask=2, edges="image", steps=2, batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        generate(straight, stopped, settings, on_sample=stop_after_three)
    assert committed == [0, 1, 2] and len(read_manifest(stopped / "manifest.jsonl")) == 3
    resumed = generate(straight, stopped, settings, resume=True)
    assert (resumed.generated, resumed.skipped) == (1, 3)
    files = {p.relative_to(stopped): p.read_bytes() for p in sorted(stopped.rglob("*")) if p.is_file()}
    assert files.keys() == before.keys()
    differ = [str(k) for k in before if files[k] != before[k]]
    assert differ in ([], ["generation.json"]), differ
    with pytest.raises(ValueError, match=r"takes no style references.*\['styles', 'style_guidance'\]"):
        generate(straight, tmp_path / "styled", GenerationConfig(n=1, styles=data / "unlabeled", style_guidance=2.0))
    with pytest.raises(ValueError, match=r"does not use \['tile_overlap'\]"):
        generate(straight, tmp_path / "tiled", GenerationConfig(n=1, tile_overlap=4))
    assert not (tmp_path / "styled").exists() and not (tmp_path / "tiled").exists()


def test_generate_from_a_controlnet_run_refuses_a_size_that_cannot_fit(straight: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import segsynth.fits as fits
    import segsynth.synth.writer as writer_module  # the writer draws the samples

    def never_reached(*args, **kwargs):
        raise AssertionError("the run started although it cannot fit")

    monkeypatch.setattr(fits, "available_memory", lambda device=None: (2**30, "test limit"))
    monkeypatch.setattr(writer_module, "_draw", never_reached)  # were the check gone, no 25 GiB of layouts
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["generate", str(straight), "--out", str(out), "-n", "2", "--steps", "1",
                                      "--size", "40000"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "error: generate needs at least" in text and "layouts (2 of 40000x40000)" in text  # after the weights' bar
    assert "but only 1.0 GiB is available (test limit)" in text and not out.exists()


def test_report_recognises_a_controlnet_run(straight: Path, tmp_path: Path) -> None:
    """A ControlNet run writes ``training_data.json`` like a diffusion run but has no ``pipeline/``:
    the report names it a ControlNet run and reads its log and config without error."""
    from segsynth.artifacts.detect import detect
    from segsynth.report import build_report

    assert detect(straight) == "controlnet_run"
    html = build_report([straight], tmp_path / "report.html").read_text(encoding="utf-8")
    assert "ControlNet run" in html and "could not be read" not in html and "ControlNet run training curves" in html
