"""The plan of ``segsynth run``: every recipe choice made from the dataset fingerprint and the device.

Like nnU-Net's planner, the plan is computed once from what the data looks like (image size,
channels, classes, cases, images per case, the unlabelled pool) and from whether a CUDA device is
found, then written to ``RUN/plan.json`` for the user to read and edit. Each choice is a
``{"value": ..., "why": ...}`` pair, keyed by where it goes in the benchmark config:

* ``diffusion.<key.path>``: a dotted override of the per-fold diffusion recipe;
* ``segmentation.<key.path>``: a dotted override of every segmentation run;
* ``generation.<field>``: the synthetic set recipe;
* anything else: a top-level :class:`~segsynth.benchmark.BenchmarkConfig` field.

A user may change a value, delete a choice (the recipe default applies) or add one with a "why" of
their own; :func:`benchmark_config` refuses a key or value the benchmark does not know, naming it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from segsynth.artifacts.names import DATASET_JSON, PLAN_JSON, UNLABELED_DIR
from segsynth.benchmark import BenchmarkConfig
from segsynth.benchmark.foreground import benchmark_folds
from segsynth.benchmark.sizing import SEG_PASSES, SEG_STEP_FLOOR, fit_generator, image_side
from segsynth.benchmark.recipes import segmentation_budget
from segsynth.config import ConfigError, StrictModel, load_config, parse_config
from segsynth.data.info import dataset_info
from segsynth.data.loader import index_dataset
from segsynth.diffusion.config import DiffusionTrainConfig
from segsynth.io.atomic import atomic_write_text
from segsynth.seg.config import SegTrainConfig
from segsynth.synth.config import GenerationConfig

#: Why a plan samples with generate's own defaults.
SAMPLING_WHY = ("generate's default: the fewest UNet calls within 2 Dice points of layout fidelity of STEDM's "
                "DDIM 128 steps + guidance (benchmarks/results/sampler_steps.json)")

PLAN_VERSION = 1
#: Shipped recipes (:mod:`segsynth.recipes`): the CPU-sized one and the GPU reference (see their headers).
RECIPES = {"cpu": "tiny", "cuda": "base"}
#: Seeds of the segmentation runs: three measure training noise (paired over cases, see the benchmark).
SEEDS = [0, 1, 2]
#: nnU-Net's number of cross-validation folds, lowered when the data has too few cases.
MAX_FOLDS = 5
#: Synthetic samples per labelled image for ``ratio``/``concat`` sets, and the set size bounds per device.
SYNTH_PER_IMAGE = 2
SYNTH_BOUNDS = {"cpu": (64, 400), "cuda": (200, 2000)}
#: Same-mask variants per labelled image for ``merge`` settings (DiffBoost uses about 10).
PER_MASK = {"cpu": 2, "cuda": 10}


Device = Literal["cpu", "cuda"]


class Choice(StrictModel):
    """One planned value and the reason it was chosen (shown to the user, kept when they edit it)."""
    value: Any
    why: str = Field(min_length=1)


class RunPlan(StrictModel):
    """``RUN/plan.json``: the facts the plan rests on and every choice made from them.

    Attributes:
        data: the dataset folder it was planned for (a plan is refused for another folder).
        device: ``cuda`` or ``cpu``, what was found when planning.
        fingerprint: the dataset facts used (see :func:`fingerprint_summary`).
        choices: ``{key: Choice}``, keyed as the module docstring says.
        final: the benchmark setting the final network was trained with and why; written after the
            benchmark from its results (:mod:`segsynth.run.final`), so an edit here is overwritten.
    """
    format_version: Literal[1] = PLAN_VERSION
    data: str
    device: Device
    fingerprint: dict[str, Any]
    choices: dict[str, Choice]
    final: Choice | None = None


def fingerprint_summary(data: Path) -> dict[str, Any]:
    """The facts of :func:`segsynth.data.info.dataset_info` the plan decides from (nothing is written)."""
    info = dataset_info(data)
    return {
        "name": info["name"],
        "channels": info["channels"],
        "classes": sorted(info["labels"], key=info["labels"].get),
        "num_cases": info["num_cases"],
        "num_images": info["num_images"],
        "fewest_images_per_case": min(info["images_per_case"].values()),
        "num_unlabeled": info["num_unlabeled"],
        "image_side": image_side(data),
    }


def _folds(cases: int, data: Path) -> Choice:
    # Each fold needs a test case and, among the rest, one training and one validation case.
    if cases < 3:
        raise ValueError(f"{data / DATASET_JSON}: {cases} case(s); a benchmark by case needs at least 3 "
                         "(test, training and validation cases never share a patient)")
    k = min(MAX_FOLDS, cases)
    while cases - math.ceil(cases / k) < 2:
        k -= 1
    why = f"nnU-Net's {MAX_FOLDS}-fold cross-validation by case" if k == MAX_FOLDS else (
        f"{k} folds by case: with {cases} cases, more folds would leave a fold without a test case or without "
        "2 other cases for training and validation")
    return Choice(value=k, why=why)


def _generator_size(side: int, recipe_size: int, factor: int) -> int:
    """The data's side, capped at the recipe's size, rounded down to a size the UNet can halve."""
    return max(factor, min(side, recipe_size) // factor * factor)


def plan_run(data: str | Path, device: Device | None = None) -> RunPlan:
    """Plan the whole loop for the dataset folder ``data``.

    Args:
        data: a checked dataset folder with labelled images and an ``unlabeled/`` pool.
        device: plan for this device; default ``cuda`` when torch finds one, else ``cpu``.

    Raises:
        ValueError: no unlabelled images (the style references come from them) or too few cases.
    """
    data = Path(data)
    facts = fingerprint_summary(data)
    if facts["num_unlabeled"] == 0:
        raise ValueError(
            f"{data / UNLABELED_DIR}: no unlabelled images. segsynth run draws the style of every synthetic image "
            "from this pool (images never used for training); put unlabelled images of the same kind there"
        )
    how = "asked for" if device else "found"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    recipe = RECIPES[device]
    dcfg = load_config(DiffusionTrainConfig, recipe)
    side, n_images = facts["image_side"], facts["num_images"]
    factor = 2 ** (len(dcfg.model.block_out_channels) - 1) * dcfg.model.latent_factor
    size = _generator_size(side, dcfg.model.image_size, factor)
    choices: dict[str, Choice] = {
        "diffusion_config": Choice(value=recipe, why=(
            f"a CUDA device ({how}): the GPU reference recipe" if device == "cuda" else
            f"the CPU ({how}): the CPU-sized recipe, trained in minutes")),
        "diffusion.model.image_size": Choice(value=size, why=(
            f"the data's median image side ({side} px)" if size == side else
            f"{size} px crops of the {side} px images: the recipe's largest size, divisible by {factor}")),
        "diffusion.train.steps": Choice(value=dcfg.train.steps, why=f"the {recipe} recipe's training length"),
    }
    if facts["fewest_images_per_case"] < 2:
        choices["diffusion.data.style_sampler"] = Choice(value="augmented", why=(
            "a case has a single labelled image, which multi_patch (other images of the target's case) refuses; "
            "augmented copies of the target stand in"))
    else:
        choices["diffusion.data.style_sampler"] = Choice(value="multi_patch", why=(
            f"every case has {facts['fewest_images_per_case']}+ images: style references are other images of the "
            "target's case, so the style encoder learns style, not content"))
    if size != side:
        choices["segmentation.train.patch_size"] = Choice(value=size, why=(
            f"segmentation trains on {size} px patches so real crops and {size} px synthetic images batch together"))
    low, high = SYNTH_BOUNDS[device]
    n = min(max(SYNTH_PER_IMAGE * n_images, low), high)
    choices |= {
        "folds": _folds(facts["num_cases"], data),
        "run_folds": Choice(value=None, why="every fold") if device == "cuda" else Choice(
            value=[0], why="CPU: fold 0 only keeps the run to hours; set null to run every fold"),
        "seeds": Choice(value=SEEDS, why="three segmentation seeds measure training noise; cases are the unit"),
        "settings": Choice(value=["ratio:0.8", "merge:0.6", "concat"], why=(
            "the three ways to use synthetic data: 80% of each batch synthetic, same-mask variants merged, "
            "and the two sets concatenated")),
        "controls": Choice(value=["heavy_augmentation", "self_training"], why=(
            "what a user gets without a generator: heavier augmentation and self-training on the unlabelled pool "
            "(the better of the two, chosen on validation cases, is what synthetic data must beat); no all-labelled "
            "row, since every labelled case already trains the baseline here (it would repeat the baseline's runs)")),
        "generation.n": Choice(value=n, why=(
            f"{SYNTH_PER_IMAGE} per labelled image ({n_images}), within {low}-{high} on {device}")),
        "generation.per_mask": Choice(value=PER_MASK[device], why=(
            f"same-mask variants per labelled image for merge settings ({'as DiffBoost' if device == 'cuda' else 'CPU-sized'})")),
        "generation.sampler": Choice(value=GenerationConfig.model_fields["sampler"].default, why=SAMPLING_WHY),
        "generation.steps": Choice(value=GenerationConfig.model_fields["steps"].default, why=SAMPLING_WHY),
    }
    plan = RunPlan(data=str(data.resolve()), device=device, fingerprint=facts, choices=choices)
    plan.choices["segmentation.train.steps"] = _segmentation_budget(data, plan)
    return plan


def _segmentation_budget(data: Path, plan: RunPlan) -> Choice:

    cfg = benchmark_config(plan)
    splits = benchmark_folds(data, index_dataset(data), cfg)  # the folds the benchmark will make
    steps = segmentation_budget(data, splits, cfg)
    return Choice(value=steps, why=(
        f"every setting trains the same steps: {SEG_PASSES} passes over the largest real training set, "
        f"at least {SEG_STEP_FLOOR}; delete this choice after editing folds or controls to have it re-planned"))


def benchmark_config(plan: RunPlan) -> BenchmarkConfig:
    """The :class:`~segsynth.benchmark.BenchmarkConfig` the plan's choices spell.

    Raises:
        ConfigError: a choice the benchmark refuses, named by its plan key.
    """
    fields: dict[str, Any] = {"diffusion_overrides": {}, "segmentation_overrides": {}, "generation": {}}
    for key, choice in plan.choices.items():
        section, _, rest = key.partition(".")
        if rest and section in ("diffusion", "segmentation"):
            fields[f"{section}_overrides"][rest] = choice.value
        elif rest and section == "generation":
            fields["generation"][rest] = choice.value
        elif rest:
            raise ConfigError(f"{PLAN_JSON}: choices.{key}: unknown section {section!r} "
                              "(use diffusion.*, segmentation.*, generation.* or a benchmark field)")
        else:
            fields[key] = choice.value
    cfg = parse_config(BenchmarkConfig, fields, f"{PLAN_JSON} choices")
    _check_stage_configs(cfg, plan.fingerprint["image_side"])
    return cfg


def _check_stage_configs(cfg: BenchmarkConfig, side: int) -> None:
    """Refuse a misspelt diffusion or segmentation override, or a generator size that does not fit
    the images, now rather than after hours of training."""
    dcfg = load_config(DiffusionTrainConfig, cfg.diffusion_config, cfg.diffusion_overrides)
    seg = load_config(SegTrainConfig, cfg.segmentation_config, cfg.segmentation_overrides)
    fit_generator(dcfg, side, seg, f"{PLAN_JSON} choices")


def save_plan(plan: RunPlan, path: Path) -> Path:
    """Write ``plan.json`` (indented, in planning order, so it reads top-down)."""
    return atomic_write_text(path, json.dumps(plan.model_dump(mode="json"), indent=2) + "\n")


def load_plan(path: Path) -> RunPlan:
    """Read an (edited) ``plan.json``.

    Raises:
        ConfigError: not JSON, or a field the plan does not have (every choice needs a value and a why).
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    return parse_config(RunPlan, raw, str(path))
