"""Synthetic set generation: style pools, manifest, resume after a kill, shards, run folders, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_layouts import write_toy_dataset
from typer.testing import CliRunner

from segsynth.artifacts.schemas import ManifestRecord
from segsynth.cli import app
from segsynth.data.format import load_spec
from segsynth.data.io import write_image
from segsynth.data.loader import SegDataset, sample_seed
from segsynth.device import sampling_precision
from segsynth.diffusion.objective import ObjectiveConfig, make_train_scheduler
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.models.config import ModelConfig
from segsynth.models.model import SegSynthModel
from segsynth.synth.config import GenerationConfig
from segsynth.synth.generate import (
    generate,
    merge_shards,
    model_hash,
    parse_shard,
    pipeline_hash,
    shard_range,
)
from segsynth.synth.manifest import read_manifest
from segsynth.synth.styles import ImageFolderPool, StyleSource, open_style_pool

FAST = {"steps": 2, "batch_size": 3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe() -> SegSynthPipeline:
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=16,
        image_channels=1,
        num_classes=2,
        block_out_channels=(8, 16),
        attention_levels=(False, True),
        style={"encoder_channels": (8, 16), "dim": 16, "num_refs": 2},
    )
    return SegSynthPipeline.from_model(SegSynthModel.from_config(cfg), make_train_scheduler(ObjectiveConfig()))


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy")


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> bytes), hidden temporaries included."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generated_set_is_a_loadable_dataset_with_a_complete_manifest(pipe, toy, tmp_path):
    out = tmp_path / "synth"
    result = generate(pipe, out, GenerationConfig(n=5, styles=toy / "unlabeled", layout_data=toy, **FAST))
    assert (result.generated, result.skipped, result.shard_size, result.complete) == (5, 0, 5, True)
    records = read_manifest(out / "manifest.jsonl")
    assert [r.index for r in records] == list(range(5))
    assert len({r.id for r in records}) == 5
    real_ids = {p.stem for p in (toy / "images").iterdir()}
    pool_ids = {p.stem for p in (toy / "unlabeled").iterdir()}
    digest = pipeline_hash(pipe)
    for r in records:
        assert r.layout_source == "augmented" and r.layout_id in real_ids
        assert len(r.style_ids) == 2 and set(r.style_ids) <= pool_ids
        assert r.seed == sample_seed(0, r.index) and r.model_hash == digest and len(digest) == 64
        assert r.guidance.model_dump() == {"style": 1.5, "layout": 1.0, "rescale": 0.7}
        assert (r.prompt, r.sampler, r.steps, r.style_sampler) == ("Nuclei, Fluorescence", "dpmpp", 2, "multi_patch")
    spec = load_spec(out)
    assert spec.labels == {"background": 0, "nucleus": 1} and spec.channels == 1
    assert spec.label_provenance == "human" and "conditioning layouts" in spec.derivation
    assert spec.cases == {r.id: r.layout_id for r in records}
    dataset = SegDataset(out)
    assert len(dataset) == 5
    sample = dataset[0]
    assert sample["image"].shape == (1, 16, 16) and sample["mask"].shape == (16, 16)
    assert set(sample["mask"].unique().tolist()) <= {0, 1}
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "generation.json", "images", "manifest.jsonl", "masks"]


def test_resume_after_kill_mid_batch_is_byte_identical(pipe, toy, tmp_path):
    seven = GenerationConfig(n=7, styles=toy / "unlabeled", layout_data=toy, **FAST)
    reference = tmp_path / "reference"
    generate(pipe, reference, seven)

    out = tmp_path / "killed"
    committed = []

    def kill_after_four(record: ManifestRecord) -> None:
        committed.append(record.index)
        if len(committed) == 4:  # inside the second batch (indices 3..5)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(pipe, out, seven, on_sample=kill_after_four)
    assert not (out / "dataset.json").exists()
    with open(out / "manifest.jsonl", "ab") as handle:  # a kill during an append leaves a torn line
        handle.write(b'{"id": "synth_00000')
    first_image = out / "images" / "synth_0000000.png"
    before = first_image.stat()

    with pytest.raises(FileExistsError, match="--resume"):
        generate(pipe, out, seven)
    for changed in ({"seed": 1}, {"steps": 3}, {"layouts": "composed"}, {"style_guidance": 2.0}):
        with pytest.raises(ValueError, match=f"other settings.*{next(iter(changed))}"):
            generate(pipe, out, seven.model_copy(update=changed), resume=True)
    result = generate(pipe, out, seven, resume=True)

    assert (result.generated, result.skipped, result.complete) == (3, 4, True)
    after = first_image.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # done samples untouched
    assert files_of(out) == files_of(reference)
    again = generate(pipe, out, seven.model_copy(update={"batch_size": 2}), resume=True)  # not part of the recipe
    assert (again.generated, again.skipped) == (0, 7)


def test_shards_write_disjoint_files_and_merge_to_the_single_process_set(pipe, toy, tmp_path):
    single = tmp_path / "single"
    variants = GenerationConfig(n=8, layouts="variants", styles=toy / "unlabeled", layout_data=toy, per_mask=3,
                                steps=2, batch_size=2)
    generate(pipe, single, variants)
    sharded = tmp_path / "sharded"
    first = generate(pipe, sharded, variants, shard=(1, 2))
    assert not first.complete and not (sharded / "manifest.jsonl").exists()
    assert sorted(p.name for p in (sharded / "images").iterdir()) == [f"synth_{i:07d}.png" for i in range(4, 8)]
    with pytest.raises(ValueError, match="manifest.shard-0-of-2.jsonl"):
        merge_shards(sharded)
    second = generate(pipe, sharded, variants, shard=(0, 2))
    assert second.complete
    merged = files_of(sharded)
    parts = {name: merged.pop(name) for name in list(merged) if name.startswith("manifest.shard-")}
    assert sorted(parts) == ["manifest.shard-0-of-2.jsonl", "manifest.shard-1-of-2.jsonl"]
    single_files = files_of(single)
    single_config = json.loads(single_files.pop("generation.json"))
    sharded_config = json.loads(merged.pop("generation.json"))
    assert sharded_config["config"].pop("num_shards") == 2 and single_config["config"].pop("num_shards") == 1
    assert sharded_config == single_config
    assert merged == single_files
    layout_ids = [r.layout_id for r in read_manifest(sharded / "manifest.jsonl")]
    assert layout_ids[:3] == [layout_ids[0]] * 3 and layout_ids[3] != layout_ids[0]  # 3 variants per mask


def test_composed_layouts_and_run_folder_defaults(pipe, toy, tmp_path):
    run = tmp_path / "run"
    pipe.save_pretrained(run / "pipeline")
    train_ids = sorted(p.stem for p in (toy / "images").iterdir())[:3]
    (run / "training_data.json").write_text(
        json.dumps({"data_root": str(toy), "train_ids": train_ids, "style_sampler": "nearby", "num_refs": 3})
    )
    out = tmp_path / "synth"
    result = generate(run, out, GenerationConfig(n=3, **FAST))
    assert result.complete
    records = read_manifest(out / "manifest.jsonl")
    assert all(r.layout_id in train_ids for r in records)  # layouts only from the trained-on masks
    assert all(r.style_sampler == "nearby" and len(r.style_ids) == 3 for r in records)
    assert records[0].style_source == str((toy / "unlabeled").resolve())
    assert records[0].model_hash == model_hash(run / "pipeline") == pipeline_hash(pipe)

    composed = tmp_path / "composed"
    generate(run, composed, GenerationConfig(n=2, layouts="composed", **FAST))
    records = read_manifest(composed / "manifest.jsonl")
    assert [r.layout_id for r in records] == [None, None] and records[0].layout_source == "composed"
    spec = load_spec(composed)
    assert spec.label_provenance == "derived" and spec.cases == {r.id: r.id for r in records}
    assert len(SegDataset(composed)) == 2


def test_without_a_style_pool_the_null_style_is_used(pipe, toy, tmp_path):
    out = tmp_path / "nostyle"
    generate(pipe, out, GenerationConfig(n=2, layouts="variants", layout_data=toy, per_mask=1, **FAST))
    records = read_manifest(out / "manifest.jsonl")
    assert [(r.style_source, r.style_sampler, r.style_ids) for r in records] == [(None, None, [])] * 2
    assert [r.layout_id for r in records] == [p.stem for p in sorted((toy / "images").iterdir())][:2]


def test_generate_rejects_mismatched_inputs(pipe, toy, tmp_path):
    with pytest.raises(ValueError, match="layout_data is required"):
        generate(pipe, tmp_path / "a", GenerationConfig(n=2, styles=toy / "unlabeled", **FAST))
    rgb = write_toy_dataset(tmp_path / "rgb", channels=3)
    with pytest.raises(ValueError, match="3 channels"):
        generate(pipe, tmp_path / "b", GenerationConfig(n=2, styles=rgb / "unlabeled", layout_data=rgb, **FAST))
    with pytest.raises(ValueError, match="layouts"):
        GenerationConfig(n=2, layouts="mixed")
    with pytest.raises(TypeError, match="GenerationConfig"):
        generate(pipe, tmp_path / "c", 2)  # type: ignore[arg-type]  # the settings before config objects
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="generation.json"):
        generate(pipe, tmp_path / "d", GenerationConfig(n=2, layout_data=toy, **FAST), resume=True)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("2/2")
    assert parse_shard("1/4") == (1, 4)
    assert [len(shard_range(10, (i, 3))) for i in range(3)] == [3, 3, 4]


def test_style_pools_from_dataset_and_plain_folders(toy, tmp_path):
    from_dataset = open_style_pool(toy, 1)
    assert len(from_dataset) == 4 and from_dataset.split == "unlabeled"
    assert [r.id for r in open_style_pool(toy / "unlabeled", 1).refs] == [r.id for r in from_dataset.refs]

    folder = tmp_path / "pool"
    pixels = np.full((20, 24), 128, np.uint8)
    for name in ("slideA/a_1.png", "slideA/a_2.png", "slideB/b_1.png", "loose_01.png", "loose_02.png", "solo.png"):
        write_image(folder / name, pixels)
    (folder / "readme.txt").write_text("not an image")
    pool = open_style_pool(folder, 1)
    assert isinstance(pool, ImageFolderPool)
    assert {r.id: r.case_id for r in pool.refs} == {
        "slideA/a_1": "slideA", "slideA/a_2": "slideA", "slideB/b_1": "slideB",
        "loose_01": "loose", "loose_02": "loose", "solo": "solo",
    }
    pool.verify()  # generate reads every reference first; a plain folder has no dataset.json to check
    write_image(tmp_path / "volumes" / "mri_01.nii.gz", np.random.default_rng(0).random((20, 24, 3)).astype(np.float32))
    volume_pool = open_style_pool(tmp_path / "volumes", 1)
    assert [(r.id, r.case_id, r.slice_index) for r in volume_pool.refs] == [
        (f"mri_01_z{z:03d}", "mri", z) for z in range(3)
    ]
    assert volume_pool.load_arrays(2)[0].shape == (1, 20, 24)
    source = StyleSource(pool, "multi_patch", 3, 16)
    images, ids = source.draw(np.random.default_rng(0))
    assert images.shape == (3, 1, 16, 16) and images.dtype == np.float32 and len(ids) == 3
    assert np.allclose(images, 128 / 255)
    with pytest.raises(ValueError, match="channels"):
        ImageFolderPool(folder, 3)[0]
    with pytest.raises(ValueError, match="declares 1 channels"):
        open_style_pool(toy, 3)
    write_image(folder / "solo.tif", pixels)
    with pytest.raises(ValueError, match="shares the stem"):
        open_style_pool(folder, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        open_style_pool(tmp_path / "empty", 1)
    with pytest.raises(FileNotFoundError):
        open_style_pool(tmp_path / "missing", 1)


def test_manifest_rejects_corrupt_lines(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_manifest(path)
    path.write_text("")
    path.write_bytes(b'{"torn')
    with pytest.raises(ValueError, match="incomplete"):
        read_manifest(path)
    assert read_manifest(path, repair=True) == [] and path.read_bytes() == b""


def test_a_config_object_a_config_file_and_cli_flags_write_the_same_set(pipe, toy, tmp_path):
    """The three ways to give the settings are one: the same bytes, and the recipe saved with the
    keys and values sets have always been saved with (so existing sets still resume)."""
    run = tmp_path / "run"
    pipe.save_pretrained(run / "pipeline")
    (run / "training_data.json").write_text(json.dumps({"data_root": str(toy), "num_refs": 2}))
    cfg = GenerationConfig(n=4, sampler="ddim", steps=2, style_guidance=2.0, guidance_rescale=0.5, seed=3, batch_size=2)
    generate(run, tmp_path / "python", cfg, device="cpu")
    flags = ["-n", "4", "--sampler", "ddim", "--steps", "2", "--style-guidance", "2", "--guidance-rescale", "0.5",
             "--seed", "3", "--batch-size", "2", "--device", "cpu"]
    flagged = CliRunner().invoke(app, ["generate", str(run), "--out", str(tmp_path / "flags"), *flags])
    assert flagged.exit_code == 0, flagged.output
    # A file, then the named flags over it, then --set over those.
    (tmp_path / "gen.yaml").write_text("n: 4\nsampler: ddim\nsteps: 7\nstyle_guidance: 2.0\nguidance_rescale: 0.5\nseed: 9\n")
    filed = CliRunner().invoke(app, ["generate", str(run), "--out", str(tmp_path / "file"), "-c", str(tmp_path / "gen.yaml"),
                                     "--steps", "2", "--seed", "5", "--set", "seed=3", "--batch-size", "2", "--device", "cpu"])
    assert filed.exit_code == 0, filed.output
    assert files_of(tmp_path / "python") == files_of(tmp_path / "flags") == files_of(tmp_path / "file")
    assert json.loads((tmp_path / "python" / "generation.json").read_text())["config"] == {
        "n": 4, "layouts": "augmented", "per_mask": 50, "class_prior": None, "layout_data": str(toy.resolve()),
        "styles": str((toy / "unlabeled").resolve()), "style_sampler": "multi_patch", "num_refs": 2, "sampler": "ddim",
        "steps": 2, "style_guidance": 2.0, "layout_guidance": 1.0, "guidance_rescale": 0.5, "seed": 3, "num_shards": 1,
        "model_hash": model_hash(run / "pipeline"),
        # the default precision (auto) is recorded only where it is bf16 (a CPU with native bf16)
        **({"precision": "bf16"} if sampling_precision("auto", torch.device("cpu")) == "bf16" else {}),
    }
    unknown = CliRunner().invoke(app, ["generate", str(run), "--out", str(tmp_path / "x"), "-n", "1", "--set", "stpes=2"])
    assert unknown.exit_code == 2 and "stpes: unknown key" in unknown.output and not (tmp_path / "x").exists()
    missing = CliRunner().invoke(app, ["generate", str(run), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "n: Field required" in " ".join(missing.output.split())


def test_cli_generate_and_refusal(pipe, toy, tmp_path):
    run = tmp_path / "run"
    pipe.save_pretrained(run / "pipeline")
    (run / "training_data.json").write_text(json.dumps({"data_root": str(toy), "num_refs": 2}))
    out = tmp_path / "synth"
    args = ["generate", str(run), "--out", str(out), "-n", "2", "--steps", "1", "--class-prior", "background=1,nucleus=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "set complete" in result.output and len(read_manifest(out / "manifest.jsonl")) == 2
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--resume" in refused.output
    bad = CliRunner().invoke(app, [*args[:-2], "--class-prior", "nucleus:1", "--resume"])
    assert bad.exit_code == 2 and "class-prior" in bad.output


def test_sampling_precision_follows_the_device(monkeypatch):
    from segsynth import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert device.sampling_precision("auto", torch.device("cpu")) == "fp32"
    assert device.sampling_precision("auto", torch.device("cuda")) == "bf16"
    assert device.sampling_precision("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.sampling_precision("auto", torch.device("cpu")) == "bf16"
    assert device.sampling_precision("no", torch.device("cuda")) == "fp32"


def test_bf16_sampling_runs_the_denoiser_in_bf16_is_recorded_and_never_mixed_into_an_fp32_set(pipe, toy, tmp_path):
    cfg = GenerationConfig(n=3, styles=toy / "unlabeled", layout_data=toy, mixed_precision="bf16", **FAST)
    seen: list[torch.dtype] = []
    hook = pipe.unet.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        generate(pipe, tmp_path / "bf16", cfg)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "generation.json").read_text())["config"]["precision"] == "bf16"
    fp32 = cfg.model_copy(update={"mixed_precision": "no"})
    generate(pipe, tmp_path / "fp32", fp32)
    # an fp32 set leaves the key out, so sets made before the option keep their bytes
    assert "precision" not in json.loads((tmp_path / "fp32" / "generation.json").read_text())["config"]
    a, b = SegDataset(tmp_path / "bf16"), SegDataset(tmp_path / "fp32")
    for i in range(3):
        assert torch.equal(a[i]["mask"], b[i]["mask"])  # same draws...
        difference = (a[i]["image"] - b[i]["image"]).abs()
        assert 0 < difference.max() and difference.mean() < 0.05  # ...rendered in another precision
    with pytest.raises(ValueError, match="other settings.*precision"):
        generate(pipe, tmp_path / "bf16", fp32, resume=True)
