"""Configuration of ``segsynth benchmark``: folds, seeds, settings and each stage's recipe."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, field_validator

from segsynth.config import StrictModel
from segsynth.seg.config import parse_mix
from segsynth.synth.config import GenerationConfig


class GenerationSection(StrictModel):
    """How each fold's synthetic sets are drawn (see ``segsynth generate``).

    ``ratio`` and ``concat`` settings train on a set of ``n`` samples from ``layouts``; ``merge``
    settings on a second set of ``per_mask`` same-mask variants of every labelled mask the fold's
    generator saw (DiffBoost), the only kind of set merging accepts.
    """

    n: int = Field(default=200, ge=1)
    layouts: Literal["augmented", "composed"] = "augmented"
    per_mask: int = Field(default=10, ge=1)
    # The sampling defaults are generate's own (segsynth.synth.config.GenerationConfig).
    sampler: Literal["ddim", "dpmpp", "unipc"] = GenerationConfig.model_fields["sampler"].default
    steps: int = Field(default=GenerationConfig.model_fields["steps"].default, ge=1)
    style_guidance: float = Field(default=GenerationConfig.model_fields["style_guidance"].default, ge=0.0)
    guidance_rescale: float = Field(default=GenerationConfig.model_fields["guidance_rescale"].default, ge=0.0, le=1.0)
    batch_size: int = Field(default=16, ge=1)


#: Control rows a benchmark can add beside the synthetic settings (what a user gets for free).
CONTROLS = ("heavy_augmentation", "all_labelled")


class BenchmarkConfig(StrictModel):
    """Baseline (real only) vs each synthetic setting, on the same case folds and seeds.

    Every segmentation run of a benchmark trains the same number of optimiser steps with the same
    batch size, schedule, augmentation and validation: ``segmentation_overrides["train.steps"]``
    when given, otherwise the budget planned from the data (:mod:`segsynth.benchmark.plan`).

    Attributes:
        folds: k of the k-fold split by case.
        fold_seed: seed of the fold assignment (saved to ``splits.json``).
        run_folds: run only these folds (e.g. ``[0]`` for a quick look); default all.
        seeds: segmentation training seeds; every setting uses the same ones (paired design).
        settings: ``--mix`` values compared with the baseline (``ratio:0.8``, ``merge:0.6``, ``concat``).
        controls: real-only rows beside them: ``heavy_augmentation`` (the baseline with heavy
            augmentation: the one factor changed is augmentation) and ``all_labelled`` (every
            labelled training case of the fold, the upper reference for "gap closed").
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
    controls: list[Literal["heavy_augmentation", "all_labelled"]] = Field(default_factory=lambda: list(CONTROLS))
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
            if setting.partition(":")[0] == "none":
                raise ValueError("'none' is the baseline, which always runs; list synthetic settings only")
            parse_mix(setting)
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
