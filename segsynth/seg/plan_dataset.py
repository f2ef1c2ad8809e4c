"""The training examples of one stretch of a mixing plan, loaded and augmented as a torch dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.transforms import RandSpatialCropd, SpatialPadd
from torch.utils.data import Dataset

from segsynth.data.augment import PlainCompose, paired_augmentation
from segsynth.data.loader import SegDataset, sample_seed
from segsynth.seg.mixing import VARIANTS_HINT, PlanItem, SampleKey


class PlanDataset(Dataset):
    """The examples of one stretch of the example stream, loaded and augmented.

    Augmentation is drawn once per example (seeded by ``(seed, position)``) and applied to the
    image, the mask and, for paired plans, the partner image and mask, so a real image and its
    synthetic variant see the same geometry.

    Args:
        sources: real training set first, then the synthetic sets (all without augmentation).
        plan: :data:`PlanItem` examples.
        positions: the stream position of each example (its augmentation seed), e.g. the rows of
            one process of a multi-process run.
        paired: whether to emit ``partner_image``/``partner_mask``/``has_partner``.
        augment: ``"none"``, ``"light"`` or ``"heavy"`` (see :func:`paired_augmentation`).
        patch_size: random square crop (padding smaller images) applied before augmentation.
        seed: the augmentation draw.
    """

    def __init__(
        self,
        sources: list[SegDataset],
        plan: list[PlanItem],
        positions: Sequence[int],
        paired: bool,
        augment: str,
        patch_size: int | None,
        seed: int,
    ) -> None:
        self.sources = sources
        if len(positions) != len(plan):
            raise ValueError(f"{len(plan)} examples but {len(positions)} stream positions")
        self.plan = plan
        self.positions = list(positions)
        self.paired = paired
        self.seed = seed
        image_keys = ["image", "partner_image"] if paired else ["image"]
        label_keys = ["mask", "partner_mask"] if paired else ["mask"]
        steps: list = []
        if patch_size is not None:
            roi = (patch_size, patch_size)
            steps += [
                SpatialPadd(image_keys + label_keys, roi),
                RandSpatialCropd(image_keys + label_keys, roi, random_size=False),
            ]
        steps.append(paired_augmentation(augment, image_keys, label_keys))
        self.transform = PlainCompose(steps)

    def __len__(self) -> int:
        return len(self.plan)

    def _arrays(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.sources[key[0]].load_arrays(key[1])
        return torch.from_numpy(image.copy()), torch.from_numpy(mask[None].copy())

    def __getitem__(self, position: int) -> dict[str, Any]:
        primary, partner = self.plan[position]
        sample: dict[str, Any] = {}
        sample["image"], sample["mask"] = self._arrays(primary)
        if self.paired:
            if partner is None:
                sample["partner_image"], sample["partner_mask"] = sample["image"].clone(), sample["mask"].clone()
            else:
                sample["partner_image"], sample["partner_mask"] = self._arrays(partner)
                ref = self.sources[partner[0]].refs[partner[1]]
                if sample["partner_image"].shape != sample["image"].shape:
                    raise ValueError(
                        f"{ref.image_path}: shape {tuple(sample['partner_image'].shape)} differs from its real "
                        f"layout image {tuple(sample['image'].shape)}; merge needs equal sizes"
                    )
                if not torch.equal(sample["partner_mask"], sample["mask"]):
                    raise ValueError(
                        f"{ref.mask_path}: differs from the mask of its real image; merge pairs a real image only "
                        f"with variants of its own unchanged mask (`{VARIANTS_HINT}`)"
                    )
        self.transform.set_random_state(seed=sample_seed(self.seed, 0, self.positions[position]))
        sample = self.transform(sample)
        out: dict[str, Any] = {"source": primary[0]}
        for key, value in sample.items():
            tensor = torch.as_tensor(value)
            if key.endswith("image"):
                out[key] = tensor.float().clamp(0.0, 1.0)
            else:
                out[key] = tensor.round().long()[0]
        if self.paired:
            out["has_partner"] = partner is not None
        return out
