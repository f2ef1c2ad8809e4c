"""Diffusion maths and sampling: the training objective, the samplers and the generation pipeline."""

from segsynth.diffusion.objective import (
    CondDrop,
    ObjectiveConfig,
    diffusion_loss,
    make_train_scheduler,
    min_snr_weights,
)
from segsynth.diffusion.pipeline import SegSynthPipeline, SegSynthPipelineOutput
from segsynth.diffusion.schedulers import SAMPLERS, make_sampler

__all__ = [
    "SAMPLERS",
    "CondDrop",
    "ObjectiveConfig",
    "SegSynthPipeline",
    "SegSynthPipelineOutput",
    "diffusion_loss",
    "make_sampler",
    "make_train_scheduler",
    "min_snr_weights",
]
