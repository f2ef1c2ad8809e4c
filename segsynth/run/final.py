"""The deliverables of ``segsynth run``: one segmentation network in ``RUN/final/``, and its model card.

After the benchmark has scored every setting on held-out cases, the run trains **one** network for
the user, so that ``segsynth predict RUN/final IMAGES -o MASKS`` needs no ensemble logic (one
network to load, one forward pass per window, one set of numbers to quote):

* **which setting**: each benchmark row is a *synthetic* row (its runs mixed in a set drawn by a
  generator, known from the runs' ``split.json``) or a *free* row (the baseline and every control a
  user gets without a generator: heavier augmentation, more labels, and any control row added later,
  with no list of names to keep up to date). The question is the benchmark's headline: the best
  synthetic row is chosen when its gain over the best free control (each fold's better control,
  chosen on validation cases) is positive, paired by test case; otherwise that control is, and
  ``plan.json``, the model card and the report say so and why. A benchmark made before controls were
  chosen compares the free and synthetic rows with the best mean test Dice instead;
* **its recipe**: the resolved config of that row's first-seed benchmark run, so the step budget,
  augmentation and mixing are the ones the benchmark measured;
* **its data**: the labelled cases, the benchmark's test cases included, less a validation share
  (the benchmark's ``val_fraction`` of the cases) that picks the saved step, as in every benchmark
  run, so the network is selected the way the numbers behind the choice were (a network of the last
  step, trained on the validation cases too, would be a recipe the benchmark never scored);
* **a synthetic winner** first gets its own generator, trained on every labelled case
  (``train_diffusion``), and its own set drawn from it with the benchmark's generation recipe
  (``generate``); then ``train_seg`` mixes that set in.

Every stage is an ordinary run folder that resumes, so a killed run continues; ``model_card.json``
is written last and marks the stage done.

``RUN/final/`` then holds ``network/`` (``model.json`` + ``model.safetensors``), ``model_card.md``,
``model_card.json``, the ``segmentation/`` run, and for a synthetic winner ``diffusion/``, the set and
the set with the real cases as an nnU-Net v2 raw dataset (``Dataset900_segsynth``, leak-free
``splits_final.json``).
"""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from segsynth.artifacts.names import (
    BENCHMARK_DIR,
    BEST_DIR,
    CONFIG_YAML,
    DATASET_JSON,
    DIFFUSION_DIR,
    FINAL_DIR,
    FINAL_NNUNET_DIR,
    FINAL_SEG_DIR,
    GENERATION_JSON,
    MANIFEST_JSONL,
    MODEL_CARD_JSON,
    MODEL_CARD_MD,
    MODEL_JSON,
    MODEL_WEIGHTS,
    NETWORK_DIR,
    PLAN_JSON,
    RESULTS_JSON,
    SPLIT_JSON,
    SYNTH_DIR,
    TRAINING_JSON,
    VARIANTS_DIR,
)
from segsynth.artifacts.schemas import SegRunSplit, TrainingSummary, read_record
from segsynth.benchmark import BenchmarkConfig
from segsynth.benchmark.recipes import seg_run_dir
from segsynth.benchmark.run import train_generator
from segsynth.benchmark.stats import paired_difference
from segsynth.config import load_config
from segsynth.data.format import load_spec
from segsynth.io.atomic import atomic_directory, atomic_write_json, atomic_write_text
from segsynth.io.lock import folder_lock
from segsynth.run.plan import Choice, RunPlan, save_plan

SYNTHETIC, FREE = "synthetic", "free"


@dataclass(frozen=True)
class FinalChoice:
    """The setting the final network is trained with, and the benchmark numbers behind it."""

    setting: str
    kind: str  # SYNTHETIC or FREE
    why: str
    best_free: str
    best_synthetic: str | None
    rows: dict[str, dict[str, Any]]  # every row: kind, mean Dice over test cases, case std, runs
    comparison: dict[str, float] | None  # best synthetic - best free, paired by test case
    recipe_run: Path  # the benchmark run whose resolved config is the recipe


def _uses_generated_set(run: Path) -> bool:
    """Whether the segmentation run ``run`` mixed in a set drawn by a generator (its ``generation.json``)."""
    split = read_record(run / SPLIT_JSON, SegRunSplit)
    # a set that is not there any more (a moved folder) is still a set it mixed in
    return any((Path(s.root) / GENERATION_JSON).is_file() or not Path(s.root).is_dir() for s in split.synthetic)


def _dice(row: dict[str, Any]) -> float:
    value = row.get("dice", {}).get("mean")
    return value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def _case_means(runs: list[dict[str, Any]]) -> dict[tuple[int, str], float]:
    """``{(fold, case): Dice averaged over seeds}`` of one row's compact runs."""
    per_case: dict[tuple[int, str], list[float]] = defaultdict(list)
    for run in runs:
        for case, value in run["case_dice"].items():
            if value is not None and math.isfinite(value):
                per_case[(run["fold"], case)].append(value)
    return {key: sum(values) / len(values) for key, values in per_case.items()}


def choose_final(bench: Path, results: dict[str, Any]) -> FinalChoice:
    """Pick the final setting from a benchmark's ``results.json`` (see the module docstring).

    Raises:
        ValueError: the results hold no run of a row, or no free row.
    """
    by_setting: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in results["runs"]:
        by_setting[run["setting"]].append(run)
    order = list(results.get("order") or results["settings"])
    rows: dict[str, dict[str, Any]] = {}
    first_run: dict[str, Path] = {}
    for name in order:
        if not by_setting[name]:
            raise ValueError(f"{bench / RESULTS_JSON}: no run of the row {name!r}")
        first = min(by_setting[name], key=lambda r: (r["fold"], r["seed"]))
        first_run[name] = seg_run_dir(bench, first["fold"], name, first["seed"])
        kind = SYNTHETIC if any(_uses_generated_set(seg_run_dir(bench, r["fold"], name, r["seed"]))
                                for r in by_setting[name]) else FREE
        row = results["settings"][name]
        rows[name] = {"kind": kind, "dice": row["dice"]["mean"], "case_std": row["dice"]["case_std"],
                      "runs": row["runs"], "cases": row["cases"]}
    free = [n for n in order if rows[n]["kind"] == FREE]
    synthetic = [n for n in order if rows[n]["kind"] == SYNTHETIC]
    if not free:
        raise ValueError(f"{bench / RESULTS_JSON}: no row without synthetic data to compare with")
    if results.get("best_control"):
        best_free, best_synthetic, comparison, basis = _against_chosen_controls(results, synthetic)
    else:
        best_free, best_synthetic, comparison, basis = _against_best_free_row(results, by_setting, free, synthetic)
    if best_synthetic is None:
        setting, why = best_free, f"the benchmark has no synthetic row; the final network is {best_free} ({basis})"
    elif comparison["mean"] > 0:
        setting, why = best_synthetic, (
            f"the best synthetic setting beat the best free control: {basis}; the final network is trained with "
            "a generator and a synthetic set of its own, made from every labelled case")
    else:
        setting, why = best_free, (
            f"no synthetic setting beat the best free control ({basis}): the final network is {best_free}, "
            "without a generator, since synthetic data did not pay for itself on this data")
    return FinalChoice(setting=setting, kind=rows[setting]["kind"], why=why, best_free=best_free,
                       best_synthetic=best_synthetic, rows=rows, comparison=comparison,
                       recipe_run=first_run[setting])


def _gain_text(synthetic: str, control: str, comparison: dict[str, float], n: int) -> str:
    return (f"{synthetic} vs {control}, paired difference {comparison['mean']:+.4f} Dice over {n} test case(s) "
            f"(95% CI {comparison['ci_low']:+.4f} to {comparison['ci_high']:+.4f})")


def _against_chosen_controls(
    results: dict[str, Any], synthetic: list[str]
) -> tuple[str, str | None, dict[str, float] | None, str]:
    """The benchmark's own headline: each synthetic row's gain over each fold's better free control,
    chosen on validation cases (``results["best_control"]``, ``paired[row]["vs_best_control"]``).

    The free setting is the control chosen in most folds (ties: the first listed control)."""
    chosen = [entry["chosen"] for entry in results["best_control"].values()]
    listed = list(results.get("controls") or chosen)
    best_free = max(set(chosen), key=lambda n: (chosen.count(n), -listed.index(n) if n in listed else 0))
    control_text = best_free if len(set(chosen)) == 1 else f"each fold's chosen control ({', '.join(chosen)})"
    gains = {n: results["paired"][n]["vs_best_control"] for n in synthetic
             if "vs_best_control" in results.get("paired", {}).get(n, {})}
    if not gains:
        return best_free, None, None, f"{best_free} was chosen on validation cases"
    best_synthetic = max(gains, key=lambda n: gains[n]["mean"])
    cases = results["settings"][best_synthetic]["cases"]
    return best_free, best_synthetic, gains[best_synthetic], _gain_text(best_synthetic, control_text, gains[best_synthetic], cases)


def _against_best_free_row(
    results: dict[str, Any], by_setting: dict[str, list[dict[str, Any]]], free: list[str], synthetic: list[str]
) -> tuple[str, str | None, dict[str, float] | None, str]:
    """For a benchmark without chosen controls (made before they existed): the free and synthetic
    rows with the best mean test Dice, compared paired by test case."""
    best_free = max(free, key=lambda n: _dice(results["settings"][n]))
    if not synthetic:
        return best_free, None, None, f"{best_free} had the best Dice ({_dice(results['settings'][best_free]):.4f})"
    best_synthetic = max(synthetic, key=lambda n: _dice(results["settings"][n]))
    mine, theirs = _case_means(by_setting[best_synthetic]), _case_means(by_setting[best_free])
    keys = sorted(set(mine) & set(theirs))
    comparison = paired_difference([mine[k] for k in keys], [theirs[k] for k in keys])
    return best_free, best_synthetic, comparison, _gain_text(best_synthetic, best_free, comparison, len(keys))


def record_choice(plan: RunPlan, plan_path: Path, choice: FinalChoice) -> None:
    """Write the choice into ``plan.json`` (only when it changed, so a finished run rewrites nothing)."""
    new = Choice(value=choice.setting, why=choice.why)
    if plan.final != new:
        plan.final = new
        save_plan(plan, plan_path)


def _synthetic_set(run: Path, out: Path, n: int, layouts: str, cfg: BenchmarkConfig, console: Console) -> Path:
    if (out / MANIFEST_JSONL).is_file() and (out / DATASET_JSON).is_file():
        return out
    from segsynth.synth.config import GenerationConfig
    from segsynth.synth.generate import generate

    # the benchmark's generation recipe, as each fold drew its sets (segsynth.benchmark.run)
    gen = GenerationConfig.model_validate({**cfg.generation.model_dump(), "n": n, "layouts": layouts})
    generate(run, out, gen, resume=out.exists(), console=console)
    return out


def _nnunet_export(synthetic: Path, data: Path, out: Path) -> None:
    """Real + synthetic as an nnU-Net v2 raw dataset, for users who train nnU-Net on them: its
    ``splits_final.json`` folds the real cases and trains a synthetic case only in folds where the
    real case its layout came from trains (:func:`segsynth.data.nnunet.export_nnunet`)."""
    if (out / DATASET_JSON).is_file():
        return
    from segsynth.data.nnunet import export_nnunet

    export_nnunet(synthetic, out, merge_real=data)


def _copy_network(best: Path, target: Path) -> None:
    with atomic_directory(target, overwrite=True) as tmp:
        for name in (MODEL_JSON, MODEL_WEIGHTS):
            shutil.copyfile(best / name, tmp / name)


def train_final(data: Path, out: Path, plan: RunPlan, cfg: BenchmarkConfig, console: Console) -> Path:
    """Train (or continue) the final network of the run in ``out`` and write its model card.

    Returns:
        ``out/final`` (``model_card.json`` in it marks it finished).
    """
    from segsynth.data.loader import index_dataset
    from segsynth.seg.config import SegTrainConfig
    from segsynth.seg.train import train_seg

    bench, final = out / BENCHMARK_DIR, out / FINAL_DIR
    results = json.loads((bench / RESULTS_JSON).read_text(encoding="utf-8"))
    choice = choose_final(bench, results)
    record_choice(plan, out / PLAN_JSON, choice)
    if (final / MODEL_CARD_JSON).is_file():
        return final
    console.print(f"final network: {choice.setting} ({choice.why})")
    with folder_lock(final):
        seg_cfg = load_config(SegTrainConfig, choice.recipe_run / CONFIG_YAML, {"split.val_fraction": cfg.val_fraction})
        ids = [r.id for r in index_dataset(data)]
        synthetic: list[Path] = []
        if choice.kind == SYNTHETIC:
            generator = train_generator(data, final / DIFFUSION_DIR, cfg, ids, console)
            if seg_cfg.mix.strategy == "merge":  # merging pairs each real image with its own mask's variants
                synthetic.append(_synthetic_set(generator, final / VARIANTS_DIR, cfg.generation.per_mask * len(ids),
                                                "variants", cfg, console))
            else:
                synthetic.append(_synthetic_set(generator, final / SYNTH_DIR, cfg.generation.n, cfg.generation.layouts,
                                                cfg, console))
            _nnunet_export(synthetic[0], data, final / FINAL_NNUNET_DIR)
        seg = final / FINAL_SEG_DIR
        if not (seg / TRAINING_JSON).is_file():
            train_seg(data, seg_cfg, seg, synthetic=synthetic, train_ids=ids, resume=(seg / CONFIG_YAML).is_file(),
                      console=console)
        _copy_network(seg / BEST_DIR, final / NETWORK_DIR)
        card = model_card(data, out, plan, choice, results, seg_cfg)
        atomic_write_text(final / MODEL_CARD_MD, card_markdown(card))
        atomic_write_json(final / MODEL_CARD_JSON, card)  # last: the stage is done
    return final


def model_card(data: Path, out: Path, plan: RunPlan, choice: FinalChoice, results: dict[str, Any],
               seg_cfg: Any) -> dict[str, Any]:
    """What the final network is, what it was trained on, how, and the benchmark numbers behind it."""
    final = out / FINAL_DIR
    seg = final / FINAL_SEG_DIR
    split = read_record(seg / SPLIT_JSON, SegRunSplit)
    training = read_record(seg / TRAINING_JSON, TrainingSummary)
    network = json.loads((final / NETWORK_DIR / MODEL_JSON).read_text(encoding="utf-8"))
    spec = load_spec(data)
    synthetic = []
    for use in split.synthetic:
        generation = json.loads((Path(use.root) / GENERATION_JSON).read_text(encoding="utf-8"))["config"]
        synthetic.append({
            "set": Path(use.root).relative_to(final.resolve()).as_posix(), "images_used": use.used,
            "layouts": generation.get("layouts"),
            "generator": DIFFUSION_DIR, "generator_trained_on": "every labelled case (images and masks)",
            "labels": "the masks the images were generated from: real masks of the labelled cases "
                      f"({generation.get('layouts')}), never drawn for the synthetic image",
        })
    return {
        "network": NETWORK_DIR,
        "use": f"segsynth predict {out / FINAL_DIR} IMAGES -o MASKS",
        "classes": network["class_names"],
        "in_channels": network["in_channels"],
        "patch_size": network.get("patch_size"),
        "setting": choice.setting,
        "kind": choice.kind,
        "why": choice.why,
        "data": {"folder": str(data.resolve()), "fingerprint": plan.fingerprint},
        "labels": {
            "real": {"images": len(split.train_ids), "cases": len(split.train_cases),
                     "validation_images": len(split.val_ids), "validation_cases": len(split.val_cases),
                     "provenance": spec.label_provenance, "derivation": spec.derivation, "licence": spec.licence},
            "synthetic": synthetic,
        },
        # real + synthetic for nnU-Net (its splits_final.json keeps each synthetic case with its layout's real case)
        "nnunet_raw": FINAL_NNUNET_DIR if (final / FINAL_NNUNET_DIR / DATASET_JSON).is_file() else None,
        "training": {"steps": training.steps, "planned_steps": training.planned_steps,
                     "batch_size": training.batch_size, "best_step": training.best_step,
                     "best_val_dice": training.best_val_dice, "still_rising": training.still_rising,
                     "selection": "best validation Dice on the validation cases, as in every benchmark run"},
        "recipe": seg_cfg.model_dump(mode="json"),
        "benchmark": {
            "results": f"{BENCHMARK_DIR}/{RESULTS_JSON}",
            "headline": results.get("budget", {}),
            "rows": choice.rows,
            "best_free_control": choice.best_free,
            "best_synthetic": choice.best_synthetic,
            "best_synthetic_minus_best_free": choice.comparison,
        },
    }


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def card_markdown(card: dict[str, Any]) -> str:
    """``model_card.md``: the card for people."""
    real, fp = card["labels"]["real"], card["data"]["fingerprint"]
    lines = [
        f"# Model card: {fp.get('name', 'segmentation network')}", "",
        f"Use: `{card['use']}`", "",
        f"Segments {', '.join(card['classes'][1:])} (label values 1..{len(card['classes']) - 1}; 0 is "
        f"{card['classes'][0]}) in {card['in_channels']}-channel images"
        + (f", in {card['patch_size']} px sliding windows." if card["patch_size"] else ", whole images."), "",
        "## Why this network", "",
        f"Setting **{card['setting']}** ({'with synthetic data' if card['kind'] == SYNTHETIC else 'no generator'}): "
        f"{card['why']}.", "",
        "| benchmark row | kind | Dice (mean over test cases) | case std | runs |", "|---|---|---|---|---|",
    ]
    for name, row in card["benchmark"]["rows"].items():
        lines.append(f"| {name} | {row['kind']} | {_num(row['dice'])} | {_num(row['case_std'])} | {row['runs']} |")
    t = card["training"]
    lines += [
        "", f"Numbers from `{card['benchmark']['results']}`; they are the benchmark's estimate for this recipe, "
        "trained on fewer cases than this network.", "",
        "## Data and labels", "",
        f"- data: `{card['data']['folder']}` ({fp.get('num_cases')} cases, {fp.get('num_images')} labelled images, "
        f"{fp.get('image_side')} px median side, {fp.get('channels')} channel(s))",
        f"- real labels: {real['images']} training images of {real['cases']} cases and {real['validation_images']} "
        f"validation images of {real['validation_cases']} cases; labels {real['provenance']}"
        + (f" ({real['derivation']})" if real["derivation"] else "") + f", licence {real['licence']}",
    ]
    for s in card["labels"]["synthetic"]:
        lines.append(f"- synthetic: {s['images_used']} images of `{s['set']}` from the generator `{s['generator']}` "
                     f"({s['generator_trained_on']}); their labels are {s['labels']}")
    if not card["labels"]["synthetic"]:
        lines.append("- synthetic: none")
    lines += [
        "", "## Training", "",
        f"- {t['steps']} of {t['planned_steps']} optimiser steps of batch {t['batch_size']} (the benchmark's budget); "
        f"kept step {t['best_step']} (validation Dice {_num(t['best_val_dice'])}), {t['selection']}"
        + ("; validation Dice was still rising" if t["still_rising"] else ""),
        f"- network: {card['recipe']['network']['name']}, augmentation {card['recipe']['train']['augment']}, "
        f"mixing {card['recipe']['mix']['strategy']}; the full recipe is in `model_card.json`",
    ]
    return "\n".join(lines) + "\n"
