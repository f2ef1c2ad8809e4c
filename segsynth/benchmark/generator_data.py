"""The fold generator's pseudo-labelled data (``generator.pseudo_labels``) and its style references.

In the low-label regime a fold's generator trains on one or two labelled cases, so its style
encoder meets one or two styles. The unlabelled images the fold may use (its pseudo pool, the
same as self-training's: :func:`~segsynth.benchmark.selftrain.pseudo_pool`, never a validation,
test or left-out labelled case) are split by case into two disjoint halves:

- the generator half: the fold's baseline network (first seed, trained on the fold's labelled
  training cases and selected on its validation cases) labels them, and the generator trains on
  them beside its labelled images;
- the reference half: the only style references the fold's synthetic sets are drawn with, so
  every reference stays zero-shot (the generator never trained on it) and none is of a test case.

Fold folder::

    FOLD/generator_pool.json                 the split: generator and reference ids, their cases, the seed
    FOLD/generator_pseudo/                   the teacher's pseudo-labels of the generator half
    FOLD/generator_layouts/<id>.png          the layouts the generator trains on
    FOLD/style_references/<case>/<file>      copies of the reference half (the synthetic sets' style pool)

Each is written atomically and found again on a re-run, so a killed benchmark continues.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from segsynth.artifacts.names import (
    GENERATOR_LAYOUTS_DIR,
    GENERATOR_POOL_JSON,
    GENERATOR_PSEUDO_DIR,
    PSEUDO_JSON,
    PSEUDO_LABELS_DIR,
    STYLE_REFS_DIR,
    UNLABELED_DIR,
)
from segsynth.benchmark.config import BenchmarkConfig
from segsynth.benchmark.selftrain import pseudo_pool
from segsynth.config import ConfigError
from segsynth.data.io import read_image, write_image
from segsynth.data.loader import SampleRef, index_dataset
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.samples import PseudoPairs
from segsynth.io.atomic import atomic_directory, atomic_write_json
from segsynth.seg.pseudo import IGNORE_STORED, pseudo_label
from segsynth.seg.splits import Split


@dataclass(frozen=True)
class GeneratorData:
    """What a fold's generator trains on beside its labelled images, and where its sets draw styles."""

    pairs: PseudoPairs
    references: Path


def split_by_case(cases: Mapping[str, str], fraction: float, seed: Sequence[int], source: Path
                  ) -> tuple[list[str], list[str]]:
    """``(generator ids, reference ids)``: the images ``cases`` (id -> case) split by case, a
    ``fraction`` of the cases (at least one, leaving at least one) drawn as references with ``seed``.

    By case, so no case lends one image to the generator and another as a reference.

    Raises:
        ValueError: fewer than two cases, naming ``source``.
    """
    names = sorted(set(cases.values()))
    if len(names) < 2:
        raise ValueError(f"{source}: generator.pseudo_labels splits the fold's unlabelled images by case into "
                         f"generator and reference cases, but the fold may use {len(names)} case(s) "
                         f"({', '.join(names) or 'none'}); add unlabelled images of other cases or turn it off")
    count = min(max(round(fraction * len(names)), 1), len(names) - 1)
    drawn = {names[i] for i in np.random.default_rng(list(seed)).permutation(len(names))[:count]}
    return sorted(i for i, c in cases.items() if c not in drawn), sorted(i for i, c in cases.items() if c in drawn)


def pool_split(data: Path, unlabeled: Iterable[SampleRef], labelled_cases: Iterable[str], split: Split, fold: int,
               cfg: BenchmarkConfig) -> dict[str, Any]:
    """Fold ``fold``'s pseudo pool split into generator and reference images (the record saved).

    The draw is seeded by ``(fold_seed, fold)``: the same benchmark config splits the same way.

    Raises:
        ValueError: fewer than two cases in the pool, or a volume slice in it (the layouts are 2D
            files, so the generator half must be 2D images).
    """
    unlabeled = list(unlabeled)
    pool, excluded = pseudo_pool(unlabeled, split, labelled_cases)
    members = set(pool)
    refs = [r for r in unlabeled if r.id in members]
    volume = next((r for r in refs if r.slice_index is not None), None)
    if volume is not None:
        raise ValueError(f"{volume.image_path}: generator.pseudo_labels trains on 2D unlabelled images, this is a "
                         "volume; turn generator.pseudo_labels off for this data")
    cases = {r.id: r.case_id for r in refs}
    seed = (cfg.fold_seed, fold)
    generator, references = split_by_case(cases, cfg.generator.reference_fraction, seed,
                                          data / UNLABELED_DIR)
    return {"fold": fold, "seed": list(seed), "reference_fraction": cfg.generator.reference_fraction,
            "generator": generator, "references": references, "cases": cases, "excluded": excluded}


def check_generator_data(data: Path, diffusion: DiffusionTrainConfig, labelled: Sequence[SampleRef],
                         unlabeled: Sequence[SampleRef], splits: Sequence[Split], cfg: BenchmarkConfig) -> None:
    """Refuse up front what :func:`generator_data` would refuse in a fold (nothing without the option).

    Raises:
        ConfigError: ``data.include_unlabeled`` would train the generator on every unlabelled image,
            references and test cases included.
        ValueError: a fold whose pool cannot be split (see :func:`pool_split`).
    """
    if not cfg.generator.pseudo_labels:
        return
    if diffusion.data.include_unlabeled:
        raise ConfigError("generator.pseudo_labels keeps the style references out of the generator's training, "
                          "but the diffusion recipe's data.include_unlabeled trains on every unlabelled image; "
                          "turn one of them off")
    labelled_cases = {r.case_id for r in labelled}
    for fold, split in enumerate(splits):
        pool_split(data, unlabeled, labelled_cases, split, fold, cfg)


def fold_pool_split(data: Path, folder: Path, split: Split, fold: int, cfg: BenchmarkConfig) -> dict[str, Any]:
    """The split of :func:`pool_split`, saved in ``folder`` once and read back afterwards."""
    path = folder / GENERATOR_POOL_JSON
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    labelled_cases = {r.case_id for r in index_dataset(data)}
    record = pool_split(data, index_dataset(data, "unlabeled"), labelled_cases, split, fold, cfg)
    atomic_write_json(path, record)
    return record


def fill_unconfident(stored: np.ndarray) -> np.ndarray | None:
    """The layout of a pseudo-label map: each unconfident pixel takes the label of the nearest
    confident one; None when no pixel is confident (the image is left out).

    The diffusion loss ignores no pixel (the image is real and whole), so the layout must give
    every pixel a class. Background there would tell the generator that the uncertain pixels (object
    boundaries, faint objects) are background, teaching it to paint object texture where a layout
    says background, so synthetic masks would under-cover their objects. The nearest confident
    label splits an uncertain band between the confident regions on its sides (at a boundary, near
    its middle, as the teacher's argmax would), yet never makes a region of a class the teacher was
    nowhere confident about.
    """
    unsure = stored == IGNORE_STORED
    if unsure.all():
        return None
    if not unsure.any():
        return stored
    nearest = ndimage.distance_transform_edt(unsure, return_distances=False, return_indices=True)
    return stored[tuple(nearest)]


def generator_layouts(pseudo: Path, out: Path) -> Path:
    """``out/<id>.png``: the filled layout (:func:`fill_unconfident`) of every image of the
    pseudo-labelled set ``pseudo`` with a confident pixel (made once, atomically)."""
    if out.is_dir():
        return out
    record = json.loads((pseudo / PSEUDO_JSON).read_text(encoding="utf-8"))
    with atomic_directory(out) as tmp:
        for sample_id in record["ids"]:
            layout = fill_unconfident(read_image(pseudo / PSEUDO_LABELS_DIR / f"{sample_id}.png"))
            if layout is not None:
                write_image(tmp / f"{sample_id}.png", layout.astype(np.uint8))
    return out


def style_references(data: Path, ids: Sequence[str], out: Path) -> Path:
    """``out/<case>/<file>``: copies of the unlabelled images ``ids`` of ``data``, a plain style
    folder whose sub-folders keep the cases (``segsynth generate --styles``), made once atomically."""
    if out.is_dir():
        return out
    wanted = set(ids)
    with atomic_directory(out) as tmp:
        for ref in index_dataset(data, "unlabeled"):
            target = tmp / ref.case_id / ref.image_path.name
            if ref.id in wanted and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ref.image_path, target)
    return out


def generator_data(data: Path, folder: Path, split: Split, fold: int, cfg: BenchmarkConfig,
                   teacher: Path) -> GeneratorData:
    """Fold ``fold``'s pseudo-labelled pairs (labelled by the run ``teacher``) and style pool, in ``folder``."""
    record = fold_pool_split(data, folder, split, fold, cfg)
    pseudo = folder / GENERATOR_PSEUDO_DIR
    if not (pseudo / PSEUDO_JSON).is_file():
        pseudo_label(teacher, data, record["generator"], pseudo, cfg.generator.threshold,
                     extra={"fold": fold, "use": "generator training (generator.pseudo_labels)"})
    layouts = generator_layouts(pseudo, folder / GENERATOR_LAYOUTS_DIR)
    by_id = {r.id: r for r in index_dataset(data, "unlabeled")}
    pairs = tuple(SampleRef(i, by_id[i].case_id, by_id[i].image_path, layouts / f"{i}.png")
                  for i in record["generator"] if (layouts / f"{i}.png").is_file())
    if not pairs:
        raise ValueError(f"{pseudo / PSEUDO_JSON}: the teacher {teacher} is confident (threshold "
                         f"{cfg.generator.threshold}) on no pixel of any generator image; lower generator.threshold")
    references = style_references(data, record["references"], folder / STYLE_REFS_DIR)
    return GeneratorData(PseudoPairs(pairs, layouts, teacher), references)
