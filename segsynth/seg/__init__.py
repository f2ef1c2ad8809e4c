"""Downstream segmentation: MONAI networks trained on real data mixed with synthetic sets,
case-level splits, and per-case metrics. Works on any dataset folder, synthetic or real; it does
not depend on the diffusion stages."""

from segsynth.renamed import renamed_attributes
from segsynth.seg.config import MixConfig, NetworkConfig, SegTrainConfig, parse_mix
from segsynth.seg.evaluate import evaluate_seg
from segsynth.seg.loss import IGNORE_LABEL, IgnoringDiceCELoss
from segsynth.seg.metrics import EMPTY_MASK_CONVENTION, METRIC_NAMES, MetricAccumulator, image_metrics
from segsynth.seg.mixing import (
    ConcatMixing,
    MergeMixing,
    RatioMixing,
    make_mixing,
    merge_cell_size,
    merge_grid,
    random_merge,
)
from segsynth.seg.networks import build_network, load_network, predict_logits, save_network
from segsynth.seg.pseudo import load_pseudo_set, pseudo_label
from segsynth.seg.splits import (
    Split,
    hold_out_cases,
    kfold_cases,
    load_splits,
    low_label_cases,
    make_folds,
    make_split,
    save_splits,
)
from segsynth.seg.synthetic_sets import SyntheticTrainingSet, load_synthetic_set
from segsynth.seg.train import train_seg
from segsynth.seg.training_data import check_no_leakage, resolve_split

__all__ = [
    "EMPTY_MASK_CONVENTION",
    "IGNORE_LABEL",
    "METRIC_NAMES",
    "ConcatMixing",
    "IgnoringDiceCELoss",
    "MergeMixing",
    "MetricAccumulator",
    "MixConfig",
    "NetworkConfig",
    "RatioMixing",
    "SegTrainConfig",
    "Split",
    "SyntheticTrainingSet",
    "build_network",
    "check_no_leakage",
    "evaluate_seg",
    "hold_out_cases",
    "image_metrics",
    "kfold_cases",
    "load_network",
    "load_pseudo_set",
    "load_splits",
    "load_synthetic_set",
    "low_label_cases",
    "make_folds",
    "make_mixing",
    "make_split",
    "merge_cell_size",
    "merge_grid",
    "predict_logits",
    "pseudo_label",
    "random_merge",
    "resolve_split",
    "save_network",
    "save_splits",
    "train_seg",
]


__getattr__ = renamed_attributes(__name__, {"SyntheticSet": "SyntheticTrainingSet"})
