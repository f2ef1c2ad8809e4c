"""Latent mode: autoencoder shapes and save/load, its training run, and a latent diffusion model
that trains, saves with its autoencoder, and samples (also tiled) at image resolution."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_tiny_dataset
from safetensors.torch import load_file

from segsynth.config import ConfigError
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.train import train_diffusion
from segsynth.autoencoder import AutoencoderModelConfig, AutoencoderTrainConfig, build_autoencoder, load_autoencoder
from segsynth.autoencoder.autoencoder import decode_latents, encode_images
from segsynth.artifacts.names import IMAGE_SPLIT_JSON, RECONSTRUCTION_JSON
from segsynth.autoencoder.train import ImagePool, reconstruction_quality, train_autoencoder
from segsynth.models.unet import LayoutStyleUNet
from segsynth.synth.generate import load_run

TINY_AE = {"block_out_channels": [8, 16, 16], "norm_num_groups": 8}
TINY_AE_TRAIN = {"model": TINY_AE, "tile_size": 16, "steps": 6, "batch_size": 2, "lr": 1e-3, "eval_tiles": 4,
                 "checkpoint_every": 3, "log_every": 2, "mixed_precision": "no"}
LATENT_DIFFUSION = {
    "model": {"image_size": 32, "block_out_channels": [8, 16], "attention_levels": [False, True],
              "style": {"encoder_channels": [8, 16], "dim": 16, "num_refs": 2}},
    "train": {"steps": 2, "batch_size": 2, "warmup": 0, "sample_every": 0, "checkpoint_every": 100,
              "mixed_precision": "no"},
    "sampling": {"steps": 2},
}


@pytest.mark.parametrize("levels,factor", [((8, 16, 16), 4), ((8, 16, 16, 16), 8)])
def test_autoencoder_round_trip_shapes_and_save_load(levels, factor, tmp_path):
    torch.manual_seed(0)
    vae = build_autoencoder(AutoencoderModelConfig(block_out_channels=levels, norm_num_groups=8), 3, 32).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        latents = encode_images(vae, images)
        decoded = decode_latents(vae, latents)
    assert latents.shape == (2, 4, 32 // factor, 32 // factor)
    assert decoded.shape == images.shape
    vae.save_pretrained(tmp_path / "autoencoder")
    loaded, folder = load_autoencoder(tmp_path)
    assert folder == tmp_path / "autoencoder" and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(encode_images(loaded, images), latents)


def test_pickled_autoencoder_weights_are_refused(tmp_path):
    build_autoencoder(AutoencoderModelConfig(**TINY_AE), 1, 16).save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="diffusion_pytorch_model.bin: refused"):
        load_autoencoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="train-autoencoder"):
        load_autoencoder(tmp_path / "missing")


def test_config_refuses_a_factor_other_than_4_or_8():
    with pytest.raises(ValueError, match="3 levels"):
        AutoencoderModelConfig(block_out_channels=(8, 16))
    with pytest.raises(ValueError, match="multiple of the autoencoder's factor 8"):
        AutoencoderTrainConfig(model={"block_out_channels": (32, 64, 64, 64)}, tile_size=36)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("latent") / "data", size=32, cases=("p1", "p2", "p3", "p4"))


@pytest.fixture(scope="module")
def autoencoder_run(data, tmp_path_factory):
    return train_autoencoder(data, AutoencoderTrainConfig.model_validate(TINY_AE_TRAIN),
                             tmp_path_factory.mktemp("ae") / "ae")


#: Long enough (150 steps, about 8 s on one core) for the autoencoder to beat bicubic x4 on unseen cases.
BICUBIC_BEATING_AE_TRAIN = {**TINY_AE_TRAIN, "model": {"block_out_channels": [16, 32, 32], "norm_num_groups": 8},
                            "steps": 150, "batch_size": 4, "lr": 3e-3, "eval_tiles": 8, "checkpoint_every": 150,
                            "log_every": 50}


def test_autoencoder_run_reports_held_out_quality_and_scale(data, autoencoder_run, tmp_path):
    """reconstruction.json scores tiles of held-out cases only (recomputed here from the split), the
    trained autoencoder beats the bicubic baseline the run reports next to it, and the latent scale
    is saved with the weights."""
    quality = json.loads((autoencoder_run / RECONSTRUCTION_JSON).read_text())
    split = json.loads((autoencoder_run / IMAGE_SPLIT_JSON).read_text())
    assert quality["evaluated_on"] == "held-out cases" and quality["factor"] == 4
    assert split["held_out"] and not set(split["held_out"]) & set(split["train"])
    assert {p.split("/")[-1].split("_")[0] for p in split["held_out"]}.isdisjoint(
        {p.split("/")[-1].split("_")[0] for p in split["train"]})
    vae, _ = load_autoencoder(autoencoder_run)
    assert vae.config.scaling_factor == pytest.approx(quality["scaling_factor"]) and vae.config.scaling_factor != 1.0
    assert (autoencoder_run / "reconstructions.png").is_file()
    assert [json.loads(line)["step"] for line in (autoencoder_run / "train_log.jsonl").read_text().splitlines()] == [2, 4, 6]

    cfg = AutoencoderTrainConfig.model_validate(BICUBIC_BEATING_AE_TRAIN)
    run = train_autoencoder(data, cfg, tmp_path / "ae")
    quality = json.loads((run / RECONSTRUCTION_JSON).read_text())
    ae, bicubic = quality["autoencoder"], quality["bicubic_baseline"]
    assert ae["psnr"] > bicubic["psnr"] + 0.5 and ae["ssim"] > bicubic["ssim"], quality
    # The reported numbers are those of tiles of the held-out cases, and differ from training tiles'.
    pool = ImagePool([data], cfg.holdout, cfg.seed)
    assert pool.ids(pool.held_out) == json.loads((run / IMAGE_SPLIT_JSON).read_text())["held_out"]
    vae, _ = load_autoencoder(run)
    held = reconstruction_quality(vae, pool.tiles(pool.held_out, range(cfg.eval_tiles), cfg.tile_size, cfg.seed + 3, 0, False))
    seen = reconstruction_quality(vae, pool.tiles(pool.train, range(cfg.eval_tiles), cfg.tile_size, cfg.seed + 3, 0, False))
    for method in ("autoencoder", "bicubic_baseline"):
        assert held[method]["psnr"] == pytest.approx(quality[method]["psnr"], abs=1e-4)
        assert held[method]["ssim"] == pytest.approx(quality[method]["ssim"], abs=1e-4)
    assert seen["bicubic_baseline"]["psnr"] != pytest.approx(quality["bicubic_baseline"]["psnr"], abs=1e-3)


def test_autoencoder_resumes_to_the_same_weights(data, autoencoder_run, tmp_path):
    """Stopped after 3 steps and resumed to 6, the weights equal those of the uninterrupted run."""
    cfg = AutoencoderTrainConfig.model_validate(TINY_AE_TRAIN)
    train_autoencoder(data, cfg.model_copy(update={"steps": 3}), tmp_path / "ae")
    train_autoencoder(data, cfg, tmp_path / "ae", resume=True)
    a = load_file(str(autoencoder_run / "autoencoder" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "ae" / "autoencoder" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileExistsError, match="--resume"):
        train_autoencoder(data, cfg, tmp_path / "ae")


def test_latent_unet_pools_the_layout_to_class_fractions():
    unet = LayoutStyleUNet(image_size=32, block_out_channels=(8, 16), attention_levels=(False, False),
                           style_dim=8, latent_channels=4, latent_factor=4)
    layout = torch.zeros(1, 32, 32, dtype=torch.long)
    layout[0, :2, :4] = 1  # half of the first latent cell
    fractions = unet.layout_input(layout, None, torch.float32)
    assert fractions.shape == (1, 2, 8, 8) and fractions[0, 1, 0, 0] == 0.5 and fractions[0, 1].sum() == 0.5
    out = unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), layout)
    assert out.shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"layout must be \(B, H, W\) = \(1, 32, 32\)"):
        unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), layout[:, :8, :8])


def test_latent_diffusion_trains_saves_its_autoencoder_and_samples(data, autoencoder_run, tmp_path):
    run = train_diffusion(data, DiffusionTrainConfig.model_validate(LATENT_DIFFUSION), tmp_path / "run",
                          autoencoder=autoencoder_run)
    info = json.loads((run / "training_data.json").read_text())
    assert info["autoencoder"]["path"].endswith("autoencoder") and len(info["autoencoder"]["sha256"]) == 64
    pipe, _, _ = load_run(run)
    assert pipe.vae is not None and pipe.unet.config.latent_channels == 4 and pipe.unet.latent_factor == 4
    pipe.set_progress_bar_config(disable=True)
    seen = []
    hook = pipe.unet.inner.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    layout = torch.zeros(1, 64, 32, dtype=torch.long)
    images = pipe(layout, None, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    hook.remove()
    assert images.shape == (1, 1, 64, 32) and 0 <= images.min() and images.max() <= 1
    assert set(seen) == {(8, 8)}  # 32 px tiles of the 64 x 32 layout, on the 8 x 8 latent grid


def test_latent_run_refuses_contradictions(data, autoencoder_run, tmp_path):
    rgb = write_tiny_dataset(tmp_path / "rgb", size=32, channels=3)
    with pytest.raises(ConfigError, match="1-channel images, the data has 3"):
        train_diffusion(rgb, DiffusionTrainConfig.model_validate(LATENT_DIFFUSION), tmp_path / "a",
                        autoencoder=autoencoder_run)
    cfg = DiffusionTrainConfig.model_validate(
        {**LATENT_DIFFUSION, "model": {**LATENT_DIFFUSION["model"], "latent_channels": 8, "latent_factor": 4}})
    with pytest.raises(ConfigError, match="latent_channels is 8 but the autoencoder"):
        train_diffusion(data, cfg, tmp_path / "b", autoencoder=autoencoder_run)
    with pytest.raises(ConfigError, match="no autoencoder was given"):
        train_diffusion(data, cfg, tmp_path / "c")
    consistent = DiffusionTrainConfig.model_validate({**LATENT_DIFFUSION, "objective": {"style_consistency": 0.5}})
    with pytest.raises(ConfigError, match="style_consistency needs a pixel model"):
        train_diffusion(data, consistent, tmp_path / "d", autoencoder=autoencoder_run)
    assert not (tmp_path / "d").exists()  # refused before the run folder is made


def test_cached_latents_are_made_once_per_image_and_train(data, autoencoder_run, tmp_path):
    from safetensors import safe_open

    from segsynth.data.loader import SegDataset
    from segsynth.autoencoder.cache import LatentCache

    cfg = DiffusionTrainConfig.model_validate(
        {**LATENT_DIFFUSION, "data": {"augmentation": "none", "cache_latents": True}})
    run = train_diffusion(data, cfg, tmp_path / "run", autoencoder=autoencoder_run)
    files = sorted((run / "latent_cache").glob("*.safetensors"))
    ids = sorted(ref.id for ref in SegDataset(data).refs)
    assert len(files) == len(ids) == 8
    assert sorted(safe_open(str(f), "pt").metadata()["id"] for f in files) == ids
    assert load_file(str(files[0]))["latent"].shape == (4, 8, 8)  # 32 px image, f4
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)

    vae, _ = load_autoencoder(autoencoder_run)
    cache = LatentCache(run / "latent_cache", 4, 32)
    assert cache.build(vae, [SegDataset(data)], 1) == 0  # all there: nothing re-encoded
    files[0].write_bytes(files[1].read_bytes())  # a file of another sample is recognised and redone
    assert cache.build(vae, [SegDataset(data)], 1) == 1
    with pytest.raises(ValueError, match="cache_latents needs augmentation 'none'"):
        DiffusionTrainConfig.model_validate({"data": {"cache_latents": True}})
