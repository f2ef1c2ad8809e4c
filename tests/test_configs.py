"""The shipped YAML recipes load strictly, and a mistyped key or value is named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from segsynth.benchmark.config import BenchmarkConfig
from segsynth.config import ConfigError, load_config, save_resolved_config
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.io.run_log import changed_keys
from segsynth.autoencoder.config import AutoencoderTrainConfig
from segsynth.models import SegSynthModel
from segsynth.recipes import recipe_names
from segsynth.seg.config import SegTrainConfig

torch.set_num_threads(1)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "segsynth" / "recipes"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml")) + sorted(CONFIG_DIR.glob("*.yml"))
#: The diffusion recipes (the others configure train-autoencoder and benchmarks).
DIFFUSION_CONFIGS = [p for p in CONFIGS if not p.name.startswith(("autoencoder", "benchmark"))]


def load(path: Path, **overrides) -> DiffusionTrainConfig:
    return load_config(DiffusionTrainConfig, path, overrides or None)


def write_yaml(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def meta_model(cfg: DiffusionTrainConfig) -> SegSynthModel:
    """The model of ``cfg`` with shapes but no storage (building a 256 px model costs no memory)."""
    with torch.device("meta"):
        return SegSynthModel.from_config(cfg.model)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_recipes_are_there():
    names = {p.name for p in CONFIGS}
    assert {"tiny.yaml", "base.yaml", "autoencoder-f4.yaml", "autoencoder-tiny.yaml", "latent-512.yaml"} <= names


def test_the_latent_recipe_denoises_128_px_latents_of_512_px_images():
    ae = load_config(AutoencoderTrainConfig, CONFIG_DIR / "autoencoder-f4.yaml")
    cfg = load(CONFIG_DIR / "latent-512.yaml")
    model = cfg.model.model_copy(update={"latent_channels": ae.model.latent_channels, "latent_factor": ae.model.factor})
    with torch.device("meta"):
        unet = SegSynthModel.from_config(model).unet
    assert ae.model.factor == 4 and unet.inner.config.sample_size == 128 and unet.sample_channels == 4


def test_a_recipe_is_named_from_any_folder_and_a_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert recipe_names() == sorted(p.stem for p in CONFIGS)
    assert load("tiny") == load("tiny.yaml") == load(CONFIG_DIR / "tiny.yaml")
    (tmp_path / "tiny.yaml").write_text("train: {steps: 700}\n", encoding="utf-8")
    assert load("tiny.yaml").train.steps == 700 and load("tiny").train.steps == load(CONFIG_DIR / "tiny.yaml").train.steps
    with pytest.raises(ConfigError, match=r"tinny: cannot read config .*shipped recipes: .*base.*tiny"):
        load("tinny")
    with pytest.raises(ConfigError, match=r"cannot read config \([^)]*\)$"):
        load(tmp_path / "missing" / "tiny.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_sets_only_known_keys(path):
    if path.name.startswith("autoencoder"):
        cfg = load_config(AutoencoderTrainConfig, path)
    elif path.name.startswith("benchmark"):
        cfg = load_config(BenchmarkConfig, path)
        assert cfg.diffusion_config in recipe_names()  # a shipped recipe, found from any folder
    else:
        cfg = load(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))

    def check(section: dict, model, prefix: str) -> None:
        # Every key of the file landed somewhere (nothing silently ignored) with the file's value.
        for key, value in section.items():
            assert key in type(model).model_fields, f"{prefix}{key}"
            got = getattr(model, key)
            if isinstance(value, dict) and not isinstance(got, dict):
                check(value, got, f"{prefix}{key}.")
            else:
                assert got == (type(got)(value) if isinstance(value, list) else value), f"{prefix}{key}"

    check(raw, cfg, "")
    # The dataset decides channels and classes (fit_config_to_data refuses a contradiction).
    assert "image_channels" not in raw.get("model", {})
    assert "num_classes" not in raw.get("model", {})


def test_tiny_is_the_64px_cpu_recipe_and_base_the_256px_gpu_recipe():
    tiny, base = load(CONFIG_DIR / "tiny.yaml"), load(CONFIG_DIR / "base.yaml")
    assert tiny.model.image_size == 64
    assert base.model.image_size == 256
    assert base.model.style.num_refs == 3
    assert base.train.batch_size == 16
    assert base.train.mixed_precision == "auto"
    assert base.train.ema_decay == pytest.approx(0.9999)
    assert (base.train.checkpoint_every, base.train.sample_every) == (1000, 2000)
    assert base.train.steps >= 10 * base.train.warmup
    # Attention sits at the coarse levels only: never at full resolution, always at the bottom.
    assert base.model.attention_levels[0] is False and base.model.attention_levels[-1] is True
    assert sum(base.model.attention_levels) < len(base.model.attention_levels)


def test_base_model_is_wider_than_tiny_and_builds_without_memory():
    tiny, base = (meta_model(load(CONFIG_DIR / name)) for name in ("tiny.yaml", "base.yaml"))
    assert all(p.is_meta for p in base.parameters())
    n_tiny, n_base = count(tiny), count(base)
    assert 1e5 < n_tiny < 5e6
    assert 1e7 < n_base < 2e8
    assert n_base > 10 * n_tiny
    # The style branch stays a small part of the model, and it is built for N = 3 references.
    assert count(base.style_encoder) + count(base.style_aggregator) < 0.1 * n_base
    assert base.style_aggregator.config.num_refs == 3
    assert base.unet.config.image_size == 256


@pytest.mark.parametrize(
    "data,key",
    [
        ({"trian": {"steps": 3}}, "trian"),
        ({"model": {"stlye": {"dim": 8}}}, "model.stlye"),
        ({"model": {"style": {"dimm": 8}}}, "model.style.dimm"),
        ({"objective": {"cond_drop": {"styl": 0.1}}}, "objective.cond_drop.styl"),
    ],
)
def test_unknown_key_fails_naming_the_key(tmp_path, data, key):
    path = write_yaml(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert f"{path}: {key}: unknown key" in message
    assert message.count("\n") == 0  # only the bad key is reported


def test_unknown_key_in_an_override_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.stpes: unknown key"):
        load(CONFIG_DIR / "tiny.yaml", **{"train.stpes": 3})


@pytest.mark.parametrize(
    "data,key",
    [
        ({"train": {"lr": -1.0}}, "train.lr"),
        ({"train": {"batch_size": "sixteen"}}, "train.batch_size"),
        ({"model": {"style": {"num_refs": 0}}}, "model.style.num_refs"),
        ({"model": {"style": {"aggregator": "median"}}}, "model.style.aggregator"),
        ({"sampling": {"sampler": "euler"}}, "sampling.sampler"),
        ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision"),
        ({"sampling": {"style_guidance_scale": -0.5}}, "sampling.style_guidance_scale"),  # guidance < 0
        ({"model": {"image_size": 36, "block_out_channels": [8, 16, 16, 16],  # 36 is not a multiple of 2**3
                    "attention_levels": [False, False, False, True]}}, "model"),
    ],
)
def test_bad_value_names_its_dotted_key(tmp_path, data, key):
    with pytest.raises(ConfigError) as info:
        load(write_yaml(tmp_path, data))
    assert f": {key}: " in str(info.value)


def test_all_bad_keys_are_reported_at_once(tmp_path):
    path = write_yaml(tmp_path, {"train": {"lr": 0, "stpes": 1}, "model": {"image_size": 2}})
    with pytest.raises(ConfigError) as info:
        load(path)
    lines = str(info.value).splitlines()
    assert sorted(line.split(": ")[1] for line in lines) == ["model.image_size", "train.lr", "train.stpes"]


def test_cross_field_check_fails_before_work():
    # base.yaml has 4 levels, so the image side must be a multiple of 2**3.
    with pytest.raises(ConfigError, match="image_size 100 is not divisible"):
        load(CONFIG_DIR / "base.yaml", **{"model.image_size": 100})


@pytest.mark.parametrize("path", DIFFUSION_CONFIGS, ids=lambda p: p.name)
def test_resolved_config_round_trips(tmp_path, path):
    cfg = load(path, **{"train.steps": 1234})
    saved = save_resolved_config(cfg, tmp_path / "run" / "config.yaml")
    again = load(saved)
    assert again == cfg
    assert again.train.steps == 1234
    # The resolved file spells out every default, so it no longer depends on the code's defaults.
    raw = yaml.safe_load(saved.read_text(encoding="utf-8"))
    assert set(raw) == set(DiffusionTrainConfig.model_fields)
    assert set(raw["model"]["style"]) == set(type(cfg.model.style).model_fields)


def test_guidance_needs_a_trained_null_embedding() -> None:
    with pytest.raises(ConfigError, match=r"sampling.layout_guidance_scale is 2.0 but objective.cond_drop.layout is 0"):
        load_config(DiffusionTrainConfig, None, {"sampling.layout_guidance_scale": 2.0})
    with pytest.raises(ConfigError, match=r"objective.cond_drop.style is 0"):
        load_config(DiffusionTrainConfig, None, {"objective.cond_drop.style": 0.0})
    ok = load_config(DiffusionTrainConfig, None, {"objective.cond_drop.style": 0.0, "sampling.style_guidance_scale": 1.0})
    assert ok.sampling.style_guidance_scale == 1.0


def test_resume_names_the_exact_changed_key() -> None:
    old = {"model": {"style": {"dim": 64, "num_refs": 2}}, "train": {"lr": 1e-3}}
    new = {"model": {"style": {"dim": 32, "num_refs": 2}}, "train": {"lr": 1e-3, "extra": 1}}
    assert changed_keys(old, new) == ["model.style.dim", "train.extra"]
    assert changed_keys(old, old) == []


@pytest.mark.parametrize("cls, data, key", [
    (SegTrainConfig, {"train": {"seed": -1}}, "train.seed"),
    (SegTrainConfig, {"split": {"seed": -1}}, "split.seed"),
    (BenchmarkConfig, {"seeds": [0, -1]}, "seeds.1"),
], ids=["seg train.seed", "seg split.seed", "benchmark seeds"])
def test_a_negative_seed_is_refused_naming_its_key(tmp_path, cls, data, key):
    """A seed is a non-negative integer (numpy's generators take no other): refused at the config,
    not after a benchmark has trained its diffusion models."""
    with pytest.raises(ConfigError) as info:
        load_config(cls, write_yaml(tmp_path, data))
    assert f": {key}: " in str(info.value)
