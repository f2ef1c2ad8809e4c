"""The image sets a generator is measured on, loaded once as arrays.

- :func:`load_synthetic`: a synthetic set's images and masks (the conditioning layouts) with their
  ``manifest.jsonl`` records (layout source, style references).
- :func:`real_tiles`: real images cut into non-overlapping tiles of the synthetic image size. The
  generator draws crops at the real pixel scale (never resized), so comparing whole real images of
  another size with its samples would measure the size, not the realism.
- :func:`load_style_references`: the pool images a synthetic sample's style references came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segsynth.artifacts.names import MANIFEST_JSONL
from segsynth.artifacts.schemas import ManifestRecord
from segsynth.data.format import DatasetSpec, load_spec
from segsynth.data.loader import SegDataset, index_dataset
from segsynth.artifacts.manifest import read_manifest
from segsynth.data.styles import open_style_pool
from segsynth.renamed import renamed_attributes

REAL_SPLITS = ("labeled", "unlabeled", "all")


@dataclass
class SyntheticArrays:
    """A synthetic set loaded in memory as arrays, with its manifest records.

    Attributes:
        root: its folder.
        spec: its ``dataset.json``.
        ids: sample ids.
        case_ids: each sample's case (the real sample its layout came from, or itself).
        images: float32 ``(N, C, H, W)`` in [0, 1].
        masks: int64 ``(N, H, W)``: the layouts the images were generated from.
        records: each sample's manifest record (None when the set has no manifest line for it).
    """

    root: Path
    spec: DatasetSpec
    ids: list[str]
    case_ids: list[str]
    images: np.ndarray
    masks: np.ndarray
    records: list[ManifestRecord | None]

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])


def load_synthetic(root: str | Path, max_samples: int | None = None, seed: int = 0) -> SyntheticArrays:
    """Load a synthetic set (our dataset format + ``manifest.jsonl``).

    Args:
        root: the set's folder.
        max_samples: keep a seeded random subset of this many samples (in id order).
        seed: seed of that subset.

    Raises:
        ValueError: no samples, or samples of different sizes.
    """
    root = Path(root)
    dataset = SegDataset(root)
    if len(dataset) == 0:
        raise ValueError(f"{root}: the synthetic set holds no image/mask pairs")
    keep = np.arange(len(dataset))
    if max_samples is not None and len(dataset) > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(len(dataset), max_samples, replace=False))
    by_id = {r.id: r for r in read_manifest(root / MANIFEST_JSONL)}
    images, masks = [], []
    for index in keep:
        image, mask = dataset.load_arrays(int(index))
        images.append(image)
        masks.append(mask)
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise ValueError(f"{root}: synthetic images differ in shape ({sorted(shapes)[:3]}); expected one size")
    refs = [dataset.refs[int(i)] for i in keep]
    return SyntheticArrays(
        root=root,
        spec=dataset.spec,
        ids=[r.id for r in refs],
        case_ids=[r.case_id for r in refs],
        images=np.stack(images).astype(np.float32),
        masks=np.stack(masks).astype(np.int64),
        records=[by_id.get(r.id) for r in refs],
    )


@dataclass
class RealTiles:
    """Real image tiles of one size.

    Attributes:
        images: float32 ``(N, C, h, w)`` in [0, 1].
        case_ids: the case of each tile's image.
        source_ids: the sample id of each tile's image.
        split: which images were tiled (``labeled``, ``unlabeled`` or ``all``).
        num_images: how many real images the tiles come from.
    """

    images: np.ndarray
    case_ids: list[str]
    source_ids: list[str]
    split: str
    num_images: int


def _tile_origins(height: int, width: int, size: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping tiles covering an image (centred grid)."""
    th, tw = size
    rows, cols = max(1, height // th), max(1, width // tw)
    top0, left0 = max(0, (height - rows * th) // 2), max(0, (width - cols * tw) // 2)
    return [(top0 + r * th, left0 + c * tw) for r in range(rows) for c in range(cols)]


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reflect-pad ``(C, H, W)`` up to at least ``size`` (as the layout and style samplers do)."""
    pad_h, pad_w = max(0, size[0] - image.shape[1]), max(0, size[1] - image.shape[2])
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)), "symmetric")
    return image


def real_tiles(
    root: str | Path, size: tuple[int, int], split: str = "all", max_tiles: int | None = 1000, seed: int = 0
) -> RealTiles:
    """Cut the real images of ``root`` into ``size`` tiles (images smaller than a tile are
    reflect-padded to one tile) and keep a seeded random subset of at most ``max_tiles``.

    Args:
        root: real dataset folder.
        size: ``(h, w)`` of a tile (the synthetic image size).
        split: ``labeled``, ``unlabeled`` or ``all`` images.
        max_tiles: cap on the number of tiles (None: all).
        seed: seed of the subset.

    Raises:
        ValueError: an unknown split or no image.
    """
    if split not in REAL_SPLITS:
        raise ValueError(f"real split must be one of {REAL_SPLITS}, got {split!r}")
    root = Path(root)
    spec = load_spec(root)
    datasets = []
    for part in ("labeled", "unlabeled"):
        if split in (part, "all"):
            refs = index_dataset(root, part, spec)
            if refs:
                datasets.append(SegDataset(root, part, refs=refs, spec=spec))
    entries: list[tuple[int, int, tuple[int, int]]] = []
    shapes: dict[tuple[int, int], tuple[int, int]] = {}
    for d, dataset in enumerate(datasets):
        for index in range(len(dataset)):
            image = _fit(dataset.load_arrays(index)[0], size)
            shapes[(d, index)] = image.shape[1:]
            entries += [(d, index, origin) for origin in _tile_origins(*image.shape[1:], size)]
    if not entries:
        raise ValueError(f"{root}: no {split} images to compare with")
    order = np.arange(len(entries))
    if max_tiles is not None and len(entries) > max_tiles:
        order = np.sort(np.random.default_rng(seed).choice(len(entries), max_tiles, replace=False))
    tiles, cases, sources = [], [], []
    for position in order:
        d, index, (top, left) = entries[int(position)]
        dataset = datasets[d]
        image = _fit(dataset.load_arrays(index)[0], size)
        tiles.append(image[:, top : top + size[0], left : left + size[1]])
        cases.append(dataset.refs[index].case_id)
        sources.append(dataset.refs[index].id)
    return RealTiles(
        images=np.stack(tiles).astype(np.float32),
        case_ids=cases,
        source_ids=sources,
        split=split,
        num_images=sum(len(d) for d in datasets),
    )


def load_style_references(synthetic: SyntheticArrays, max_side: int = 512) -> dict[tuple[str, str], np.ndarray]:
    """Every pool image named as a style reference in the set's manifest.

    Returns:
        ``{(style_source, reference id): image (C, H, W) float32}``; images larger than
        ``max_side`` are centre-cropped to it (the descriptors are spatial averages).

    Raises:
        FileNotFoundError / ValueError: a pool folder named in the manifest is gone or unreadable,
            or a reference id is not in it.
    """
    wanted: dict[str, set[str]] = {}
    for record in synthetic.records:
        if record is not None and record.style_source is not None and record.style_ids:
            wanted.setdefault(record.style_source, set()).update(record.style_ids)
    images: dict[tuple[str, str], np.ndarray] = {}
    for source, ids in sorted(wanted.items()):
        pool = open_style_pool(source, synthetic.spec.channels)
        index_of = {ref.id: i for i, ref in enumerate(pool.refs)}
        missing = sorted(ids - set(index_of))
        if missing:
            raise ValueError(f"{source}: style references {missing[:3]} named in the manifest are not in the pool")
        for ref_id in sorted(ids):
            image = pool.load_arrays(index_of[ref_id])[0]
            height, width = image.shape[1:]
            top, left = max(0, (height - max_side) // 2), max(0, (width - max_side) // 2)
            images[(source, ref_id)] = np.ascontiguousarray(image[:, top : top + max_side, left : left + max_side])
    return images


__getattr__ = renamed_attributes(__name__, {"SyntheticSet": "SyntheticArrays"})
