"""The JSON records of segsynth's run folders, typed once, for every writer and reader.

Two bases, chosen by who writes the file:

- :class:`~segsynth.config.StrictModel` for records a user may hand in or edit and that feed
  training directly (the manifest of a synthetic set, the segmentation split): an unknown key is
  a misspelling, refused with its name.
- :class:`Record` for the records a stage writes about itself (``training_data.json``,
  ``reconstruction.json``, ``metrics.json``, ...): the keys readers rely on are typed and checked,
  other keys are kept, so a folder written by an older or newer segsynth still opens.

:func:`read_record` reads any of them with errors that name the file and every bad key. Only
pydantic and the dataset format are imported here: detecting and reporting a folder never loads
torch, diffusers or MONAI.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segsynth.artifacts.names import IMAGE_SPLIT_JSON, SPLIT_JSON
from segsynth.config import StrictModel, format_validation_error
from segsynth.artifacts.dataset_format import DatasetSpec
from segsynth.io.json_file import read_json_object

R = TypeVar("R", bound=BaseModel)


class Record(BaseModel):
    """Base of the records a stage writes about its own run: known keys typed, unknown keys kept."""

    model_config = ConfigDict(extra="allow")


def validate_record(model: type[R], data: Any, source: str, error: type[Exception] = ValueError) -> R:
    """``data`` as ``model``, or ``error`` with one ``source: key: problem`` line per bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(format_validation_error(exc, source)) from None


def read_record(path: Path, model: type[R], error: type[Exception] = ValueError) -> R:
    """The JSON object in ``path`` validated as ``model``.

    Raises:
        error: unreadable JSON, a top level that is not an object, or a record that does not fit
            ``model`` (each bad key named with the file).
    """
    return validate_record(model, read_json_object(path, error), str(path), error)


# --- diffusion and ControlNet runs ---------------------------------------------------------------


class TrainedDataset(Record):
    """One dataset of a multi-dataset run (``datasets`` of ``training_data.json``)."""

    data_root: str
    train_ids: list[str]
    prompt: str | None = None


class AutoencoderReference(Record):
    """The frozen autoencoder a latent diffusion run was trained in."""

    path: str
    sha256: str


class PseudoPairsRecord(Record):
    """The pseudo-labelled image/layout pairs a diffusion run trained on beside its labelled samples."""

    ids: list[str] = Field(description="the unlabelled images trained on, with their pseudo-label layouts")
    layouts: str = Field(description="the folder of their layouts (<id>.png)")
    teacher: str = Field(description="the segmentation run whose predictions the layouts are")


class TrainingData(Record):
    """``training_data.json`` of a diffusion or ControlNet run: what it learnt from.

    A bare exported run may omit the data (``generate`` then needs ``layout_data``), so every key is
    optional; those present are typed.
    """

    data_root: str | None = None
    train_ids: list[str] | None = None
    unlabeled_ids: list[str] | None = Field(None, description="diffusion runs with data.include_unlabeled: the "
                                            "unlabelled images trained on without a layout")
    datasets: list[TrainedDataset] | None = Field(None, description="every dataset, when the run learnt from several")
    prompts: list[str] | None = Field(None, description="text-conditioned and ControlNet runs: one prompt per dataset")
    style_sampler: str | None = Field(None, description="diffusion runs: how style references were drawn")
    num_refs: int | None = Field(None, ge=1, le=64, description="diffusion runs: style references per sample")
    autoencoder: AutoencoderReference | None = Field(None, description="latent diffusion runs")
    num_classes: int | None = Field(None, ge=1, description="ControlNet runs: classes of the layout hint")
    channels: int | None = Field(None, ge=1, le=4, description="ControlNet runs: image channels of the data")
    hint: list[str] | None = Field(None, description="ControlNet runs: the hint's channels, in order")
    data_sha256: str | None = Field(None, description="content hash of the training files (segsynth.io.hashing.data_hash)")
    pseudo_labelled: PseudoPairsRecord | None = Field(None, description="diffusion runs given pseudo-labelled pairs")


class BackboneRecord(Record):
    """``backbone.json`` of a ControlNet run: the frozen Stable Diffusion folder it was trained on."""

    path: str
    sha256: str
    variant: str | None = None


# --- autoencoder runs ----------------------------------------------------------------------------


class ImageSplit(Record):
    """``image_split.json`` of an autoencoder run: the image ids it trained on and held out, over
    several datasets (older runs wrote the same record as ``split.json``)."""

    data: list[str] = Field(description="the dataset folders")
    train: list[str]
    held_out: list[str]
    data_sha256: str | None = Field(None, description="content hash of the images (segsynth.io.hashing.data_hash)")


def read_image_split(run: Path) -> ImageSplit | None:
    """The image split of the autoencoder run ``run`` (None when it has none yet).

    Runs written before the split had a name of its own hold it as ``split.json``, the name of the
    segmentation split, so that file is read only when ``image_split.json`` is absent.
    """
    for name in (IMAGE_SPLIT_JSON, SPLIT_JSON):
        if (run / name).is_file():
            return read_record(run / name, ImageSplit)
    return None


class ReconstructionScores(Record):
    psnr: float
    ssim: float


class Reconstruction(Record):
    """``reconstruction.json``: held-out reconstruction quality of the autoencoder vs bicubic."""

    autoencoder: ReconstructionScores
    bicubic_baseline: ReconstructionScores
    tiles: int
    tile_size: int
    factor: int
    evaluated_on: str
    scaling_factor: float
    steps: int


# --- synthetic sets ------------------------------------------------------------------------------


class FilterOutcome(Record):
    """What the layout filter of a finished set did (``generation.json`` key ``filtered``)."""

    judge: str = Field(description="the judge network's folder")
    min_dice: float
    requested: int = Field(ge=1, description="samples asked for (n)")
    attempts: int = Field(ge=0, description="draws rendered and judged")
    kept: int = Field(ge=0)
    rejected: int = Field(ge=0, description="attempts - kept; each listed in rejected.jsonl")
    kept_fraction: float | None = Field(description="kept / attempts")
    reached_cap: bool = Field(description="the draws ran out (max_attempts_factor) before n samples passed")


class RejectedRecord(StrictModel):
    """A draw the layout filter dropped (one line of ``rejected.jsonl``): enough to redraw it."""

    draw: int = Field(ge=0)
    seed: int = Field(ge=0)
    layout_id: str | None
    style_ids: list[str]
    judge_dice: float

    def to_line(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True) + "\n"


class GenerationRecord(Record):
    """``generation.json``: the recipe of a synthetic set (resuming refuses another one)."""

    config: dict[str, Any] = Field(description="the GenerationRecipe (segsynth.synth.config) of the call that made the set")
    dataset: DatasetSpec = Field(description="the set's dataset.json as first written")
    filtered: FilterOutcome | None = Field(None, description="sets made with a filter: what it kept, once complete")


class Guidance(StrictModel):
    """Classifier-free guidance scales of one sample (STEDM: style 1.5, rescale 0.7)."""

    style: float
    layout: float
    rescale: float


#: Record keys of the optional conditions (edge, text) and the filter, left out of a manifest line when unset.
OPTIONAL_MANIFEST_KEYS = ("edge_source", "edge_guidance", "text_guidance", "draw", "judge_dice")


class ManifestRecord(StrictModel):
    """How one synthetic sample was made (one line of ``manifest.jsonl``); paths are relative to the
    synthetic set's folder. Read through :func:`segsynth.artifacts.manifest.read_manifest`, the one
    parser of the file."""

    id: str = Field(min_length=1)
    image: str
    mask: str
    index: int = Field(ge=0)
    seed: int = Field(ge=0, description="seeds both the layout/style draw (numpy) and the noise (torch)")
    layout_source: Literal["augmented", "variants", "composed"]
    layout_id: str | None = Field(description="the real sample the layout came from; null for composed layouts")
    style_source: str | None = Field(description="the style pool folder; null without style references")
    style_sampler: str | None
    style_ids: list[str]
    prompt: str
    guidance: Guidance
    sampler: str
    steps: int = Field(ge=1)
    model_hash: str
    edge_source: Literal["layout", "image"] | None = Field(
        None, description="edge models: edges of the layout alone, or also of the real image (layout_id)"
    )
    edge_guidance: float | None = Field(None, description="edge models: guidance scale of the edge condition")
    text_guidance: float | None = Field(None, description="text models: guidance scale of the prompt")
    draw: int | None = Field(None, ge=0, description="filtered sets: the draw (attempt) whose seed made the sample")
    judge_dice: float | None = Field(None, description="filtered sets: mean foreground Dice of the judge on the image")

    @field_validator("image", "mask")
    @classmethod
    def _inside_the_set(cls, path: str) -> str:
        # A manifest may come from anywhere: its paths must not lead out of the set's folder.
        parts = PurePosixPath(path).parts
        if not parts or path.startswith(("/", "\\")) or "\\" in path or ":" in parts[0] or ".." in parts:
            raise ValueError(f"{path!r} must be a relative path inside the synthetic set (no '..', not absolute)")
        return path

    def to_line(self) -> str:
        """The record as one key-sorted JSON line (same record, same bytes)."""
        data = self.model_dump(mode="json")
        # Keys of optional conditions are written only when used, so other lines keep their bytes.
        for key in OPTIONAL_MANIFEST_KEYS:
            if data[key] is None:
                del data[key]
        return json.dumps(data, sort_keys=True) + "\n"


# --- segmentation runs ---------------------------------------------------------------------------


class Split(StrictModel):
    """One train/validation/test partition of a labelled dataset (ids and their cases)."""

    train_ids: list[str]
    val_ids: list[str]
    test_ids: list[str] = Field(default_factory=list)
    train_cases: list[str]
    val_cases: list[str]
    test_cases: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _disjoint(self) -> Split:
        if not self.train_ids:
            raise ValueError("the training split is empty")
        if not self.val_ids:
            raise ValueError("the validation split is empty")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = set(getattr(self, f"{a}_cases")) & set(getattr(self, f"{b}_cases"))
            if shared:
                raise ValueError(f"cases {sorted(shared)[:5]} are in both the {a} and the {b} split")
        return self


class SyntheticUse(StrictModel):
    """One synthetic set mixed into a segmentation run, as recorded in its ``split.json``."""

    root: str
    used: int = Field(ge=0)
    excluded_held_out_layouts: list[str]
    manifest: bool


class PseudoLabelUse(StrictModel):
    """One pseudo-labelled set (self-training) mixed into a segmentation run, as in its ``split.json``."""

    root: str
    used: int = Field(ge=0)
    teacher: str
    threshold: float


class SegRunSplit(Split):
    """``split.json`` of a segmentation run: its data folder, split and the synthetic and
    pseudo-labelled sets it used."""

    data_root: str
    synthetic: list[SyntheticUse] = Field(default_factory=list)
    data_sha256: str | None = Field(None, description="content hash of the data and synthetic sets (segsynth.io.hashing.data_hash)")
    pseudo_labelled: list[PseudoLabelUse] = Field(default_factory=list)


class TrainingSummary(Record):
    """``training.json`` of a finished segmentation run: the steps taken and how validation went."""

    steps: int = Field(ge=0)
    planned_steps: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    val_every: int = Field(ge=1)
    examples_seen: int = Field(ge=0)
    stopped_early: bool
    still_rising: bool
    best_step: int
    best_val_dice: float


# --- evaluate-synth ------------------------------------------------------------------------------

#: Marks a ``metrics.json`` as written by ``evaluate_synth`` (a benchmark's per-run metrics.json is not).
EVALUATION_KIND = "segsynth.evaluate_synth"
EVALUATION_FORMAT_VERSION = 1


class EvaluatedNetwork(Record):
    path: str
    trained_here: bool


class EvaluationMetrics(Record):
    """``metrics.json`` of ``evaluate-synth``: every measure of a synthetic set against the real data.

    A measure that could not be computed is ``{"skipped": reason}``, so the sections stay dicts.
    """

    kind: Literal["segsynth.evaluate_synth"]
    format_version: Literal[1]
    synthetic: str
    real: str
    seg_run: EvaluatedNetwork
    image_size: list[int]
    num_synthetic: int = Field(ge=0)
    seed: int
    layout_fidelity: dict[str, Any]
    style_retrieval: dict[str, Any]
    distribution: dict[str, Any]
    diversity: dict[str, Any]
    real_tiles: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)  # the EvaluationConfig (absent in older files)


def is_evaluation_metrics(path: Path) -> bool:
    """Whether ``path`` is a ``metrics.json`` marked as written by ``evaluate-synth`` (valid or not)."""
    try:
        return read_json_object(path).get("kind") == EVALUATION_KIND
    except ValueError:
        return False


def read_metrics(path: str | Path) -> EvaluationMetrics | None:
    """The ``evaluate-synth`` metrics in ``path``; None when the file is missing or is another
    ``metrics.json`` (a benchmark run's scores).

    Raises:
        ValueError: a file marked as evaluate-synth metrics that does not fit the schema (naming it).
    """
    path = Path(path)
    if not path.is_file() or not is_evaluation_metrics(path):
        return None
    return read_record(path, EvaluationMetrics)


# --- benchmarks ----------------------------------------------------------------------------------


class BenchmarkResults(Record):
    """``results.json`` of a benchmark: per-setting rows, case-paired differences vs the baseline,
    and the compact per-run scores (see :func:`segsynth.benchmark.summary.summarise`)."""

    unit: str
    baseline: str
    reference: str | None = None
    order: list[str]
    settings: dict[str, dict[str, Any]]
    paired: dict[str, dict[str, Any]]
    runs: list[dict[str, Any]]
    budget: dict[str, Any] = Field(default_factory=dict)
    data: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    #: ``{"from": earlier benchmark, "runs": [...]}`` when runs were copied in (``reused.json``)
    reused: dict[str, Any] | None = None
