"""Configuration of ``segsynth benchmark``: folds, seeds, settings and each stage's recipe."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, field_validator

from segsynth.config import SamplerName, StrictModel
from segsynth.seg.config import parse_mix
from segsynth.synth.config import FilterSettings, GenerationConfig


class GenerationSection(StrictModel):
    """How each fold's synthetic sets are drawn (see ``segsynth generate``).

    ``ratio`` and ``concat`` settings train on a set of ``n`` samples from ``layouts``; ``merge``
    settings on a second set of ``per_mask`` same-mask variants of every labelled mask the fold's
    generator saw (DiffBoost), the only kind of set merging accepts.

    ``filter`` (off by default: a screening run found no downstream gain) drops synthetic samples that
    the fold's baseline network (first seed: trained on the fold's labelled training cases, selected
    on its validation cases) does not segment as their layout, see ``segsynth generate``'s filter.
    """

    n: int = Field(default=200, ge=1)
    layouts: Literal["augmented", "composed"] = "augmented"
    per_mask: int = Field(default=10, ge=1)
    # The sampling defaults are generate's own (segsynth.synth.config.GenerationConfig).
    sampler: SamplerName = GenerationConfig.model_fields["sampler"].default
    steps: int = Field(default=GenerationConfig.model_fields["steps"].default, ge=1)
    style_guidance: float = Field(default=GenerationConfig.model_fields["style_guidance"].default, ge=0.0)
    guidance_rescale: float = Field(default=GenerationConfig.model_fields["guidance_rescale"].default, ge=0.0, le=1.0)
    batch_size: int = Field(default=16, ge=1)
    filter: FilterSettings | None = None
    mixed_precision: Literal["auto", "no", "bf16"] = GenerationConfig.model_fields["mixed_precision"].default


class SelfTrainingSection(StrictModel):
    """The ``self_training`` control: the fold's baseline network (same seed) labels the unlabelled
    pool (never an image of a validation or test case); pixels whose softmax maximum is below
    ``threshold`` are ignored by the loss; the segmenter trains on the real and pseudo-labelled
    images mixed by ``mix`` (a ``--mix`` value: ``concat`` or ``ratio:F``) at the baseline's budget."""

    threshold: float = Field(default=0.9, gt=0.0, le=1.0)
    mix: str = "ratio:0.5"

    @field_validator("mix")
    @classmethod
    def _ratio_or_concat(cls, mix: str) -> str:
        if parse_mix(mix)["mix.strategy"] not in ("ratio", "concat"):
            raise ValueError(f"self_training.mix must be concat or ratio:F, got {mix!r}")
        return mix


class GeneratorDataSection(StrictModel):
    """What each fold's generator trains on besides its labelled cases (``generator``).

    In the low-label regime a fold's generator sees one or two labelled cases, so its style
    encoder meets one or two styles. With ``pseudo_labels`` (off by default: a screening run found no
    downstream gain) the fold's pseudo pool (the unlabelled images self-training may label:
    never a validation, test or left-out labelled case) is split by case: ``reference_fraction``
    of its cases become the zero-shot style references the synthetic sets are drawn with, and the
    fold's baseline network (first seed) labels the images of the other cases, which the
    generator trains on beside the labelled ones (see :mod:`segsynth.benchmark.generator_data`).
    Keeping the two halves apart keeps the references zero-shot: no reference was a training image.

    Attributes:
        pseudo_labels: train the fold generator on pseudo-labelled pool images too.
        reference_fraction: share of the pool's cases kept as style references (both halves get
            at least one case, so it lies strictly between 0 and 1).
        threshold: smallest softmax maximum for a confident pixel, as ``self_training.threshold``.
    """

    pseudo_labels: bool = False
    reference_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)
    threshold: float = Field(default=SelfTrainingSection.model_fields["threshold"].default, gt=0.0, le=1.0)


class CalibrationSection(StrictModel):
    """Plan the shared step budget on the data (:mod:`segsynth.benchmark.calibrate`): with
    ``enabled``, every row trains once on fold ``fold`` (first seed) with early stopping after
    ``patience`` validations without gain, up to ``max_factor`` x the planned budget, and every run
    then gets the latest of those stops (never less than the planned budget)."""

    enabled: bool = False
    fold: int = Field(default=0, ge=0)
    patience: int = Field(default=4, ge=1)
    max_factor: int = Field(default=4, ge=1)


#: Control rows a benchmark can add beside the synthetic settings: the baseline with one free
#: factor changed (heavy augmentation; self-training on the unlabelled pool), and the all-labelled
#: reference. The first two are the free controls synthetic data must beat.
CONTROLS = ("heavy_augmentation", "self_training", "all_labelled")
FREE_CONTROLS = ("heavy_augmentation", "self_training")
#: Suffix of a synthetic setting trained with heavy augmentation (``ratio:0.5+heavy-aug``): the
#: one factor it changes against ``baseline+heavy-aug`` is the synthetic data.
HEAVY_AUG = "+heavy-aug"


def split_setting(setting: str) -> tuple[str, bool]:
    """``"ratio:0.5+heavy-aug"`` -> ``("ratio:0.5", True)``: the ``--mix`` value and whether heavy."""
    if setting.endswith(HEAVY_AUG):
        return setting[: -len(HEAVY_AUG)], True
    return setting, False


class BenchmarkConfig(StrictModel):
    """Baseline (real only) vs each synthetic setting, on the same case folds and seeds.

    Every segmentation run of a benchmark trains the same number of optimiser steps with the same
    batch size, schedule, augmentation and validation: ``segmentation_overrides["train.steps"]``
    when given, otherwise the budget planned from the data (:mod:`segsynth.benchmark.sizing`).

    Attributes:
        folds: k of the k-fold split by case.
        fold_seed: seed of the fold assignment (saved to ``splits.json``).
        run_folds: run only these folds (e.g. ``[0]`` for a quick look); default all.
        seeds: segmentation training seeds; every setting uses the same ones (paired design).
        settings: ``--mix`` values compared with the baseline (``ratio:0.8``, ``merge:0.6``, ``concat``),
            each optionally with ``+heavy-aug`` (the same with heavy augmentation).
        controls: rows beside them: ``heavy_augmentation`` (the baseline with heavy
            augmentation: the one factor changed is augmentation), ``self_training`` (the
            baseline plus its own confident pseudo-labels of the unlabelled pool, see
            ``self_training``) and ``all_labelled`` (every labelled training case of the fold, the
            upper reference for "gap closed"). The better free control of each fold, chosen on
            its validation cases, is what the table's headline column compares with.
        self_training: the ``self_training`` control's recipe.
        generator: what the fold generators train on besides the labelled cases (pseudo-labels).
        calibration: measure the shared step budget on the data first (off: the planned budget).
        low_label: keep a fraction (float) or a number (int) of each fold's training cases labelled.
        val_fraction: training cases held out for model selection.
        diffusion_config: YAML for the per-fold diffusion model (default: built-in defaults).
        diffusion_overrides: dotted overrides applied on top (``{"train.steps": 500}``).
        segmentation_config: YAML for every segmentation run.
        segmentation_overrides: dotted overrides for every segmentation run.
        generation: per-fold synthetic set recipe.
    """

    folds: int = Field(default=3, ge=2)
    fold_seed: int = 0
    run_folds: list[int] | None = None
    seeds: list[NonNegativeInt] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    settings: list[str] = Field(default_factory=lambda: ["ratio:0.8", "merge:0.6", "concat"], min_length=1)
    controls: list[Literal["heavy_augmentation", "self_training", "all_labelled"]] = Field(
        default_factory=lambda: list(CONTROLS))
    self_training: SelfTrainingSection = Field(default_factory=SelfTrainingSection)
    generator: GeneratorDataSection = Field(default_factory=GeneratorDataSection)
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    low_label: float | int | None = None
    val_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    diffusion_config: str | None = None
    diffusion_overrides: dict[str, Any] = Field(default_factory=dict)
    segmentation_config: str | None = None
    segmentation_overrides: dict[str, Any] = Field(default_factory=dict)
    generation: GenerationSection = Field(default_factory=GenerationSection)

    @field_validator("settings")
    @classmethod
    def _settings_parse(cls, settings: list[str]) -> list[str]:
        for setting in settings:
            mix, _ = split_setting(setting)
            if mix.partition(":")[0] == "none":
                raise ValueError("'none' is the baseline, which always runs (and baseline+heavy-aug is the "
                                 "heavy_augmentation control); list synthetic settings only")
            parse_mix(mix)
        if len(set(settings)) != len(settings):
            raise ValueError(f"settings repeat: {settings}")
        return settings

    @field_validator("controls")
    @classmethod
    def _controls_unique(cls, controls: list[str]) -> list[str]:
        if len(set(controls)) != len(controls):
            raise ValueError(f"controls repeat: {controls}")
        return controls

    @field_validator("run_folds")
    @classmethod
    def _folds_non_negative(cls, run_folds: list[int] | None) -> list[int] | None:
        if run_folds is not None and (not run_folds or min(run_folds) < 0):
            raise ValueError("run_folds must list fold indices >= 0")
        return run_folds


def quick_profile() -> dict[str, Any]:
    """Overrides for a CI-sized run on CPU: 2 folds, 3 seeds, short trainings, small synthetic sets."""
    return {
        "folds": 2,
        "seeds": [0, 1, 2],
        "settings": ["ratio:0.5", "merge:0.6"],
        "diffusion_overrides": {"train.steps": 400, "train.sample_every": 0},
        "generation": {"n": 48, "steps": 12, "per_mask": 2},
    }


#: ``segsynth benchmark --profile NAME``: each applies in full over the config file; a flag given
#: explicitly (``--folds``, ``--seeds``, ...) replaces one of its values. ``screening`` looks at one
#: fold with two seeds at the planned budget (a cheap first answer to "is it worth a full run?");
#: ``full`` runs every fold with three seeds. Both print the headline column (gain over the best
#: free control). A screening and a full run differ in their seeds, so each gets its own ``--out``.
PROFILES: dict[str, Any] = {
    "quick": quick_profile,
    "screening": lambda: {"run_folds": [0], "seeds": [0, 1]},
    "full": lambda: {"run_folds": None, "seeds": [0, 1, 2]},
}


def profile_overrides(name: str) -> dict[str, Any]:
    """The overrides of profile ``name``.

    Raises:
        ValueError: an unknown profile (the known ones named).
    """
    if name not in PROFILES:
        raise ValueError(f"unknown benchmark profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]()
