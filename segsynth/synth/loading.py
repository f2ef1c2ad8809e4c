"""Loading what a generation reads: a run's pipeline folder, checked to hold JSON and safetensors only
and configs that describe their weights before anything is allocated, its ``training_data.json``,
and the list of every input folder (which the output must stay apart from)."""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

from segsynth.artifacts.names import PIPELINE_DIR, TRAINING_DATA_JSON
from segsynth.artifacts.schemas import TrainingData, read_record, validate_record
from segsynth.data.style_sampling import STYLE_SAMPLERS
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.io.hashing import model_hash
from segsynth.io.json_file import read_json_object
from segsynth.io.model_config import check_model_folder, check_scheduler_config
from segsynth.io.untrusted import refuse_unsafe_files
from segsynth.synth.config import GenerationConfig


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
