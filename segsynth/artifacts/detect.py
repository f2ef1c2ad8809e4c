"""What is this folder? Recognise segsynth's folders by the files each stage leaves behind.

==================  =========================================================================
kind                recognised by
==================  =========================================================================
``run``             a ``plan.json`` with ``data`` and ``choices`` (``segsynth run``)
``benchmark``       ``benchmark.yaml``, or a ``results.json`` with ``settings`` and ``paired``
``controlnet_run``  ``backbone.json`` next to ``training_data.json`` (``train-diffusion --backbone``)
``diffusion_run``   ``training_data.json`` next to ``config.yaml``, ``pipeline/`` or ``samples/``
``autoencoder_run`` ``image_split.json``, ``reconstruction.json`` or ``autoencoder/``, or (runs
                    written before the rename) a ``split.json`` with ``held_out`` next to ``config.yaml``
``seg_run``         a ``split.json`` with ``train_ids``, next to ``config.yaml`` or ``best/``
``synthetic_set``   ``generation.json``, or ``manifest.jsonl`` next to ``dataset.json``
``evaluation``      a ``metrics.json`` written by ``evaluate-synth`` (the folder or the file)
``dataset``         ``dataset.json`` (a real dataset folder)
==================  =========================================================================

:func:`discover` also looks inside each given folder (a run holds a benchmark and an evaluation; a
benchmark holds diffusion runs, synthetic sets and segmentation runs; a demo folder holds a
benchmark and datasets), without entering the folders that only hold data, weights or checkpoints.

The autoencoder's image split is ``image_split.json``; older autoencoder runs wrote it as
``split.json``, the name of the segmentation split. The name alone would take such a run for a
segmentation run, whose report part then reads a split that is not there; so the autoencoder's
own outputs are checked first, and a ``split.json`` counts for a segmentation run only when it
holds segmentation ids. Likewise a ControlNet run writes ``training_data.json`` like a diffusion
run but has no ``pipeline/`` of its own (its ``backbone.json`` names the frozen Stable Diffusion
folder), so it is a kind of its own.

Only file names and top-level JSON keys are looked at, so detecting never loads torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segsynth.artifacts.names import (
    AUTOENCODER_DIR,
    BACKBONE_JSON,
    BENCHMARK_YAML,
    BEST_DIR,
    CHECKPOINTS_DIR,
    CONFIG_YAML,
    CONTROLNET_DIR,
    DATASET_JSON,
    GENERATION_JSON,
    IMAGE_SPLIT_JSON,
    IMAGES_DIR,
    LATENT_CACHE_DIR,
    MANIFEST_JSONL,
    MASKS_DIR,
    METRICS_JSON,
    PIPELINE_DIR,
    PLAN_JSON,
    RECONSTRUCTION_JSON,
    RESULTS_JSON,
    SAMPLES_DIR,
    SPLIT_JSON,
    TRACKING_DIR,
    TRAINING_DATA_JSON,
    UNLABELED_DIR,
)
from segsynth.artifacts.schemas import is_evaluation_metrics
from segsynth.io.json_file import read_json_object

KINDS = ("run", "benchmark", "controlnet_run", "diffusion_run", "autoencoder_run", "seg_run", "synthetic_set",
         "evaluation", "dataset")
#: Folders never searched: data, weights, checkpoints and logs (large, and never a run of their own).
_SKIP = {IMAGES_DIR, MASKS_DIR, UNLABELED_DIR, PIPELINE_DIR, CHECKPOINTS_DIR, BEST_DIR, SAMPLES_DIR, AUTOENCODER_DIR,
         CONTROLNET_DIR, LATENT_CACHE_DIR, TRACKING_DIR, "nnUNet_raw", "__pycache__"}
MAX_DEPTH = 6


@dataclass(frozen=True)
class Found:
    """One recognised folder: its kind (one of :data:`KINDS`) and where it is."""

    kind: str
    path: Path


def _json_keys(path: Path) -> set[str]:
    """Top-level keys of a JSON object file; empty when it is missing, unreadable or not an object."""
    if not path.is_file():
        return set()
    try:
        return set(read_json_object(path))
    except ValueError:
        return set()


def _is_autoencoder_run(path: Path) -> bool:
    if any((path / name).is_file() for name in (IMAGE_SPLIT_JSON, RECONSTRUCTION_JSON)):
        return True
    if (path / AUTOENCODER_DIR / "config.json").is_file():
        return True
    # Written before the image split had a name of its own: the image ids, not segmentation ids.
    return {"train", "held_out"} <= _json_keys(path / SPLIT_JSON) and (path / CONFIG_YAML).is_file()


def detect(path: str | Path) -> str | None:
    """The kind of one folder (or ``metrics.json`` file), one of :data:`KINDS`, or None."""
    path = Path(path)
    if path.is_file():
        return "evaluation" if path.name == METRICS_JSON and is_evaluation_metrics(path) else None
    if not path.is_dir():
        return None
    if {"data", "choices"} <= _json_keys(path / PLAN_JSON):
        return "run"
    if (path / BENCHMARK_YAML).is_file() or {"settings", "paired"} <= _json_keys(path / RESULTS_JSON):
        return "benchmark"
    if (path / TRAINING_DATA_JSON).is_file():
        if (path / BACKBONE_JSON).is_file():
            return "controlnet_run"
        if any((path / name).exists() for name in (CONFIG_YAML, PIPELINE_DIR, SAMPLES_DIR)):
            return "diffusion_run"
    if _is_autoencoder_run(path):
        return "autoencoder_run"
    if "train_ids" in _json_keys(path / SPLIT_JSON) and ((path / CONFIG_YAML).is_file() or (path / BEST_DIR).is_dir()):
        return "seg_run"
    if (path / GENERATION_JSON).is_file() or ((path / MANIFEST_JSONL).is_file() and (path / DATASET_JSON).is_file()):
        return "synthetic_set"
    if (path / METRICS_JSON).is_file() and is_evaluation_metrics(path / METRICS_JSON):
        return "evaluation"
    if (path / DATASET_JSON).is_file():
        return "dataset"
    return None


def discover(paths: list[str | Path]) -> list[Found]:
    """Every recognised folder at or below ``paths`` (depth-first, sorted, each once).

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: nothing recognisable at or below a path.
    """
    found: list[Found] = []
    seen: set[Path] = set()
    for given in paths:
        given = Path(given)
        if not given.exists():
            raise FileNotFoundError(f"{given}: no such file or folder")
        before = len(found)
        _walk(given, 0, found, seen)
        if len(found) == before:
            raise ValueError(
                f"{given}: not a benchmark, segsynth run, diffusion, ControlNet, autoencoder or segmentation run, "
                f"synthetic set, evaluate-synth {METRICS_JSON} or dataset folder, and holds none"
            )
    return found


def _walk(path: Path, depth: int, found: list[Found], seen: set[Path]) -> None:
    resolved = path.resolve()
    if resolved in seen:
        return
    seen.add(resolved)
    kind = detect(path)
    if kind is not None:
        found.append(Found(kind, path if path.is_dir() else path.parent))
    if not path.is_dir() or depth >= MAX_DEPTH or kind == "dataset":
        return
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name not in _SKIP:
            _walk(child, depth + 1, found, seen)
