"""The final network's setting: the best synthetic row against the best free row, whatever rows exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segsynth.benchmark.recipes import seg_run_dir
from segsynth.run.final import FREE, SYNTHETIC, choose_final, record_choice
from segsynth.run.plan import Choice, RunPlan, load_plan, save_plan

CASES = ("c1", "c2", "c3")


def _benchmark(bench: Path, rows: dict[str, tuple[float, bool]]) -> dict:
    """A benchmark folder whose rows score ``dice`` on every test case, each with one run whose
    ``split.json`` names a generated set (``synthetic``) or none."""
    generated = bench / "fold_0" / "synth"
    generated.mkdir(parents=True)
    (generated / "generation.json").write_text(json.dumps({"config": {"layouts": "augmented"}}))
    self_made = bench / "fold_0" / "pseudo"  # a set no generator drew (e.g. pseudo-labels): free
    self_made.mkdir()
    runs, settings = [], {}
    for offset, (name, (dice, synthetic)) in enumerate(rows.items()):
        run = seg_run_dir(bench, 0, name, 0)
        run.mkdir(parents=True)
        root = generated if synthetic else self_made if name == "self-training" else None
        (run / "split.json").write_text(json.dumps({
            "data_root": "/data", "train_ids": ["a"], "val_ids": ["b"], "test_ids": ["c"], "train_cases": ["A"],
            "val_cases": ["B"], "test_cases": ["C"],
            "synthetic": [] if root is None else [
                {"root": str(root), "used": 4, "excluded_held_out_layouts": [], "manifest": True}],
        }))
        case_dice = {c: dice + 0.01 * (i - 1) for i, c in enumerate(CASES)}
        runs.append({"fold": 0, "seed": 0, "setting": name, "run": str(run), "case_dice": case_dice})
        settings[name] = {"dice": {"mean": dice, "case_std": 0.01}, "runs": 1, "cases": len(CASES)}
    return {"order": list(rows), "settings": settings, "runs": runs}


def test_a_synthetic_row_must_beat_the_best_free_row(tmp_path: Path) -> None:
    rows = {"baseline": (0.70, False), "baseline+heavy-aug": (0.80, False), "ratio:0.5": (0.75, True)}
    choice = choose_final(tmp_path / "a", _benchmark(tmp_path / "a", rows))
    # the synthetic row beat the baseline but not heavy augmentation: the final network is the control
    assert (choice.setting, choice.kind, choice.best_free, choice.best_synthetic) == (
        "baseline+heavy-aug", FREE, "baseline+heavy-aug", "ratio:0.5")
    assert "no synthetic setting beat the best free control" in choice.why and "-0.0500 Dice" in choice.why
    assert choice.comparison["mean"] == pytest.approx(-0.05)
    assert choice.recipe_run == seg_run_dir(tmp_path / "a", 0, "baseline+heavy-aug", 0)

    rows["ratio:0.5"] = (0.85, True)
    choice = choose_final(tmp_path / "b", _benchmark(tmp_path / "b", rows))
    assert (choice.setting, choice.kind) == ("ratio:0.5", SYNTHETIC) and "beat the best free control" in choice.why
    assert {n: r["kind"] for n, r in choice.rows.items()} == {
        "baseline": FREE, "baseline+heavy-aug": FREE, "ratio:0.5": SYNTHETIC}


def test_a_control_row_added_later_counts_as_free_without_naming_it(tmp_path: Path) -> None:
    rows = {"baseline": (0.70, False), "baseline+heavy-aug": (0.80, False), "ratio:0.5": (0.85, True),
            "self-training": (0.90, False)}
    choice = choose_final(tmp_path, _benchmark(tmp_path, rows))
    assert (choice.setting, choice.kind, choice.best_free) == ("self-training", FREE, "self-training")
    assert choice.rows["self-training"]["kind"] == FREE


def test_the_choice_is_written_into_the_plan_once(tmp_path: Path) -> None:
    rows = {"baseline": (0.70, False), "ratio:0.5": (0.75, True)}
    choice = choose_final(tmp_path / "b", _benchmark(tmp_path / "b", rows))
    plan = RunPlan(data="/data", device="cpu", fingerprint={}, choices={"folds": Choice(value=3, why="test")})
    path = save_plan(plan, tmp_path / "plan.json")
    record_choice(plan, path, choice)
    saved = load_plan(path)
    assert saved.final == Choice(value="ratio:0.5", why=choice.why)
    stamp = path.stat().st_mtime_ns
    record_choice(saved, path, choice)
    assert path.stat().st_mtime_ns == stamp


def test_with_chosen_controls_the_choice_follows_the_benchmarks_headline(tmp_path: Path) -> None:
    """A benchmark that chose each fold's better free control on validation cases: the final free
    setting is that control (not the one with the better test Dice), and a synthetic row wins only
    with a positive gain over it."""
    rows = {"baseline": (0.70, False), "baseline+heavy-aug": (0.80, False), "self-training": (0.90, False),
            "ratio:0.5": (0.85, True)}
    results = _benchmark(tmp_path / "a", rows)
    results["controls"] = ["baseline+heavy-aug", "self-training"]
    results["best_control"] = {"0": {"chosen": "baseline+heavy-aug",
                                     "val_dice": {"baseline+heavy-aug": 0.7, "self-training": 0.6}}}
    gain = {"mean": 0.05, "ci_low": 0.01, "ci_high": 0.09, "p": 0.25, "n": 3}
    results["paired"] = {"ratio:0.5": {"vs_best_control": gain}}
    choice = choose_final(tmp_path / "a", results)
    assert (choice.setting, choice.kind, choice.best_free) == ("ratio:0.5", SYNTHETIC, "baseline+heavy-aug")
    assert choice.comparison == gain and "+0.0500 Dice" in choice.why

    results["paired"]["ratio:0.5"]["vs_best_control"] = gain | {"mean": -0.01}
    choice = choose_final(tmp_path / "a", results)
    assert (choice.setting, choice.kind) == ("baseline+heavy-aug", FREE)
    assert "no synthetic setting beat the best free control" in choice.why
