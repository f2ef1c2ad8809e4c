"""The file and folder names of every segsynth folder kind, declared once.

Names shared by several kinds (``config.yaml``, ``train_log.jsonl``) mean the same thing in each:
the resolved config and one JSON line per log interval. A name is never reused for two different
records (the autoencoder's image split is ``image_split.json``, the segmentation split is
``split.json``).
"""

from __future__ import annotations

import unicodedata

# --- every training run (diffusion, ControlNet, autoencoder, segmentation) ---------------------
CONFIG_YAML = "config.yaml"  # resolved config of the run
TRAIN_LOG = "train_log.jsonl"  # one JSON object per log interval (key "step" first-class)
CHECKPOINTS_DIR = "checkpoints"  # resumable state, one complete step_* folder per kept checkpoint
TRACKING_DIR = "tracking"  # train.log_with trackers (TensorBoard, CSV, W&B) write here
TRACKING_CSV = "metrics.csv"  # the csv tracker's file inside TRACKING_DIR

# --- dataset folder (real or synthetic) -----------------------------------------------------------
DATASET_JSON = "dataset.json"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
UNLABELED_DIR = "unlabeled"
FINGERPRINT_JSON = "fingerprint.json"  # `segsynth data info --out`: the default file name of the fingerprint

# --- nnU-Net raw dataset (export --format nnunet, data import-nnunet) -------------------------------
NNUNET_IMAGES_DIR = "imagesTr"
NNUNET_LABELS_DIR = "labelsTr"

# --- diffusion run (train-diffusion) ------------------------------------------------------------------
TRAINING_DATA_JSON = "training_data.json"  # data roots, train ids, style sampler, prompts, autoencoder
SAMPLES_DIR = "samples"  # preview grids
PIPELINE_DIR = "pipeline"  # released SegSynthPipeline
LATENT_CACHE_DIR = "latent_cache"  # data.cache_latents

# --- ControlNet run (train-diffusion --backbone) ----------------------------------------------------
BACKBONE_JSON = "backbone.json"  # frozen Stable Diffusion folder, variant, sha256
CONTROLNET_DIR = "controlnet"  # the trained ControlNetModel

# --- autoencoder run (train-autoencoder) ------------------------------------------------------------
AUTOENCODER_DIR = "autoencoder"  # the trained AutoencoderKL
IMAGE_SPLIT_JSON = "image_split.json"  # training and held-out image ids
RECONSTRUCTION_JSON = "reconstruction.json"  # held-out PSNR / SSIM vs bicubic
RECONSTRUCTIONS_PNG = "reconstructions.png"

# --- synthetic set (generate) ---------------------------------------------------------------------------
MANIFEST_JSONL = "manifest.jsonl"  # one ManifestRecord per sample
GENERATION_JSON = "generation.json"  # the generation config and its source run
REJECTED_JSONL = "rejected.jsonl"  # generate with a filter: one RejectedRecord per dropped draw

# --- segmentation run (train-seg) ---------------------------------------------------------------------
SPLIT_JSON = "split.json"  # data root, train/val/test ids and cases, synthetic sets used
BEST_DIR = "best"  # network of the best validation step
TRAINING_JSON = "training.json"  # steps taken, best step, whether validation was still rising
MODEL_JSON = "model.json"  # network description next to MODEL_WEIGHTS
MODEL_WEIGHTS = "model.safetensors"  # the network's weights (no pickle)

# --- predicted masks (segsynth predict) -----------------------------------------------------------
PREDICTION_JSON = "prediction.json"  # the network and settings the folder's masks were predicted with
PROBABILITIES_DIR = "probabilities"  # per-class probability maps (predict --probabilities)

# --- evaluation (evaluate-synth) ------------------------------------------------------------------------
METRICS_JSON = "metrics.json"  # evaluate-synth metrics; also the scores of each benchmark segmentation run
EVALUATION_DIR = "evaluation"
SEG_REAL_DIR = "seg_real"  # the real-data segmentation run evaluate-synth trains for fidelity

# --- benchmark (segsynth benchmark) -----------------------------------------------------------------
BENCHMARK_YAML = "benchmark.yaml"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SPLITS_JSON = "splits.json"  # the folds by case, made once and reused by every setting
REUSED_JSON = "reused.json"  # the runs copied from an earlier benchmark (benchmark --reuse)
FOLD_DIR = "fold_{fold}"  # one fold's generator, synthetic sets and segmentation runs (str.format)
DIFFUSION_DIR = "diffusion"  # inside a fold: its diffusion run
SYNTH_DIR = "synth"
VARIANTS_DIR = "synth_variants"
SEG_RUNS_DIR = "seg"  # inside a fold: SEG_RUNS_DIR/<setting>/SEED_DIR, one segmentation run each
SEED_DIR = "seed_{seed}"  # (str.format)
CALIBRATION_DIR = "calibration"  # a benchmark's budget calibration runs, one per row (calibration.enabled)
CALIBRATION_JSON = "calibration.json"  # where each row stopped rising and the budget chosen from it
PSEUDO_DIR = "pseudo"  # inside a fold: PSEUDO_DIR/SEED_DIR, the baseline's pseudo-labels (self-training)
PSEUDO_JSON = "pseudo_labels.json"  # a pseudo-labelled set: teacher, threshold, image ids and cases
PSEUDO_LABELS_DIR = "labels"  # a pseudo-labelled set's label images (255: not confident)
GENERATOR_POOL_JSON = "generator_pool.json"  # inside a fold: the pseudo pool split into generator and reference cases
GENERATOR_PSEUDO_DIR = "generator_pseudo"  # inside a fold: the generator half's pseudo-labelled set
GENERATOR_LAYOUTS_DIR = "generator_layouts"  # inside a fold: the layouts the generator trains on (<id>.png)
STYLE_REFS_DIR = "style_references"  # inside a fold: copies of the reference half, <case>/<file> (the style pool)

# --- whole-loop run (segsynth run) ------------------------------------------------------------------
PLAN_JSON = "plan.json"
BENCHMARK_DIR = "benchmark"
REPORT_HTML = "report.html"
FINAL_DIR = "final"  # the deliverables: the final network, its model card, the generator and set it used
NETWORK_DIR = "network"  # inside FINAL_DIR: model.json + model.safetensors, what `segsynth predict` loads
FINAL_SEG_DIR = "segmentation"  # inside FINAL_DIR: the train-seg run of the final network
#: inside FINAL_DIR, for a synthetic winner: real + synthetic as an nnU-Net v2 raw dataset (leak-free splits)
FINAL_NNUNET_DIR = "Dataset900_segsynth"
MODEL_CARD_MD = "model_card.md"  # inside FINAL_DIR: what the network is, how it was made, what it scored
MODEL_CARD_JSON = "model_card.json"  # the same as a record; written last, so it marks a finished final stage


# --- how names are compared ----------------------------------------------------------------------
def name_key(name: str) -> str:
    """The form in which file stems, sample ids and ``dataset.json`` keys are compared: Unicode NFC.

    One name can be spelled by two code-point sequences ("é" as one character, or "e" plus a
    combining accent); macOS writes file names decomposed (NFD) while editors type JSON keys
    composed (NFC). Compared raw, ``café_01.png`` would have "no case id" although both look the same.
    """
    return unicodedata.normalize("NFC", name)
