"""``evaluate_synth``: every measure of a synthetic set against the real data, in one ``metrics.json``.

Output folder (default ``SYNTH/evaluation``)::

    OUT/metrics.json   layout fidelity, style retrieval, FID/KID, diversity (written atomically)
    OUT/seg_real/      the segmentation run trained on the real data, when none was given

Without ``seg_run``, a small network is trained on the real data with the ordinary
:func:`segsynth.train_seg` (:func:`default_seg_config`: a 3-level UNet trained on crops of the
synthetic image size, with a held-out test split by case). It never sees a synthetic image. A later
call with the same output folder reuses it. Each measure that cannot be computed (e.g. a set made
without style references has no style retrieval) is recorded as ``{"skipped": reason}``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from segsynth.artifacts.names import BEST_DIR, CONFIG_YAML, EVALUATION_DIR, METRICS_JSON, MODEL_JSON, SEG_REAL_DIR
from segsynth.artifacts.schemas import EVALUATION_FORMAT_VERSION, EVALUATION_KIND
from segsynth.config import load_config
from segsynth.data.format import load_spec
from segsynth.evaluation.config import EvaluationConfig
from segsynth.evaluation.distribution import distribution_distance
from segsynth.evaluation.diversity import diversity
from segsynth.evaluation.features import SegEncoderFeatures, StainTextureFeatures
from segsynth.evaluation.layout_fidelity import layout_fidelity
from segsynth.evaluation.sets import load_style_references, load_synthetic, real_tiles
from segsynth.evaluation.style_retrieval import style_retrieval
from segsynth.io.atomic import atomic_write_json
from segsynth.io.guard import check_continuable, check_out_apart
from segsynth.seg.config import SegTrainConfig
from segsynth.seg.networks import load_network, size_divisor
from segsynth.seg.train import train_seg


def default_seg_config(image_size: int, steps: int = 300) -> SegTrainConfig:
    """The segmentation recipe used when no run is given: UNet (16, 32, 64), Dice+CE, ``steps``
    optimiser steps on random crops of ``image_size`` (the synthetic size), 20 % of the cases held out."""
    cfg = load_config(
        SegTrainConfig,
        None,
        {
            "network.channels": [16, 32, 64],
            "network.strides": [2, 2],
            "network.num_res_units": 1,
            "train.steps": steps,
            "train.val_every": max(1, min(25, steps)),
            "train.batch_size": 8,
            "split.test_fraction": 0.2,
        },
    )
    if image_size >= 8 and image_size % size_divisor(cfg.network) == 0:
        cfg.train.patch_size = image_size
    return cfg


def _seg_run(real: Path, out: Path, seg_run: str | Path | None, seg_config: Any, image_size: int, console: Console) -> tuple[Path, bool]:
    """The run to use and whether this call (or an earlier one into ``out``) trained it."""
    if seg_run is not None:
        return Path(seg_run), False
    run = out / SEG_REAL_DIR
    if (run / BEST_DIR / MODEL_JSON).is_file():
        return run, True
    config = seg_config if seg_config is not None else default_seg_config(image_size)
    console.print(f"no --seg-run given: training a segmentation network on the real data into {run}")
    resume = (run / CONFIG_YAML).is_file()
    train_seg(real, config, run, resume=resume, console=console)
    return run, True


def _skip(reason: str) -> dict[str, str]:
    return {"skipped": reason}


def evaluate_synth(
    synth: str | Path,
    real: str | Path,
    seg_run: str | Path | None = None,
    *,
    config: EvaluationConfig | None = None,
    out: str | Path | None = None,
    seg_config: SegTrainConfig | str | Path | None = None,
    console: Console | None = None,
    **legacy: Any,
) -> dict[str, Any]:
    """Measure a synthetic set against the real data and write ``OUT/metrics.json``.

    One function on purpose: it reads top to bottom as the sections of ``metrics.json`` in order,
    each a call to its own module, sharing the loaded sets, the network and the seed.

    Args:
        synth: synthetic set folder (dataset format + ``manifest.jsonl``).
        real: the real labelled dataset folder the generator learnt from (same labels and channels).
        seg_run: a ``train_seg`` run trained on real data only; None trains one into ``OUT/seg_real``.
        config: what is sampled and measured (default :class:`EvaluationConfig`).
        out: output folder (default ``synth/evaluation``).
        seg_config: recipe of that training (default :func:`default_seg_config`).
        console: progress messages (default: stderr).
        legacy: the former keyword arguments (``real_split``, ``max_samples``, ``max_real_tiles``,
            ``kid_subsets``, ``seed``), still accepted for one release with a DeprecationWarning.

    Returns:
        The contents of ``metrics.json``: ``kind``, paths, sizes, provenance, ``config``, and the
        sections ``layout_fidelity``, ``style_retrieval``, ``distribution``, ``diversity``.

    Raises:
        ValueError: the synthetic and real data disagree on labels or channels, or a set is empty.
        TypeError: an unknown keyword argument.
    """
    config = _with_legacy(config or EvaluationConfig(), legacy)
    seed = config.seed
    console = console or Console(stderr=True)
    started = time.perf_counter()
    synth, real = Path(synth), Path(real)
    out = Path(out) if out is not None else synth / EVALUATION_DIR
    # SYNTH/evaluation is where a synthetic set keeps its own evaluation; nothing else inside an input.
    check_out_apart(out, [synth, real, seg_run], allowed=[synth / EVALUATION_DIR])
    check_continuable(out, "evaluation")
    real_spec = load_spec(real)
    synthetic = load_synthetic(synth, config.max_samples, seed)
    spec = synthetic.spec
    if spec.labels != real_spec.labels or spec.channels != real_spec.channels:
        raise ValueError(
            f"{synth}: labels {spec.labels} / {spec.channels} channels differ from the real data's "
            f"{real_spec.labels} / {real_spec.channels} channels ({real})"
        )
    size = synthetic.image_size
    run, trained_here = _seg_run(real, out, seg_run, seg_config, size[0] if size[0] == size[1] else 0, console)
    result: dict[str, Any] = {
        "kind": EVALUATION_KIND,
        "format_version": EVALUATION_FORMAT_VERSION,
        "synthetic": str(synth.resolve()),
        "real": str(real.resolve()),
        "seg_run": {"path": str(run.resolve()), "trained_here": trained_here},
        "image_size": list(size),
        "num_synthetic": len(synthetic.ids),
        "seed": seed,
        "config": config.model_dump(mode="json"),
        "provenance": {
            "synthetic": {"label_provenance": spec.label_provenance, "derivation": spec.derivation},
            "real": {"label_provenance": real_spec.label_provenance, "derivation": real_spec.derivation},
        },
    }

    console.print("layout fidelity: segmenting synthetic images with the real-data network")
    result["layout_fidelity"] = layout_fidelity(
        synthetic.images, synthetic.masks, run, real, synthetic.ids, synthetic.case_ids, spec.class_names
    )

    console.print("style retrieval")
    result["style_retrieval"] = _style_section(synthetic, seed)

    console.print("distribution distance (FID / KID) and diversity")
    tiles = real_tiles(real, size, config.real_split, config.max_real_tiles, seed)
    result["real_tiles"] = {"split": tiles.split, "num_tiles": len(tiles.case_ids), "num_images": tiles.num_images,
                            "num_cases": len(set(tiles.case_ids)), "tile_size": list(size)}
    model, network_cfg, meta = load_network(run / BEST_DIR)
    extractors = {
        "seg_encoder": SegEncoderFeatures(model, meta.get("divisor", size_divisor(network_cfg)), spec.channels, network_cfg.name),
        "stain_texture": StainTextureFeatures(spec.channels, seed),
    }
    if len(synthetic.ids) >= 2 and len(tiles.case_ids) >= 2:
        result["distribution"] = distribution_distance(extractors, tiles.images, synthetic.images, tiles.case_ids, config.kid_subsets, seed)
    else:
        result["distribution"] = _skip("FID/KID need at least 2 synthetic and 2 real images")
    layout_ids = [r.layout_id if r is not None else None for r in synthetic.records]
    result["diversity"] = diversity(
        synthetic.images, synthetic.masks, layout_ids, tiles.images, tiles.case_ids, tiles.source_ids,
        extractors["stain_texture"], seed=seed,
    )
    result["seconds"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / METRICS_JSON, _jsonable(result))
    return json.loads(json.dumps(_jsonable(result)))


def _with_legacy(config: EvaluationConfig, legacy: dict[str, Any]) -> EvaluationConfig:
    """``config`` with the former keyword arguments applied, each with a DeprecationWarning."""
    unknown = sorted(set(legacy) - set(EvaluationConfig.model_fields))
    if unknown:
        raise TypeError(f"evaluate_synth() got unexpected keyword argument(s): {', '.join(unknown)}")
    if not legacy:
        return config
    warnings.warn(f"evaluate_synth({', '.join(f'{k}=' for k in legacy)}...) is deprecated: pass "
                  "config=EvaluationConfig(...) instead", DeprecationWarning, stacklevel=3)
    return EvaluationConfig.model_validate({**config.model_dump(), **legacy})


def _style_section(synthetic, seed: int) -> dict[str, Any]:
    with_refs = [i for i, r in enumerate(synthetic.records) if r is not None and r.style_ids and r.style_source]
    if not with_refs:
        return _skip("no sample of the set was generated with style references")
    try:
        images = load_style_references(synthetic)
    except (OSError, ValueError) as exc:
        return _skip(f"style references unavailable: {exc}")
    sets = [[(synthetic.records[i].style_source, ref) for ref in synthetic.records[i].style_ids] for i in with_refs]
    try:
        section = style_retrieval([synthetic.images[i] for i in with_refs], sets, images, synthetic.spec.channels, seed)
    except ValueError as exc:
        return _skip(str(exc))
    section["style_sources"] = sorted({synthetic.records[i].style_source for i in with_refs})
    return section


def _jsonable(value: Any) -> Any:
    """NaN/inf become null (JSON has neither); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value

