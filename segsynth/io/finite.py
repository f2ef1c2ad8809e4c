"""Stop at the first non-finite number instead of saving it.

A loss that turns ``nan``/``inf`` (a too-high learning rate, an fp16 overflow, a corrupt sample)
makes every weight NaN one optimiser step later; a run that carries on writes NaN checkpoints over
good ones and releases a model that draws black images, and exits 0. The trainers call
:func:`check_losses` each step and :func:`check_weights` before each save; generation calls
:func:`check_images` before a sample is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the callers; the CLI imports this module only for the error class
    import torch


class NonFiniteError(RuntimeError):
    """A loss, weight or generated image is ``nan``/``inf``; the message names the stage, the step
    (or sample) and the term, and says that nothing of it was saved."""


def check_losses(terms: Mapping[str, float | torch.Tensor], step: int, stage: str) -> None:
    """Raise :class:`NonFiniteError` naming the first non-finite term of ``step``."""
    for name, value in terms.items():
        number = float(value.detach().float().mean()) if hasattr(value, "detach") else float(value)
        if not math.isfinite(number):
            raise NonFiniteError(
                f"{stage}: step {step}: loss term {name!r} is {number}; stopped before saving the weights "
                "(the last checkpoint is kept; lower the learning rate or check the data, then --resume)"
            )


def check_weights(named: Iterable[tuple[str, torch.Tensor]], step: int, stage: str) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter holding ``nan``/``inf`` at ``step``."""
    for name, tensor in named:
        if not bool(tensor.detach().isfinite().all()):
            raise NonFiniteError(
                f"{stage}: step {step}: weight {name!r} is not finite; stopped before saving it "
                "(the last checkpoint is kept; lower the learning rate or check the data, then --resume)"
            )


def check_images(images: torch.Tensor, first: int, stage: str) -> None:
    """Raise :class:`NonFiniteError` when a generated block (samples ``first``...) has non-finite pixels."""
    finite = images.detach().reshape(len(images), -1).isfinite().all(dim=1)
    if not bool(finite.all()):
        bad = first + int((~finite).nonzero()[0, 0])
        raise NonFiniteError(
            f"{stage}: sample {bad}: the model produced non-finite pixels; it and the rest of its batch "
            "were not written (check the guidance scales and the model's weights)"
        )
