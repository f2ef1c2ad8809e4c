"""segsynth: turn a small labelled medical-imaging dataset plus unlabelled images into a better
segmentation model, with layout- and style-conditioned diffusion (STEDM) and the mixing
strategies of DiffBoost.

The public API, stage by stage (each stage reads and writes plain folders):

- data: :class:`DatasetSpec`, :class:`SegDataset`, :func:`check_dataset`, :func:`dataset_info`,
  :func:`build_builtin`, :func:`import_nnunet`, :func:`export_nnunet`;
- diffusion: :class:`ModelConfig`, :class:`SegSynthModel`, :class:`SegSynthPipeline`,
  :class:`DiffusionTrainConfig`, :func:`train_diffusion`;
- latent mode and backbones: :class:`AutoencoderTrainConfig`, :func:`train_autoencoder`,
  :class:`ControlNetTrainConfig`, :func:`train_controlnet` (ControlNet on a frozen Stable Diffusion);
- synthesis: :class:`GenerationConfig`, :func:`generate` (large images in blended tiles with ``size``;
  samples a frozen real-data network does not read as their layouts dropped with a :class:`FilterConfig`);
- segmentation: :class:`SegTrainConfig`, :func:`train_seg`, :func:`evaluate_seg`, and :func:`predict`
  (a :class:`PredictConfig`) to segment new images with a trained network or a run's ``final/``;
- experiment: :class:`BenchmarkConfig`, :func:`run_benchmark` (``reuse`` an earlier benchmark's unchanged
  runs), :func:`compare_generators` (two generators on the same benchmark, paired by case);
- the whole loop on a folder: :func:`plan_run` (a :class:`RunPlan` from the fingerprint), :func:`run_all`;
- evaluation and reporting: :func:`evaluate_synth` (an :class:`EvaluationConfig`), :func:`build_report`;
- run folders: :func:`detect` and :func:`discover` say what a folder is; :func:`read_record` reads
  one of its JSON records through its schema (:class:`TrainingData`, :class:`ImageSplit`,
  :class:`ManifestRecord`, :class:`SegRunSplit`, :class:`EvaluationMetrics`,
  :class:`BenchmarkResults`, ... in :mod:`segsynth.artifacts.schemas`); the file names are in
  :mod:`segsynth.artifacts.names`;
- refusals before any work: :class:`DoesNotFitError` (a run's memory or disk estimate exceeds what
  there is, see :mod:`segsynth.fits`).

Names are imported on first use (module ``__getattr__``), so ``import segsynth`` and the command
line start without loading torch, diffusers or MONAI; ``from segsynth import X`` works as usual.
"""

from __future__ import annotations

from segsynth.lazy import lazy_exports
from segsynth.renamed import renamed_attributes

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "AutoencoderTrainConfig": "segsynth.autoencoder",
    "BUILTIN_DATASETS": "segsynth.data.builtin",
    "BenchmarkConfig": "segsynth.benchmark",
    "BenchmarkResults": "segsynth.artifacts.schemas",
    "CheckReport": "segsynth.data.check",
    "CheckpointManager": "segsynth.io",
    "ConfigError": "segsynth.config",
    "ControlNetTrainConfig": "segsynth.controlnet",
    "DataReadError": "segsynth.data",
    "DatasetFormatError": "segsynth.data",
    "DatasetSpec": "segsynth.data",
    "DiffusionTrainConfig": "segsynth.diffusion.config",
    "DoesNotFitError": "segsynth.fits",
    "EvaluationConfig": "segsynth.evaluation",
    "EvaluationMetrics": "segsynth.artifacts.schemas",
    "Found": "segsynth.artifacts.detect",
    "FilterConfig": "segsynth.synth.config",
    "GenerationConfig": "segsynth.synth.config",
    "ImageSplit": "segsynth.artifacts.schemas",
    "ManifestRecord": "segsynth.artifacts.schemas",
    "ModelConfig": "segsynth.models",
    "ObjectiveConfig": "segsynth.diffusion",
    "OutputPathError": "segsynth.io.guard",
    "PredictConfig": "segsynth.seg.predict",
    "RunPlan": "segsynth.run",
    "SampleRef": "segsynth.data",
    "SegDataset": "segsynth.data",
    "SegRunSplit": "segsynth.artifacts.schemas",
    "SegSynthModel": "segsynth.models",
    "SegSynthPipeline": "segsynth.diffusion",
    "SegTrainConfig": "segsynth.seg",
    "TrainingData": "segsynth.artifacts.schemas",
    "build_builtin": "segsynth.data.builtin",
    "build_report": "segsynth.report",
    "check_dataset": "segsynth.data.check",
    "compare_generators": "segsynth.benchmark",
    "dataset_info": "segsynth.data.info",
    "detect": "segsynth.artifacts.detect",
    "diffusion_loss": "segsynth.diffusion",
    "discover": "segsynth.artifacts.detect",
    "evaluate_seg": "segsynth.seg",
    "evaluate_synth": "segsynth.evaluation",
    "export_dataset": "segsynth.data.export",
    "export_nnunet": "segsynth.data.nnunet",
    "generate": "segsynth.synth.generate",
    "import_nnunet": "segsynth.data.nnunet",
    "index_dataset": "segsynth.data",
    "load_config": "segsynth.config",
    "load_spec": "segsynth.data",
    "make_train_scheduler": "segsynth.diffusion",
    "merge_shards": "segsynth.synth.generate",
    "paired_augmentation": "segsynth.data",
    "plan_run": "segsynth.run",
    "predict": "segsynth.seg.predict",
    "read_image": "segsynth.data",
    "read_metrics": "segsynth.artifacts.schemas",
    "read_record": "segsynth.artifacts.schemas",
    "run_all": "segsynth.run",
    "run_benchmark": "segsynth.benchmark",
    "save_spec": "segsynth.data",
    "train_autoencoder": "segsynth.autoencoder",
    "train_controlnet": "segsynth.controlnet",
    "train_diffusion": "segsynth.diffusion.train",
    "train_seg": "segsynth.seg",
    "write_image": "segsynth.data",
}

__all__ = sorted([*_EXPORTS, "__version__"])

#: Old public name -> its new name; the old one still works, with a DeprecationWarning, for one release.
_RENAMED = {"BackboneTrainConfig": "ControlNetTrainConfig"}

_lazy_getattr, __dir__ = lazy_exports(__name__, _EXPORTS)
__getattr__ = renamed_attributes(__name__, _RENAMED, fallback=_lazy_getattr)
