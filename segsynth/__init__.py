"""segsynth: turn a small labelled medical-imaging dataset plus unlabelled images into a better
segmentation model, with layout- and style-conditioned diffusion (STEDM) and the mixing
strategies of DiffBoost.

The public API, stage by stage (each stage reads and writes plain folders):

- data: :class:`DatasetSpec`, :class:`SegDataset`, :func:`check_dataset`, :func:`dataset_info`,
  :func:`build_builtin`, :func:`import_nnunet`, :func:`export_nnunet`;
- diffusion: :class:`ModelConfig`, :class:`SegSynthModel`, :class:`SegSynthPipeline`,
  :class:`DiffusionTrainConfig`, :func:`train_diffusion`;
- latent mode and backbones: :class:`AutoencoderTrainConfig`, :func:`train_autoencoder`,
  :class:`BackboneTrainConfig`, :func:`train_controlnet` (ControlNet on a frozen Stable Diffusion);
- synthesis: :func:`generate` (large images in blended tiles with ``size``);
- segmentation: :class:`SegTrainConfig`, :func:`train_seg`, :func:`evaluate_seg`;
- experiment: :class:`BenchmarkConfig`, :func:`run_benchmark`;
- evaluation and reporting: :func:`evaluate_synth`, :func:`build_report`.
"""

from segsynth.backbone import BackboneTrainConfig, train_controlnet
from segsynth.benchmark import BenchmarkConfig, run_benchmark
from segsynth.config import ConfigError, load_config
from segsynth.data import (
    DataReadError,
    DatasetFormatError,
    DatasetSpec,
    SampleRef,
    SegDataset,
    index_dataset,
    load_spec,
    paired_augmentation,
    read_image,
    save_spec,
    write_image,
)
from segsynth.data.builtin import BUILTIN_DATASETS, build_builtin
from segsynth.data.check import CheckReport, check_dataset
from segsynth.data.export import export_dataset
from segsynth.data.info import dataset_info
from segsynth.data.nnunet import export_nnunet, import_nnunet
from segsynth.diffusion import ObjectiveConfig, SegSynthPipeline, diffusion_loss, make_train_scheduler
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.diffusion.train import train_diffusion
from segsynth.evaluation import evaluate_synth
from segsynth.io import CheckpointManager
from segsynth.latent import AutoencoderTrainConfig, train_autoencoder
from segsynth.models import ModelConfig, SegSynthModel
from segsynth.report import build_report
from segsynth.seg import SegTrainConfig, evaluate_seg, train_seg
from segsynth.synth import generate, merge_shards

__version__ = "0.1.0"

__all__ = [
    "AutoencoderTrainConfig",
    "BUILTIN_DATASETS",
    "BackboneTrainConfig",
    "BenchmarkConfig",
    "CheckReport",
    "CheckpointManager",
    "ConfigError",
    "DataReadError",
    "DatasetFormatError",
    "DatasetSpec",
    "DiffusionTrainConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "SampleRef",
    "SegDataset",
    "SegSynthModel",
    "SegSynthPipeline",
    "SegTrainConfig",
    "__version__",
    "build_builtin",
    "build_report",
    "check_dataset",
    "dataset_info",
    "diffusion_loss",
    "evaluate_seg",
    "evaluate_synth",
    "export_dataset",
    "export_nnunet",
    "generate",
    "import_nnunet",
    "index_dataset",
    "load_config",
    "load_spec",
    "make_train_scheduler",
    "merge_shards",
    "paired_augmentation",
    "read_image",
    "run_benchmark",
    "save_spec",
    "train_autoencoder",
    "train_controlnet",
    "train_diffusion",
    "train_seg",
    "write_image",
]
