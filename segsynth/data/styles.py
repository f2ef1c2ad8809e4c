"""Style sources: reference images from an unlabelled pool the diffusion model never trained on.

Zero-shot style transfer (STEDM) conditions generation on images of a new site, scanner or stain.
The pool is either the ``unlabeled/`` split of a dataset folder (our format) or a plain folder of
images. Per sample an anchor image is drawn from the pool with the sample's own generator, and a
style sampler (:mod:`segsynth.data.style_sampling`) picks the N references around it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segsynth.artifacts.names import DATASET_JSON, UNLABELED_DIR
from segsynth.data.format import DatasetSpec, load_spec
from segsynth.data.io import IMAGE_EXTENSIONS, DataReadError, image_shape, is_nifti, name_key, require_regular_file, split_ext
from segsynth.data.loader import SampleRef, SegDataset, index_dataset, is_inside
from segsynth.data.style_sampling import make_style_sampler


class ImageFolderPool(SegDataset):
    """A plain folder of images (no ``dataset.json``) as an unlabelled :class:`SegDataset`.

    Case ids group references for the ``nearby`` / ``multi_patch`` samplers: an image in a
    sub-folder belongs to the case named after its top-level sub-folder; an image directly in
    ``root`` to the case named by its stem up to the last ``_`` (``slideA_003.png`` -> ``slideA``).
    A NIfTI volume gives one reference per slice (last axis), like in a dataset folder.

    Args:
        root: the folder, searched recursively (hidden files and folders skipped).
        channels: channels every image must have (the model's image channels).
    """

    def __init__(self, root: str | Path, channels: int) -> None:
        root = Path(root)
        refs: list[SampleRef] = []
        seen: dict[str, Path] = {}
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts):
                continue
            require_regular_file(path)  # a FIFO or device is refused by name, never opened
            if not path.is_file():
                continue
            stem, ext = split_ext(path)
            if ext not in IMAGE_EXTENSIONS:
                continue
            if not is_inside(path, root):
                raise DataReadError(path, f"symlink to {path.resolve()} leaves the style folder {root}; copy the file in")
            case = name_key(relative.parts[0] if len(relative.parts) > 1 else stem.rsplit("_", 1)[0] or stem)
            sample_id = name_key((relative.parent / stem).as_posix())
            if sample_id in seen:
                raise DataReadError(path, f"shares the stem {stem!r} with {seen[sample_id].name}; keep one of them")
            seen[sample_id] = path
            shape = image_shape(path) if is_nifti(path) else ()
            if len(shape) >= 3:  # a volume: one reference per slice, all of the volume's case
                refs += [SampleRef(f"{sample_id}_z{z:03d}", case, path, None, z) for z in range(shape[2])]
            else:
                refs.append(SampleRef(sample_id, case, path, None))
        if not refs:
            raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) to use as style references")
        spec = DatasetSpec(
            name=root.name or "styles",
            modality="unknown",
            prompt="unknown",
            channels=channels,
            labels={"background": 0},
            label_provenance="human",
            licence="unknown",
            cases={},
            unlabeled_cases={ref.id: ref.case_id for ref in refs},
        )
        super().__init__(root, split="unlabeled", refs=refs, spec=spec)

    def verify(self) -> None:
        """Read every image once (:meth:`~segsynth.data.dataset.SegDataset.read_all`); a plain folder
        has no ``dataset.json``, so ``segsynth data check``'s folder validation does not apply."""
        self.read_all()


def open_style_pool(path: str | Path, channels: int) -> SegDataset:
    """The unlabelled images at ``path`` as a dataset the style samplers accept.

    ``path`` may be a dataset folder (its ``unlabeled/`` split is used), the ``unlabeled/`` folder of
    one, or a plain folder of images.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the pool is empty or its images do not have ``channels`` channels.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: style pool folder not found")
    root = path
    if path.name == UNLABELED_DIR and (path.parent / DATASET_JSON).is_file():
        root = path.parent
    if not (root / DATASET_JSON).is_file():
        return ImageFolderPool(path, channels)
    spec = load_spec(root)
    if spec.channels != channels:
        raise ValueError(f"{root / DATASET_JSON}: declares {spec.channels} channels, the model draws {channels}")
    refs = index_dataset(root, "unlabeled", spec)
    if not refs:
        raise ValueError(f"{root / UNLABELED_DIR}: no unlabelled images to use as style references")
    return SegDataset(root, split="unlabeled", refs=refs)


class StyleSource:
    """Draws the N style references of one synthetic sample from a pool.

    Args:
        pool: unlabelled dataset (see :func:`open_style_pool`).
        sampler: style sampler name (``augmented``, ``nearby`` or ``multi_patch``).
        num_refs: references per sample (N the model was trained with).
        size: side of each reference; larger images are randomly cropped, smaller reflect-padded.
    """

    def __init__(self, pool: SegDataset, sampler: str, num_refs: int, size: int) -> None:
        if num_refs < 1:
            raise ValueError(f"num_refs must be >= 1, got {num_refs}")
        if len(pool) == 0:
            raise ValueError(f"{pool.root}: empty style pool")
        self.pool = pool
        self.sampler_name = sampler
        self.sampler = make_style_sampler(sampler, patch_size=size, anchor_is_target=False)
        self.num_refs = num_refs
        self.size = size

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        """An anchor drawn from the pool, then its references.

        Returns:
            ``(images, ids)``: float32 ``(N, C, size, size)`` in [0, 1] and each reference's id.
        """
        anchor = int(rng.integers(len(self.pool)))
        return self.sampler(self.pool, anchor, self.num_refs, rng)
