"""Samplers for generation, each derived from the training scheduler's config.

Deriving them with ``from_config`` keeps the betas, T, timestep spacing and prediction type the
model was trained with; only the solver differs. A name -> factory table (not type dispatch): adding
a sampler is its line here and its name in :data:`segsynth.config.SamplerName`, the type every config
and command checks names against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, SchedulerMixin, UniPCMultistepScheduler

from segsynth.config import SamplerName

SAMPLERS: dict[SamplerName, Callable[[Mapping[str, Any]], SchedulerMixin]] = {
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "dpmpp": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2),
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config),
}


def make_sampler(name: str, train_config: Mapping[str, Any]) -> SchedulerMixin:
    """A fresh sampler ``name`` (``ddim``, ``dpmpp`` or ``unipc``) on the training schedule ``train_config``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](train_config)
