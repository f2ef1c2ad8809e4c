"""Measuring a generator: layout fidelity, zero-shot style retrieval, FID/KID on offline features,
and diversity, gathered by :func:`evaluate_synth` into one ``metrics.json`` (read back with
:func:`segsynth.artifacts.schemas.read_metrics`).

Every measure runs without a downloaded network (segsynth fetches nothing at run time), so the
usual Inception / LPIPS features are replaced by descriptors built here, and every number is
written next to the name of the features it was computed on."""

from segsynth.evaluation.config import EvaluationConfig
from segsynth.evaluation.distribution import distribution_distance, fid_kid, split_by_case
from segsynth.evaluation.diversity import diversity, layout_groups
from segsynth.evaluation.evaluate_synth import default_seg_config, evaluate_synth
from segsynth.evaluation.features import (
    RandomConvNet,
    SegEncoderFeatures,
    StainStatistics,
    StainTextureFeatures,
    gram_features,
)
from segsynth.evaluation.layout_fidelity import layout_fidelity, network_predictor, score_layouts
from segsynth.evaluation.sets import load_style_references, load_synthetic, real_tiles
from segsynth.evaluation.style_retrieval import StyleDescriptor, retrieval_accuracy, style_retrieval

__all__ = [
    "EvaluationConfig",
    "RandomConvNet",
    "SegEncoderFeatures",
    "StainStatistics",
    "StainTextureFeatures",
    "StyleDescriptor",
    "default_seg_config",
    "distribution_distance",
    "diversity",
    "evaluate_synth",
    "fid_kid",
    "gram_features",
    "layout_fidelity",
    "layout_groups",
    "load_style_references",
    "load_synthetic",
    "network_predictor",
    "real_tiles",
    "retrieval_accuracy",
    "score_layouts",
    "split_by_case",
    "style_retrieval",
]
