"""What is this folder? Recognise segsynth's run folders by the files each stage leaves behind.

==================  =========================================================================
kind                recognised by
==================  =========================================================================
``benchmark``       ``benchmark.yaml``, or a ``results.json`` with ``settings`` and ``paired``
``controlnet_run``  ``backbone.json`` next to ``training_data.json`` (``train-diffusion --backbone``)
``diffusion_run``   ``training_data.json`` next to ``config.yaml``, ``pipeline/`` or ``samples/``
``autoencoder_run`` ``reconstruction.json`` or ``autoencoder/``, or a ``split.json`` with ``held_out``
``seg_run``         a ``split.json`` with ``train_ids``, next to ``config.yaml`` or ``best/``
``synthetic_set``   ``generation.json``, or ``manifest.jsonl`` next to ``dataset.json``
``evaluation``      a ``metrics.json`` written by ``evaluate-synth`` (the folder or the file)
``dataset``         ``dataset.json`` (a real dataset folder)
==================  =========================================================================

:func:`discover` also looks inside each given folder (a benchmark holds diffusion runs, synthetic
sets and segmentation runs; a demo folder holds a benchmark and datasets), without entering the
folders that only hold data, weights or checkpoints.

Two stages write a ``split.json``: a segmentation run (``train_ids`` / ``val_ids`` / ``test_ids``
of one dataset) and an autoencoder run (``train`` / ``held_out`` image ids over several datasets).
The file name alone would take an autoencoder run for a segmentation run, whose report part then
reads a split that is not there; so the autoencoder's own outputs are checked first, and a
``split.json`` counts for a segmentation run only when it holds segmentation ids. Likewise a
ControlNet run writes ``training_data.json`` like a diffusion run but has no ``pipeline/`` of its
own (its ``backbone.json`` names the frozen Stable Diffusion folder), so it is a kind of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from segsynth.evaluation.evaluate_synth import METRICS_JSON, read_metrics

KINDS = ("benchmark", "controlnet_run", "diffusion_run", "autoencoder_run", "seg_run", "synthetic_set", "evaluation",
         "dataset")
#: Folders never searched: data, weights and checkpoints (large, and never a run of their own).
_SKIP = {"images", "masks", "unlabeled", "pipeline", "checkpoints", "best", "samples", "nnUNet_raw", "__pycache__",
         "autoencoder", "controlnet", "latent_cache"}
MAX_DEPTH = 6


@dataclass(frozen=True)
class Found:
    kind: str
    path: Path


def _json_keys(path: Path) -> set[str]:
    """Top-level keys of a JSON object file; empty when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def _is_benchmark_results(path: Path) -> bool:
    return {"settings", "paired"} <= _json_keys(path)


def detect(path: str | Path) -> str | None:
    """The kind of one folder (or ``metrics.json`` file), or None."""
    path = Path(path)
    if path.is_file():
        return "evaluation" if path.name == METRICS_JSON and read_metrics(path) is not None else None
    if not path.is_dir():
        return None
    if (path / "benchmark.yaml").is_file() or ((path / "results.json").is_file() and _is_benchmark_results(path / "results.json")):
        return "benchmark"
    if (path / "training_data.json").is_file() and (path / "backbone.json").is_file():
        return "controlnet_run"
    if (path / "training_data.json").is_file() and any((path / p).exists() for p in ("config.yaml", "pipeline", "samples")):
        return "diffusion_run"
    split = _json_keys(path / "split.json")
    if (path / "reconstruction.json").is_file() or (path / "autoencoder" / "config.json").is_file() or (
            {"train", "held_out"} <= split and (path / "config.yaml").is_file()):
        return "autoencoder_run"
    if "train_ids" in split and ((path / "config.yaml").is_file() or (path / "best").is_dir()):
        return "seg_run"
    if (path / "generation.json").is_file() or ((path / "manifest.jsonl").is_file() and (path / "dataset.json").is_file()):
        return "synthetic_set"
    if (path / METRICS_JSON).is_file() and read_metrics(path / METRICS_JSON) is not None:
        return "evaluation"
    if (path / "dataset.json").is_file():
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
                f"{given}: not a benchmark, diffusion, ControlNet, autoencoder or segmentation run, synthetic "
                "set, evaluate-synth metrics.json or dataset folder, and holds none"
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
