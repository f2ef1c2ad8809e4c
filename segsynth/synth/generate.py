"""``segsynth generate``: write a synthetic image/mask dataset from a trained pipeline, resumably.

Every sample ``index`` has its own seed, derived from ``(seed, index)``; it seeds a numpy generator
for the layout and style draws and a torch generator for the noise. The pipeline receives one
generator per sample, so what a sample is drawn from depends on neither batching, sharding nor
resumption. (Its pixels can still differ in float rounding when it shares a batch with other
samples, since batched kernels sum in another order: rarely one grey level after quantisation.)

Crash safety: a sample is written as image PNG, mask PNG (each atomically), then its manifest line
(flushed and fsynced). It counts as done only when all three exist. ``resume=True`` skips done
indices and rewrites none of their files; a torn last manifest line is cut off first. Samples are
generated in blocks aligned to multiples of ``batch_size``; a resumed run recomputes a partly
finished block whole (writing only its missing samples), so its batches are the same as those of an
uninterrupted run and floating-point results cannot differ with batch composition either.

Shards (``shard=(i, n)``) split the index range; each writes ``manifest.shard-i-of-n.jsonl``, and
whichever finishes last merges the parts into ``manifest.jsonl`` + ``dataset.json``
(:func:`merge_shards` does the same on demand). Memory stays flat in ``n``: one block at a time.
Each shard holds its own lock file (:mod:`segsynth.io.lock`) while it runs, so a second process
writing the same shard fails at once; claiming the folder and merging hold the set's lock.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console

from segsynth.artifacts.names import (
    BACKBONE_JSON,
    CONTROLNET_DIR,
    DATASET_JSON,
    GENERATION_JSON,
    IMAGES_DIR,
    MANIFEST_JSONL,
    MASKS_DIR,
    PIPELINE_DIR,
    REJECTED_JSONL,
    TRAINING_DATA_JSON,
    UNLABELED_DIR,
)
from segsynth.artifacts.schemas import (
    BackboneRecord,
    FilterOutcome,
    Guidance,
    ManifestRecord,
    RejectedRecord,
    TrainingData,
    read_record,
    validate_record,
)
from segsynth.config import parse_config
from segsynth.data.edges import edge_map
from segsynth.data.style_sampling import STYLE_SAMPLERS
from segsynth.data.format import DatasetSpec, save_spec
from segsynth.data.io import write_image
from segsynth.data.loader import SegDataset, sample_seed
from segsynth.diffusion.pipeline import SamplingSettings, SegSynthPipeline
from segsynth.fits import Estimate, check_memory
from segsynth.io.atomic import atomic_write_json
from segsynth.io.finite import check_images
from segsynth.io.guard import check_out_apart
from segsynth.io.hashing import model_hash
from segsynth.io.json_file import read_json_object
from segsynth.io.lock import FolderLock
from segsynth.io.model_config import check_model_folder, check_scheduler_config
from segsynth.io.untrusted import refuse_unsafe_files
from segsynth.models.text import encode_prompts
from segsynth.progress import StepProgress
from segsynth.synth.config import TEXT_GUIDANCE, GenerationConfig, GenerationRecord
from segsynth.synth.layouts import LayoutSource, VariantLayouts, make_layout_source
from segsynth.artifacts.manifest import ManifestWriter, manifest_name, read_manifest, rejected_name, write_manifest
from segsynth.data.styles import StyleSource, open_style_pool

if TYPE_CHECKING:
    from segsynth.synth.judge import LayoutJudge

#: How long a shard waits for another to finish claiming or merging the set (each takes moments).
SET_LOCK_WAIT_S = 120.0


def shard_lock_name(index: int, count: int) -> str:
    """Lock file of one shard: shards of a set run side by side, a shard never twice."""
    return f".shard-{index}-of-{count}.lock"


@dataclass(frozen=True)
class GenerationResult:
    """What one call of :func:`generate` did.

    Attributes:
        out: the synthetic set's folder.
        generated: samples written by this call.
        skipped: samples of this shard already done before the call (resume).
        shard_size: samples in this shard.
        complete: every shard is done and ``manifest.jsonl`` + ``dataset.json`` are written.
    """

    out: Path
    generated: int
    skipped: int
    shard_size: int
    complete: bool


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)``: shard 1 (counting from 0) of 4."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like 'i/n' (e.g. 0/4), got {text!r}") from None
    check_shard((index, count))
    return index, count


def default_device(env: Mapping[str, str] | None = None) -> str:
    """Where a loaded pipeline samples: this process's GPU (``LOCAL_RANK`` under a multi-process
    launch, so each process of a node takes its own) when there is one, else the CPU."""
    env = os.environ if env is None else env
    return f"cuda:{int(env.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def launched_shard(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when a launcher started several processes, else None.

    ``accelerate launch`` and ``torchrun`` start the same command once per process and tell each
    its place only through these variables; generation needs no process group, so taking shard
    RANK of WORLD_SIZE is all it takes for the processes to split the set between them.
    """
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if "RANK" not in env:
        raise ValueError(f"WORLD_SIZE is {world} but RANK is not set; launch with accelerate launch or torchrun")
    shard = (int(env["RANK"]), world)
    check_shard(shard)
    return shard


def resolve_shard(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The shard of this process: ``--shard`` if given, else the launcher's, else the whole set.

    Raises:
        ValueError: ``--shard`` names another shard than the multi-process launch gives this
            process (the processes would write the same part, or leave parts undone).
    """
    launched = launched_shard(env)
    if text is None:
        return launched or (0, 1)
    shard = parse_shard(text)
    if launched is not None and shard != launched:
        raise ValueError(
            f"--shard {text} contradicts the launch: this is process {launched[0]} of {launched[1]} "
            f"(RANK, WORLD_SIZE), which takes shard {launched[0]}/{launched[1]}; leave out --shard under a "
            "multi-process launch"
        )
    return shard


def check_shard(shard: tuple[int, int]) -> None:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard i/n needs n >= 1 and 0 <= i < n, got {index}/{count}")


def shard_range(n: int, shard: tuple[int, int]) -> range:
    """Contiguous index range of ``shard`` when ``n`` samples are split into ``shard[1]`` parts."""
    index, count = shard
    return range(index * n // count, (index + 1) * n // count)


def pipeline_hash(pipeline: SegSynthPipeline) -> str:
    """:func:`model_hash` of an in-memory pipeline, via ``save_pretrained`` to a temporary folder,
    so it equals the hash of the same weights loaded from disk."""
    with tempfile.TemporaryDirectory(prefix="segsynth-hash-") as tmp:
        pipeline.save_pretrained(tmp)
        return model_hash(tmp)


#: Libraries a pipeline component may be loaded from (``model_index.json``).
SAFE_LIBRARIES = ("diffusers", "transformers")


def check_pipeline_folder(pipeline_dir: Path) -> None:
    """Refuse a pipeline folder that is not made of JSON + safetensors only.

    Raises:
        ValueError: a pickle or Python file in the folder, or a component whose library is not
            segsynth, diffusers or transformers (naming the file).
    """
    refuse_unsafe_files(pipeline_dir)
    index_path = pipeline_dir / "model_index.json"
    index = read_json_object(index_path)
    for name, entry in index.items():
        if name.startswith("_") or entry is None or entry == [None, None]:
            continue
        library = entry[0] if isinstance(entry, list) and len(entry) == 2 else None
        if not isinstance(library, str) or not (library in SAFE_LIBRARIES or library.startswith("segsynth.")):
            raise ValueError(f"{index_path}: component {name!r} names {entry!r}; only segsynth, diffusers and transformers classes load")
        _check_component(pipeline_dir / name, library, entry[1], index_path)


def _check_component(folder: Path, library: str, class_name: Any, index_path: Path) -> None:
    """Validate one component's config against the class it builds, before anything is allocated."""
    if (folder / "scheduler_config.json").is_file():
        check_scheduler_config(folder / "scheduler_config.json", class_name)
        return
    if not (folder / "config.json").is_file() or library == "transformers":
        return  # diffusers names what is missing; text encoders come with their own checks
    module = importlib.import_module(library)  # only segsynth.* and diffusers reach here
    cls = getattr(module, class_name, None) if isinstance(class_name, str) else None
    if cls is None:
        raise ValueError(f"{index_path}: {library} has no class {class_name!r}")
    check_model_folder(folder, cls)


def load_run(path: str | Path) -> tuple[SegSynthPipeline, Path, dict[str, Any]]:
    """Load ``RUN/pipeline`` (or a pipeline folder itself) and ``RUN/training_data.json`` if present.

    Returns:
        ``(pipeline, pipeline_dir, training_data)``; ``training_data`` is ``{}`` for a bare pipeline.
    """
    path = Path(path)
    pipeline_dir = path / PIPELINE_DIR if (path / PIPELINE_DIR).is_dir() else path
    if not (pipeline_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: neither a training run (no {PIPELINE_DIR}/) nor a pipeline folder")
    training_data: dict[str, Any] = {}
    info = path / TRAINING_DATA_JSON
    if info.is_file():
        training_data = read_json_object(info)
        record = validate_record(TrainingData, training_data, str(info))
        if record.style_sampler is not None and record.style_sampler not in STYLE_SAMPLERS:
            raise ValueError(f"{info}: style_sampler: unknown style sampler {record.style_sampler!r}; "
                             f"choose one of {sorted(STYLE_SAMPLERS)}")
    check_pipeline_folder(pipeline_dir)
    try:
        pipeline = SegSynthPipeline.from_pretrained(str(pipeline_dir))
    except (OSError, KeyError, TypeError) as exc:  # diffusers reports missing/odd files with these
        raise ValueError(f"{pipeline_dir}: not a loadable segsynth pipeline ({exc})") from None
    return pipeline, pipeline_dir, training_data


def generation_inputs(run: str | Path | SegSynthPipeline, cfg: GenerationConfig) -> list[Path]:
    """Every folder a generation reads: the run, the layout data, style pool and judge given, and the data
    the run's ``training_data.json`` records (the default layouts and styles). The synthetic set
    must be written apart from all of them (:func:`segsynth.io.guard.check_out_apart`)."""
    inputs = [Path(p) for p in (cfg.layout_data, cfg.styles, cfg.filter and cfg.filter.judge) if p is not None]
    if isinstance(run, SegSynthPipeline):
        return inputs
    inputs.append(Path(run))
    info = Path(run) / TRAINING_DATA_JSON
    if info.is_file():
        record = read_record(info, TrainingData)
        inputs += [Path(root) for root in [record.data_root, *(d.data_root for d in record.datasets or [])] if root]
    return inputs


def synthetic_spec(source: DatasetSpec, config: GenerationRecord) -> DatasetSpec:
    """``dataset.json`` of the synthetic set (without cases): the source's labels, channels,
    modality and prompt, and an honest account of where images and masks come from.

    The masks are the layouts the images were generated *from*, not annotations of them; for real
    layouts the mask pixels keep the source's provenance (human stays human), composed layouts are
    algorithmic and therefore ``derived``.
    """
    origin = {
        "augmented": "real masks of the source dataset, augmented (flip, rotation, scale, shear)",
        "variants": f"real masks of the source dataset, unchanged, {config.per_mask} images per mask",
        "composed": "random smooth regions following the source dataset's class-composition prior",
    }[config.layouts]
    derivation = (
        f"Masks are the conditioning layouts ({origin}); each image was generated by a diffusion model "
        f"(weights sha256 {config.model_hash[:16]}) to match its mask, so a mask is exact for its image "
        f"only as far as the generator follows the layout. Source labels: {source.label_provenance}"
        + (f" ({source.derivation})" if source.derivation else "")
        + "."
    )
    return DatasetSpec(
        name=f"{source.name}-synthetic",
        description=f"Synthetic images of {source.name} generated by segsynth; see manifest.jsonl per sample.",
        modality=source.modality,
        prompt=source.prompt,
        channels=source.channels,
        labels=source.labels,
        label_provenance="derived" if config.layouts == "composed" else source.label_provenance,
        derivation=derivation,
        licence=f"synthetic; derived from data under: {source.licence}",
        source=f"segsynth generate from {config.layout_data}",
        cases={},
    )


def generate(
    run: str | Path | SegSynthPipeline,
    out: str | Path,
    cfg: GenerationConfig,
    *,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    console: Console | None = None,
    on_sample: Callable[[ManifestRecord], None] | None = None,
    device: str | None = None,
) -> GenerationResult:
    """Generate ``cfg.n`` synthetic image/mask pairs into ``out`` (our dataset format + manifest).

    What ``cfg`` leaves None the run fills in (layout data, style pool, style sampler and number
    of references from its ``training_data.json``; the prompt from the layout data); the resolved
    :class:`GenerationRecord` is what ``generation.json`` keeps and what a resume must match.

    Args:
        run: a training run folder (``RUN/pipeline`` + ``RUN/training_data.json``), a saved
            pipeline folder, a :class:`SegSynthPipeline` (no run: ``cfg.layout_data`` is needed,
            and without ``cfg.styles`` the model's learned null style is used), or a
            ``train-diffusion --backbone`` run (a ControlNet on a frozen Stable Diffusion: no style
            references; the prompt and the edge map steer it, see :mod:`segsynth.backbone`).
        out: the synthetic set's folder.
        cfg: the set's settings (see :class:`GenerationConfig`).
        shard: ``(i, n)``: generate only the i-th of n contiguous index ranges.
        resume: continue an interrupted run; without it a non-empty ``out`` is refused.
        console: show a progress bar with ETA on this console.
        on_sample: called with each committed record (after its files and manifest line exist).
        device: where a pipeline loaded from a folder samples (default :func:`default_device`);
            a pipeline object passed in stays where it is unless this is given.

    Raises:
        TypeError: ``cfg`` is not a :class:`GenerationConfig`.
        FileExistsError: ``out`` holds files and ``resume`` is False, or a shard is started twice.
        ValueError: inconsistent inputs (model vs data classes/channels, settings the model has no
            use for, changed settings on resume).
    """
    if not isinstance(cfg, GenerationConfig):
        raise TypeError(f"generate() takes its settings as a GenerationConfig, got {type(cfg).__name__}; "
                        "e.g. generate(run, out, GenerationConfig(n=8))")
    check_shard(shard)
    out = Path(out)
    check_out_apart(out, generation_inputs(run, cfg))
    if not isinstance(run, SegSynthPipeline):
        from segsynth.backbone.sample import is_controlnet_run

        if is_controlnet_run(run):
            return _generate_with_controlnet(run, out, cfg, shard=shard, resume=resume, console=console,
                                             on_sample=on_sample, device=device)
    if isinstance(run, SegSynthPipeline):
        pipeline, digest, training_data = run, pipeline_hash(run), {}
        if device is not None:
            pipeline.to(device)
    else:
        pipeline, pipeline_dir, training_data = load_run(run)
        digest = model_hash(pipeline_dir)
        pipeline.to(default_device() if device is None else device)
    data_root = training_data.get("data_root")
    if cfg.layout_data is None and data_root is None:
        info = None if isinstance(run, SegSynthPipeline) else Path(run) / TRAINING_DATA_JSON
        source = ("the model comes without a run" if info is None else
                  f"{info} names no data_root" if info.is_file() else f"{info.parent} has no {TRAINING_DATA_JSON}")
        raise ValueError(f"layout_data is required: {source}")
    layout_root = Path(cfg.layout_data if cfg.layout_data is not None else data_root).resolve()
    styles = cfg.styles if cfg.styles is not None or data_root is None else Path(data_root) / UNLABELED_DIR
    pipeline.set_progress_bar_config(disable=True)
    unet_cfg = pipeline.unet.config
    record = cfg.resolve(digest, shard[1], {
        "layout_data": str(layout_root),
        "styles": str(styles.resolve()) if styles is not None else None,
        "style_sampler": (cfg.style_sampler or training_data.get("style_sampler") or "multi_patch")
        if styles is not None else None,
        "num_refs": cfg.num_refs if cfg.num_refs is not None else (
            training_data.get("num_refs") or pipeline.style_aggregator.config.num_refs
        ),
        **_optional_conditions(pipeline, cfg),
    })
    if record.styles is not None:  # before any output: a linear aggregator takes only its own N
        pipeline.style_aggregator.check_num_refs(record.num_refs)
    dataset = _layout_dataset(layout_root, cfg.layout_data is None, training_data,
                              int(unet_cfg.num_classes), int(unet_cfg.image_channels))
    source_spec = dataset.spec
    judge = _judge(cfg, source_spec, pipeline.device)
    if judge is not None:
        record = record.model_copy(update={"filter": judge.record})
    model_size = int(unet_cfg.image_size)
    size = _output_size(pipeline, cfg.size)
    unet = pipeline.unet
    check_memory(memory_estimate(size, min(cfg.batch_size, cfg.n), int(unet_cfg.image_channels), int(unet.sample_channels),
                                 int(unet.latent_factor)), pipeline.device)  # before any output
    if cfg.tile_overlap is not None and cfg.tile_overlap >= model_size:
        raise ValueError(f"tile_overlap {cfg.tile_overlap} must be smaller than the tile, the model's size {model_size}")
    layout_source = make_layout_source(cfg.layouts, dataset, size, per_mask=cfg.per_mask, class_prior=cfg.class_prior)
    if record.prompt is None and pipeline.unet.uses_text:
        record = record.model_copy(update={"prompt": source_spec.prompt})
    text = encode_prompts([record.prompt]) if record.prompt is not None else None
    style_source = None
    if record.styles is not None:
        pool = open_style_pool(record.styles, source_spec.channels)
        style_source = StyleSource(pool, record.style_sampler, record.num_refs, model_size)
    # Read every layout and style file now: a bad one fails here, naming it, before any output.
    dataset.verify()
    if style_source is not None:
        style_source.pool.verify()
    settings = sampling_settings(record)

    def render(block: range, draws: list[dict[str, Any]]) -> torch.Tensor:
        return pipeline(
            torch.from_numpy(np.stack([d["layout"] for d in draws])).to(pipeline.device),
            None if style_source is None else torch.from_numpy(np.stack([d["style"] for d in draws])).to(pipeline.device),
            generator=[torch.Generator().manual_seed(d["seed"]) for d in draws],
            **settings,
            **_condition_inputs(block, draws, record, layout_source, text, pipeline),
        ).images

    return _write_set(out, record, source_spec, layout_source, style_source, render, batch_size=cfg.batch_size,
                      shard=shard, resume=resume, console=console, on_sample=on_sample, judge=judge)


def sampling_settings(record: GenerationRecord) -> SamplingSettings:
    """The keywords of :meth:`SegSynthPipeline.__call__` a record decides: the one place where the
    record's names meet the pipeline's (scales of conditions a model lacks are 1, i.e. off)."""
    return SamplingSettings(
        num_inference_steps=record.steps,
        sampler=record.sampler,
        style_guidance_scale=record.style_guidance,
        layout_guidance_scale=record.layout_guidance,
        guidance_rescale=record.guidance_rescale,
        edge_guidance_scale=record.edge_guidance,
        text_guidance_scale=record.text_guidance,
        tile_overlap=record.tile_overlap,
    )


def _layout_dataset(root: Path, from_run: bool, training_data: dict[str, Any], num_classes: int,
                    channels: int) -> SegDataset:
    """The labelled data the layouts come from, checked against what the model draws.

    With the run's own data (``from_run``), only the masks the model was trained on are used, so
    a benchmark's held-out cases never reach the synthetic training data.
    """
    dataset = SegDataset(root)
    if from_run and training_data.get("train_ids") is not None:
        train_ids = set(training_data["train_ids"])
        dataset = SegDataset(root, refs=[ref for ref in dataset.refs if ref.id in train_ids])
    spec = dataset.spec
    if spec.num_classes != num_classes or spec.channels != channels:
        raise ValueError(
            f"{root / DATASET_JSON}: {spec.num_classes} classes / {spec.channels} channels, "
            f"but the model draws {num_classes} classes / {channels} channels"
        )
    return dataset


#: Settings of :class:`GenerationConfig` a ControlNet run has no use for: it takes no style
#: references (so no style sampler, N or style / layout guidance), weighs its hint by the run's
#: conditioning scale rather than an edge guidance, and samples whole images, never tiles.
CONTROLNET_UNUSED = ("styles", "style_sampler", "num_refs", "style_guidance", "layout_guidance", "guidance_rescale",
                     "edge_guidance", "tile_overlap")


def _generate_with_controlnet(
    run: str | Path,
    out: Path,
    cfg: GenerationConfig,
    *,
    shard: tuple[int, int],
    resume: bool,
    console: Console | None,
    on_sample: Callable[[ManifestRecord], None] | None,
    device: str | None,
) -> GenerationResult:
    """:func:`generate` for a ``train-diffusion --backbone`` run: the same set format, manifest,
    resumption and shards, with images drawn by the ControlNet on its frozen Stable Diffusion.

    The prompt and the hint steer it; ``cfg.text_guidance`` is the prompt's classifier-free
    guidance (default: the run's). A setting it would ignore (:data:`CONTROLNET_UNUSED`) is refused
    unless left at its default, so no one believes a set was made with it.
    """
    from segsynth.backbone.sample import load_controlnet_run, sample_images

    unused = [name for name in CONTROLNET_UNUSED if getattr(cfg, name) != GenerationConfig.model_fields[name].default]
    if unused:
        raise ValueError(f"{run}: a ControlNet run takes no style references and does not use {unused}; leave them out")
    loaded = load_controlnet_run(run, device=device)
    training_data = loaded.training_data
    if cfg.layout_data is None and training_data.get("data_root") is None:
        raise ValueError(f"{run}: its training_data.json names no data_root; give layout_data")
    layout_root = Path(cfg.layout_data if cfg.layout_data is not None else training_data["data_root"]).resolve()
    dataset = _layout_dataset(layout_root, cfg.layout_data is None, training_data, loaded.num_classes, loaded.channels)
    backbone = read_record(Path(run) / BACKBONE_JSON, BackboneRecord)
    digest = hashlib.sha256(f"{model_hash(Path(run) / CONTROLNET_DIR)}:{backbone.sha256}".encode()).hexdigest()
    record = cfg.resolve(digest, shard[1], {
        "layout_data": str(layout_root), "styles": None, "style_sampler": None, "num_refs": None,
        # no STEDM guidance: the manifest says so with scales that are off
        "style_guidance": 1.0, "layout_guidance": 1.0, "guidance_rescale": 0.0,
        "edge_source": cfg.edges or "layout",
        "prompt": cfg.prompt if cfg.prompt is not None else dataset.spec.prompt,
        "text_guidance": loaded.config.sampling.guidance_scale if cfg.text_guidance is None else cfg.text_guidance,
    })
    judge = _judge(cfg, dataset.spec, device)
    if judge is not None:
        record = record.model_copy(update={"filter": judge.record})
    out_size = cfg.size if cfg.size is not None else loaded.config.data.image_size
    if out_size % 8:
        raise ValueError(f"size {out_size} must be a multiple of 8 (Stable Diffusion's latent grid)")
    vae = loaded.pipeline.vae.config
    check_memory(memory_estimate(out_size, min(cfg.batch_size, cfg.n), int(vae.out_channels), int(vae.latent_channels),
                                 2 ** (len(vae.block_out_channels) - 1)), loaded.pipeline.device)  # before any output
    layout_source = make_layout_source(cfg.layouts, dataset, out_size, per_mask=cfg.per_mask, class_prior=cfg.class_prior)
    dataset.verify()

    def render(block: range, draws: list[dict[str, Any]]) -> torch.Tensor:
        real = None
        if record.edge_source == "image" and isinstance(layout_source, VariantLayouts):
            real = np.stack([layout_source.source_image(index) for index in block])
        return sample_images(loaded, np.stack([d["layout"] for d in draws]), real, prompt=record.prompt,
                             steps=record.steps, guidance_scale=record.text_guidance, sampler=record.sampler,
                             seeds=[d["seed"] for d in draws])

    return _write_set(out, record, dataset.spec, layout_source, None, render, batch_size=cfg.batch_size, shard=shard,
                      resume=resume, console=console, on_sample=on_sample, judge=judge)


def _write_set(
    out: Path,
    config: GenerationRecord,
    source_spec: DatasetSpec,
    layout_source: LayoutSource,
    style_source: StyleSource | None,
    render: Callable[[range, list[dict[str, Any]]], torch.Tensor],
    *,
    batch_size: int,
    shard: tuple[int, int],
    resume: bool,
    console: Console | None,
    on_sample: Callable[[ManifestRecord], None] | None,
    judge: LayoutJudge | None = None,
) -> GenerationResult:
    """Claim ``out``, then draw, ``render`` and commit this shard's samples block by block (resumably),
    and merge the set when every shard is done. ``render(block, draws)`` returns the block's images
    ``(B, C, H, W)`` in [0, 1]; everything else is the same whatever model draws them. With a
    ``judge`` (``config.filter``) draws below its threshold are dropped (:func:`_write_filtered`)."""
    n = config.n
    indices = shard_range(n, shard)
    part = out / manifest_name(*shard)
    # The shard's lock is held throughout (a second writer of it fails at once); the set's lock
    # only while the recipe is claimed, so two shards never claim a fresh folder at the same time.
    with FolderLock(out, shard_lock_name(*shard)):
        with FolderLock(out, wait=SET_LOCK_WAIT_S):
            _claim_output(out, config, synthetic_spec(source_spec, config), part, resume)
        if resume:
            _remove_stale_temporaries(out, indices)
        done = _done_indices(out, part, indices) if resume else set()
        generated = 0
        if judge is not None:
            generated = _write_filtered(out, config, judge, layout_source, style_source, render, batch_size=batch_size,
                                        shard=shard, console=console, on_sample=on_sample,
                                        prompt=config.prompt or source_spec.prompt)
            complete = _filtered_parts_complete(out, config)
            if complete:
                merge_shards(out)
            return GenerationResult(out, generated, len(done), len(indices), complete)
        with ManifestWriter(part) as writer, StepProgress("generate", len(indices), console, len(done)) as progress:
            for block in _blocks(indices, batch_size):
                if all(i in done for i in block):
                    continue
                draws = [_draw(i, config.seed, layout_source, style_source) for i in block]
                images = render(block, draws)
                check_images(images, block.start, f"generate {out}")
                for index, draw, image in zip(block, draws, images):
                    if index in done:
                        continue
                    record = _write_sample(out, index, draw, image, config, config.prompt or source_spec.prompt)
                    writer.append(record)
                    generated += 1
                    progress.advance()
                    if on_sample is not None:
                        on_sample(record)
        # Every shard appends its last line before this test, so the last to finish sees all parts
        # complete. Shards finishing together both merge, one after the other (merge_shards holds
        # the set's lock), and write the same bytes.
        complete = _all_parts_complete(out, n, shard[1])
        if complete:
            merge_shards(out)
        return GenerationResult(out, generated, len(done), len(indices), complete)


def _judge(cfg: GenerationConfig, spec: DatasetSpec, device: str | torch.device | None) -> LayoutJudge | None:
    """The frozen network of ``cfg.filter`` (None without a filter), checked against the layouts."""
    if cfg.filter is None:
        return None
    from segsynth.synth.judge import LayoutJudge

    return LayoutJudge(cfg.filter, spec.channels, spec.class_names, device)


def filter_draws(config: GenerationRecord) -> int:
    """Draws a filtered set may make in all: ``ceil(max_attempts_factor * n)`` (split over the shards
    like the samples, :func:`shard_range`)."""
    assert config.filter is not None
    return math.ceil(round(config.filter.max_attempts_factor * config.n, 9))


def _write_filtered(
    out: Path,
    config: GenerationRecord,
    judge: LayoutJudge,
    layout_source: LayoutSource,
    style_source: StyleSource | None,
    render: Callable[[range, list[dict[str, Any]]], torch.Tensor],
    *,
    batch_size: int,
    shard: tuple[int, int],
    console: Console | None,
    on_sample: Callable[[ManifestRecord], None] | None,
    prompt: str,
) -> int:
    """Fill this shard's samples from its draws in order, keeping a draw only if the judge passes it.

    Draw ``d`` is drawn exactly as sample ``d`` of an unfiltered set (its seed is ``(seed, d)``), so a
    threshold of 0 gives the unfiltered set. The k-th kept draw of a shard becomes its k-th sample;
    a rejected draw gets a line in ``rejected.jsonl`` instead. Both files are appended in draw order
    (each line fsynced), so after a kill the committed draws are a prefix of the shard's draws, and
    the block that holds the first undecided draw is rendered whole again, in the same batches as
    an uninterrupted run: the same decisions, the same set. Stops at the shard's sample count or when
    its draws (:func:`filter_draws`) run out, then warns with the count kept.

    Returns:
        Samples written by this call.
    """
    slots = shard_range(config.n, shard)
    draws = shard_range(filter_draws(config), shard)
    part, rejected_part = out / manifest_name(*shard), out / rejected_name(*shard)
    kept: dict[int, int] = {}  # draw -> slot of the samples on disk
    for record in read_manifest(part):  # _done_indices has already dropped lines without files
        if record.draw is None:
            raise ValueError(f"{part}: sample {record.id} has no 'draw'; not a filtered set's manifest")
        kept[record.draw] = record.index
    rejected = {r.draw for r in read_manifest(rejected_part, repair=True, model=RejectedRecord) if r.draw in draws}
    decided = set(kept) | rejected
    generated = 0
    with ManifestWriter(part) as writer, ManifestWriter(rejected_part) as rejects, \
            StepProgress("generate", len(slots), console, len(kept)) as progress:
        for block in _blocks(draws, batch_size):
            if len(kept) >= len(slots):
                break
            todo = [d for d in block if d not in decided]
            if not todo:
                continue
            block_draws = [_draw(d, config.seed, layout_source, style_source) for d in block]
            images = render(block, block_draws)
            check_images(images, block.start, f"generate {out}")
            # the whole block is judged, as it was rendered: the judge's batches stay those of an
            # uninterrupted run too, so no float in its decision can differ after a resume
            scores = judge.score([_to_pixels(image) for image in images], [drawn["layout"] for drawn in block_draws],
                                 [out / IMAGES_DIR / f"draw_{d:07d}.png" for d in block])
            for d in todo:
                dice = scores[d - block.start]
                if len(kept) >= len(slots):
                    break
                draw = block_draws[d - block.start]
                if not judge.keeps(dice):
                    rejects.append(RejectedRecord(draw=d, seed=draw["seed"], layout_id=draw["layout_id"],
                                                  style_ids=draw["style_ids"], judge_dice=dice))
                    decided.add(d)
                    continue
                slot = slots.start + sum(1 for k in kept if k < d)
                if slot in kept.values():
                    raise ValueError(f"{part}: sample {slot} is already taken by another draw; the set's files were "
                                     "changed since it was written (generate it into a new folder)")
                record = _write_sample(out, slot, draw, images[d - block.start], config, prompt)
                record = record.model_copy(update={"draw": d, "judge_dice": dice})
                writer.append(record)
                kept[d] = slot
                decided.add(d)
                generated += 1
                progress.advance()
                if on_sample is not None:
                    on_sample(record)
    if len(kept) < len(slots):
        message = (f"generate {out}: the filter (min_dice {judge.record.min_dice}) kept {len(kept)} of the "
                   f"{len(slots)} samples of shard {shard[0]}/{shard[1]} after all its {len(draws)} draws "
                   f"(max_attempts_factor {judge.record.max_attempts_factor}); the set is finished with fewer samples")
        warnings.warn(message, stacklevel=2)
        if console is not None:
            console.print(f"[yellow]warning:[/] {message}", highlight=False)
    return generated


def _filtered_parts_complete(out: Path, config: GenerationRecord) -> bool:
    """Cheap test whether every shard of a filtered set is done: all its samples kept, or all its
    draws decided (kept or rejected)."""
    total = filter_draws(config)
    for index in range(config.num_shards):
        shard = (index, config.num_shards)
        kept, rejected = (_line_count(out / name(*shard)) for name in (manifest_name, rejected_name))
        if kept != len(shard_range(config.n, shard)) and kept + rejected != len(shard_range(total, shard)):
            return False
    return True


def _line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def memory_estimate(size: int, batch_size: int, image_channels: int, sample_channels: int,
                    latent_factor: int) -> Estimate:
    """What one pipeline call of ``batch_size`` images of ``size`` px holds at least, whatever the
    model and the tiling: the layouts (int64, as drawn and as a tensor), the noisy sample and the
    tiles' blended sum on the denoiser's grid (``sample_channels``, ``latent_factor`` times smaller
    per side), and the decoded float32 images. The denoiser's activations are not counted, so this
    is a lower bound (see :mod:`segsynth.fits`)."""
    pixels = size * size
    grid = pixels // (latent_factor ** 2)
    parts = {
        f"layouts ({batch_size} of {size}x{size})": batch_size * pixels * 8 * 2,
        "sample and tile sum": batch_size * sample_channels * grid * 4 * 2,
        "decoded images": batch_size * pixels * image_channels * 4,
    }
    return Estimate("generate", parts, lower=f"--size ({size}) or --batch-size ({batch_size})")


def _output_size(pipeline: SegSynthPipeline, size: int | None) -> int:
    """The side of the generated images: the model's training size, or ``size`` if it fits the UNet's grid."""
    cfg = pipeline.unet.config
    if size is None:
        return int(cfg.image_size)
    factor = 2 ** (len(cfg.block_out_channels) - 1) * pipeline.unet.latent_factor
    if size % factor:
        raise ValueError(f"size {size} must be a multiple of {factor} (the model's downsampling factor)")
    return size


def _optional_conditions(pipeline: SegSynthPipeline, cfg: GenerationConfig) -> dict[str, Any]:
    """The edge / text keys of the record, for a model that has those conditions; settings of a
    condition the model lacks are refused rather than silently dropped."""
    unet = pipeline.unet
    if not unet.uses_edge and (cfg.edges is not None or cfg.edge_guidance != 1.0):
        raise ValueError("edge settings were given but the model has no edge condition (trained without model.edge)")
    if not unet.uses_text and (cfg.prompt is not None or cfg.text_guidance not in (None, 1.0)):
        raise ValueError("a prompt or text guidance was given but the model has no text condition (model.text)")
    found: dict[str, Any] = {}
    if unet.uses_edge:
        found.update(edge_source=cfg.edges or "layout", edge_guidance=cfg.edge_guidance)
    if unet.uses_text:
        found.update(prompt=cfg.prompt, text_guidance=TEXT_GUIDANCE if cfg.text_guidance is None else cfg.text_guidance)
    return found


def _condition_inputs(block: range, draws: list[dict[str, Any]], config: GenerationRecord, layouts: LayoutSource,
                      text: torch.Tensor | None, pipeline: SegSynthPipeline) -> dict[str, torch.Tensor]:
    """Edge maps and prompt embeddings of one block, for edge / text models (nothing otherwise)."""
    inputs: dict[str, torch.Tensor] = {}
    if config.edge_source is not None:
        maps = []
        for index, draw in zip(block, draws):
            image = layouts.source_image(index) if config.edge_source == "image" and isinstance(layouts, VariantLayouts) else None
            maps.append(edge_map(draw["layout"], image, pipeline.unet.config.edge_sigma))
        inputs["edge"] = torch.from_numpy(np.stack(maps))[:, None].to(pipeline.device)
    if text is not None:
        inputs["prompt_embeds"] = text.expand(len(draws), -1).to(pipeline.device)
    return inputs


def _blocks(indices: range, batch_size: int) -> list[range]:
    """Split ``indices`` at multiples of ``batch_size`` (same blocks however often a run resumes)."""
    first_cut = (indices.start // batch_size + 1) * batch_size
    cuts = [indices.start, *range(first_cut, indices.stop, batch_size), indices.stop]
    return [range(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _draw(index: int, seed: int, layouts: LayoutSource, styles: StyleSource | None) -> dict[str, Any]:
    """Layout, style references and noise seed of sample ``index``, from its own generator only."""
    value = sample_seed(seed, index)
    rng = np.random.default_rng(value)
    layout, layout_id = layouts.draw(index, rng)
    style, style_ids = (None, []) if styles is None else styles.draw(rng)
    return {"seed": value, "layout": layout, "layout_id": layout_id, "style": style, "style_ids": style_ids}


def _to_pixels(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] -> uint8 ``(H, W)`` (one channel) or ``(H, W, C)``."""
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)


def _write_sample(
    out: Path,
    index: int,
    draw: dict[str, Any],
    image: torch.Tensor,
    config: GenerationRecord,
    prompt: str,
) -> ManifestRecord:
    sample_id = f"synth_{index:07d}"
    image_rel, mask_rel = f"{IMAGES_DIR}/{sample_id}.png", f"{MASKS_DIR}/{sample_id}.png"
    mask = draw["layout"]
    write_image(out / image_rel, _to_pixels(image))
    write_image(out / mask_rel, mask.astype(np.uint8 if mask.max() < 256 else np.uint16))
    return ManifestRecord(
        id=sample_id,
        image=image_rel,
        mask=mask_rel,
        index=index,
        seed=draw["seed"],
        layout_source=config.layouts,
        layout_id=draw["layout_id"],
        style_source=config.styles,
        style_sampler=config.style_sampler,
        style_ids=draw["style_ids"],
        prompt=prompt,
        guidance=Guidance(style=config.style_guidance, layout=config.layout_guidance, rescale=config.guidance_rescale),
        sampler=config.sampler,
        steps=config.steps,
        model_hash=config.model_hash,
        edge_source=config.edge_source,
        edge_guidance=config.edge_guidance if config.edge_source is not None else None,
        text_guidance=config.text_guidance if config.prompt is not None else None,
    )


def _claim_output(out: Path, config: GenerationRecord, spec: DatasetSpec, part: Path, resume: bool) -> None:
    """Check ``out`` may be written by this call and record the recipe in ``generation.json``.

    A folder that already holds a set made with other settings is refused (resume or not); without
    ``resume``, so is any existing output of this shard (a single process owns the whole folder).
    """
    record_path = out / GENERATION_JSON
    existing = [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    record = {"config": config.saved(), "dataset": spec.model_dump(mode="json")}
    if existing:
        if not record_path.is_file():
            raise FileExistsError(f"{out}: exists, is not empty and holds no {GENERATION_JSON}; choose another folder")
        previous = read_json_object(record_path)
        if previous.get("config") != record["config"]:
            changed = sorted(
                key for key in record["config"] if previous.get("config", {}).get(key) != record["config"][key]
            )
            raise ValueError(f"{record_path}: this set was made with other settings (differs in {changed})")
        if not resume and (config.num_shards == 1 or part.exists()):
            raise FileExistsError(f"{out}: already holds generated samples; pass --resume to continue them")
        return
    atomic_write_json(record_path, record)


def _remove_stale_temporaries(out: Path, indices: range) -> None:
    """Delete the hidden temporaries a killed run of this shard left (``.synth_0000003.png.*.tmp``).

    Only this shard's indices are touched, so shards running beside it keep their files.
    """
    for folder in (out / IMAGES_DIR, out / MASKS_DIR):
        if not folder.is_dir():
            continue
        for path in folder.glob(".synth_*.tmp"):
            digits = path.name[len(".synth_"):].split(".", 1)[0]
            if digits.isdigit() and int(digits) in indices:
                path.unlink(missing_ok=True)


def _done_indices(out: Path, part: Path, indices: range) -> set[int]:
    """Indices whose image, mask and manifest line all exist; lines without files are dropped."""
    records = read_manifest(part, repair=True)
    kept, seen = [], set()
    for record in records:
        if record.index in indices and record.index not in seen and (out / record.image).is_file() and (out / record.mask).is_file():
            kept.append(record)
            seen.add(record.index)
    if len(kept) != len(records):
        write_manifest(part, kept)
    return seen


def _all_parts_complete(out: Path, n: int, num_shards: int) -> bool:
    """Cheap test whether every shard's manifest part has as many lines as its range."""
    for index in range(num_shards):
        path = out / manifest_name(index, num_shards)
        expected = len(shard_range(n, (index, num_shards)))
        if not path.is_file() or path.read_bytes().count(b"\n") != expected:
            return False
    return True


def merge_shards(out: str | Path) -> Path:
    """Check that every sample of the set exists and write ``manifest.jsonl`` and ``dataset.json``.

    Works for a single-process set too (it then only verifies its manifest and writes
    ``dataset.json``). Case ids: the real sample a layout came from (so all variants of one mask
    form one case), or the sample's own id for composed layouts.

    Raises:
        ValueError: missing, duplicate or unwritten samples, naming the shard parts to resume.
    """
    out = Path(out)
    record_path = out / GENERATION_JSON
    if not record_path.is_file():
        raise FileNotFoundError(f"{out}: no {GENERATION_JSON}; not a segsynth synthetic set")
    with FolderLock(out, wait=SET_LOCK_WAIT_S):
        return _merge_locked(out, record_path)


def _merge_locked(out: Path, record_path: Path) -> Path:
    """:func:`merge_shards` once the set's lock is held."""
    saved = read_json_object(record_path)
    if not isinstance(saved.get("config"), dict) or not isinstance(saved.get("dataset"), dict):
        raise ValueError(f"{record_path}: needs the objects 'config' and 'dataset'")
    config = parse_config(GenerationRecord, saved["config"], str(record_path))
    records: list[ManifestRecord] = []
    rejected: list[RejectedRecord] = []
    incomplete = []
    for shard in range(config.num_shards):
        part = out / manifest_name(shard, config.num_shards)
        found = read_manifest(part)
        slots = shard_range(config.n, (shard, config.num_shards))
        if config.filter is not None:
            dropped = read_manifest(out / rejected_name(shard, config.num_shards), model=RejectedRecord)
            rejected.extend(dropped)
            # a filtered shard may end short, but only after all its draws were decided
            short_but_done = len(found) + len(dropped) == len(shard_range(filter_draws(config), (shard, config.num_shards)))
            slots = slots[:len(found)] if short_but_done else slots
        if {r.index for r in found} != set(slots):
            incomplete.append(part.name)
        records.extend(found)
    if incomplete:
        raise ValueError(f"{out}: incomplete shard(s) {incomplete}; run them (with --resume) first")
    records.sort(key=lambda r: r.index)
    if len({r.index for r in records}) != len(records) or len({r.id for r in records}) != len(records):
        raise ValueError(f"{out}: duplicate samples in the manifest parts")
    missing = [r.id for r in records if not ((out / r.image).is_file() and (out / r.mask).is_file())]
    if missing:
        raise ValueError(f"{out}: image or mask file missing for {len(missing)} sample(s), e.g. {missing[:3]}")
    if config.num_shards > 1:
        write_manifest(out / MANIFEST_JSONL, records)
    if config.filter is not None:
        _record_filter_outcome(out, record_path, saved, config, len(records), sorted(rejected, key=lambda r: r.draw))
    spec = DatasetSpec.model_validate({**saved["dataset"], "cases": {r.id: r.layout_id or r.id for r in records}})
    save_spec(out, spec)
    return out / MANIFEST_JSONL


def _record_filter_outcome(out: Path, record_path: Path, saved: dict[str, Any], config: GenerationRecord, kept: int,
                           rejected: list[RejectedRecord]) -> None:
    """Write what the filter did into ``generation.json`` (key ``filtered``), and merge the shards'
    rejected draws into ``rejected.jsonl``. Rewritten with the same bytes by every merge."""
    assert config.filter is not None
    if config.num_shards > 1:
        write_manifest(out / REJECTED_JSONL, rejected)
    attempts = kept + len(rejected)
    outcome = FilterOutcome(
        judge=config.filter.judge, min_dice=config.filter.min_dice, requested=config.n, attempts=attempts, kept=kept,
        rejected=len(rejected), kept_fraction=kept / attempts if attempts else None, reached_cap=kept < config.n,
    )
    updated = {**saved, "filtered": outcome.model_dump(mode="json")}
    if updated != saved:
        atomic_write_json(record_path, updated)
