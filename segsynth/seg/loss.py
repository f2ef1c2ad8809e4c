"""Dice + cross-entropy that can ignore pixels: pseudo-labels keep only their confident pixels.

MONAI's ``DiceCELoss`` has no ignore label, so pixels labelled :data:`IGNORE_LABEL` are masked out
of both terms here: cross-entropy averages over the other pixels only, and the Dice term sees
zero probability and zero reference at ignored pixels, so they add nothing to any intersection or
sum. A batch without ignored pixels goes through ``DiceCELoss`` itself, so real-only training is
computed exactly as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from monai.networks.utils import one_hot

#: Label of a pixel that must not train (an unconfident pseudo-label).
IGNORE_LABEL = -1


class IgnoringDiceCELoss(DiceCELoss):
    """``DiceCELoss(to_onehot_y=True, softmax=True)`` whose target may hold :data:`IGNORE_LABEL`."""

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        # the same Dice as the parent's, on probabilities and one-hot references masked beforehand
        self.masked_dice = DiceLoss(include_background=True, to_onehot_y=False, softmax=False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (MONAI's name)
        """``input`` logits ``(B, K, H, W)``; ``target`` labels ``(B, 1, H, W)``."""
        valid = target != IGNORE_LABEL
        if bool(valid.all()):
            return super().forward(input, target)
        return self.masked(input, target)

    def masked(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        """The loss over the pixels whose label is not :data:`IGNORE_LABEL` (0 when there are none)."""
        valid = (target != IGNORE_LABEL).to(input.dtype)
        labels = torch.where(target == IGNORE_LABEL, torch.zeros_like(target), target)
        ce = F.cross_entropy(input, labels[:, 0].long(), reduction="none")
        ce = (ce * valid[:, 0]).sum() / valid.sum().clamp(min=1.0)
        probs = torch.softmax(input, dim=1) * valid
        reference = one_hot(labels, input.shape[1]) * valid
        return self.lambda_dice * self.masked_dice(probs, reference) + self.lambda_ce * ce
