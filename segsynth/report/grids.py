"""Sample grids of a synthetic set, ``layout | style references | sample`` per row.

Rows are picked two ways so a reader can judge both conditionings: per class (the samples whose
layout holds the most of that class: does the structure appear where the mask says?) and per
style source (the case of the pool images the references came from: does the sample take the
look of its references?). The references are read back from the pool named in ``manifest.jsonl``;
if it is gone, the grid shows layout | sample only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segsynth.artifacts.names import UNLABELED_DIR
from segsynth.diffusion.sample_grid import MIN_TILE, sample_grid
from segsynth.evaluation.sets import SyntheticArrays
from segsynth.data.styles import open_style_pool


@dataclass
class Grid:
    title: str
    pixels: np.ndarray  # (H, W, 3) uint8
    caption: str


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop / reflect pad a reference ``(C, H, W)`` to the sample size."""
    pad_h, pad_w = max(0, size[0] - image.shape[1]), max(0, size[1] - image.shape[2])
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)), "symmetric")
    top, left = (image.shape[1] - size[0]) // 2, (image.shape[2] - size[1]) // 2
    return image[:, top : top + size[0], left : left + size[1]]


class _References:
    """Loads style reference images (and their pool case) on demand."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.pools: dict[str, tuple[object, dict[str, int]] | None] = {}
        self.problem: str | None = None

    def _pool(self, source: str):
        if source not in self.pools:
            try:
                pool = open_style_pool(source, self.channels)
                self.pools[source] = (pool, {ref.id: i for i, ref in enumerate(pool.refs)})
            except (OSError, ValueError) as exc:
                self.pools[source] = None
                self.problem = f"style references not shown: {exc}"
        return self.pools[source]

    def case(self, source: str, ref_id: str) -> str | None:
        entry = self._pool(source)
        if entry is None or ref_id not in entry[1]:
            return None
        return entry[0].refs[entry[1][ref_id]].case_id

    def images(self, source: str, ref_ids: list[str], size: tuple[int, int]) -> np.ndarray | None:
        entry = self._pool(source)
        if entry is None or any(r not in entry[1] for r in ref_ids):
            return None
        pool, index = entry
        return np.stack([_fit(pool.load_arrays(index[r])[0], size) for r in ref_ids])


def _enlarge(tensor: torch.Tensor, factor: int) -> torch.Tensor:
    return tensor.repeat_interleave(factor, -1).repeat_interleave(factor, -2) if factor > 1 else tensor


def _grid(synthetic: SyntheticArrays, rows: list[int], refs: _References) -> np.ndarray:
    size = synthetic.image_size
    styles = []
    for i in rows:
        record = synthetic.records[i]
        loaded = None
        if record is not None and record.style_source and record.style_ids:
            loaded = refs.images(record.style_source, list(record.style_ids), size)
        styles.append(loaded)
    counts = {s.shape[0] for s in styles if s is not None}
    use_styles = len(counts) == 1 and all(s is not None for s in styles)
    factor = max(1, -(-MIN_TILE // size[1]))
    layouts = _enlarge(torch.from_numpy(synthetic.masks[rows]), factor)
    samples = _enlarge(torch.from_numpy(synthetic.images[rows]), factor)
    style_tensor = _enlarge(torch.from_numpy(np.stack(styles)), factor) if use_styles else None
    return sample_grid(layouts, style_tensor, samples)


def _distinct_layouts(masks: np.ndarray, ranked: list[int], rows: int) -> list[int]:
    """The first ``rows`` of ``ranked`` with distinct masks (``variants`` sets repeat each mask),
    topped up with repeats when there are fewer distinct ones."""
    chosen, seen = [], set()
    for i in ranked:
        key = masks[i].tobytes()
        if key not in seen:
            seen.add(key)
            chosen.append(i)
        if len(chosen) == rows:
            return chosen
    return chosen + [i for i in ranked if i not in chosen][: rows - len(chosen)]


def synthetic_grids(synthetic: SyntheticArrays, rows_per_grid: int = 4, max_style_groups: int = 6) -> tuple[list[Grid], str | None]:
    """Grids per foreground class and per style source.

    Returns:
        ``(grids, note)``; ``note`` says why references are missing, if they are.
    """
    refs = _References(synthetic.spec.channels)
    grids: list[Grid] = []
    names = synthetic.spec.class_names
    columns = "layout | style references (centre crops of the pool images named in the manifest) | sample"
    for value, name in enumerate(names):
        if value == 0:
            continue
        fraction = (synthetic.masks == value).mean(axis=(1, 2))
        ranked = [int(i) for i in np.argsort(-fraction, kind="stable") if fraction[i] > 0]
        chosen = _distinct_layouts(synthetic.masks, ranked, rows_per_grid)
        if chosen:
            grids.append(Grid(f"class '{name}'", _grid(synthetic, chosen, refs),
                              f"{columns}; samples whose layout holds the most '{name}'"))
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(synthetic.records):
        if record is None or not record.style_source or not record.style_ids:
            continue
        case = refs.case(record.style_source, record.style_ids[0]) or "unknown case"
        pool = Path(record.style_source)
        pool_name = f"{pool.parent.name}/{pool.name}" if pool.name == UNLABELED_DIR else pool.name
        groups.setdefault(f"{pool_name}: {case}", []).append(i)
    for label in sorted(groups)[:max_style_groups]:
        chosen = groups[label][:rows_per_grid]
        grids.append(Grid(f"style source {label}", _grid(synthetic, chosen, refs),
                          f"{columns}; samples whose references come from {label} ({len(groups[label])} samples in all)"))
    if not groups:
        note = "this set was generated without style references (the model's learned null style)"
    elif len(groups) > max_style_groups:
        note = f"{len(groups) - max_style_groups} more style sources not shown"
    else:
        note = None
    if refs.problem:
        note = refs.problem if note is None else f"{note}; {refs.problem}"
    return grids, note
