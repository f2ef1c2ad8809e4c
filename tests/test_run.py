"""`segsynth run DATA -o RUN`: the plan says why, an edited plan is followed, every stage runs and resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_tiny_dataset
from segsynth.cli import app
from segsynth.data.builtin import BUILTIN_DATASETS, build_builtin
from segsynth.demo import SMOKE_PROFILE
from segsynth.run import plan_run

#: The demo's toy sizes as plan choices, one synthetic setting and no controls: the loop, not the numbers.
TINY_CHOICES = {
    **{f"diffusion.{k}": v for k, v in SMOKE_PROFILE["diffusion_overrides"].items()},
    **{f"segmentation.{k}": v for k, v in SMOKE_PROFILE["segmentation_overrides"].items()},
    **{f"generation.{k}": v for k, v in SMOKE_PROFILE["generation"].items()},
    "seeds": [0],
    "settings": ["ratio:0.5"],
    "controls": [],
}


def _edit(plan_path: Path, choices: dict) -> None:
    plan = json.loads(plan_path.read_text())
    for key, value in choices.items():
        plan["choices"][key] = {"value": value, "why": "test: toy size"}
    plan_path.write_text(json.dumps(plan))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILTIN_DATASETS))
def test_run_plans_runs_every_stage_and_resumes(tmp_path: Path, name: str) -> None:
    torch.set_num_threads(1)
    data, out = build_builtin(name, tmp_path / name), tmp_path / "run"
    # planned for the CPU recipe wherever the test runs: the toy choices below shrink that recipe
    planned = CliRunner().invoke(app, ["run", str(data), "-o", str(out), "--plan-only", "--plan-for", "cpu"])
    assert planned.exit_code == 0, planned.output
    plan = json.loads((out / "plan.json").read_text())
    assert not (out / "benchmark").exists()
    assert plan["device"] == "cpu" and plan["choices"]["diffusion_config"]["value"] == "tiny"
    assert plan["fingerprint"]["num_cases"] >= 3 and plan["fingerprint"]["image_side"] == 64
    for key in ("diffusion_config", "diffusion.model.image_size", "diffusion.data.style_sampler", "folds", "seeds",
                "settings", "generation.n", "segmentation.train.steps"):
        assert plan["choices"][key]["why"], key
    assert plan["choices"]["diffusion.model.image_size"]["value"] == 64

    _edit(out / "plan.json", TINY_CHOICES)
    result = CliRunner().invoke(app, ["run", str(data), "-o", str(out)])
    assert result.exit_code == 0, result.output
    bench = out / "benchmark"
    # the edited plan was followed: 4 segmentation steps, one seed, one setting
    results = json.loads((bench / "results.json").read_text())
    assert results["order"] == ["baseline", "ratio:0.5"] and {r["steps"] for r in results["runs"]} == {4}
    assert (bench / "fold_0" / "diffusion" / "pipeline" / "model_index.json").is_file()
    assert (bench / "fold_0" / "synth" / "manifest.jsonl").is_file()
    assert (out / "evaluation" / "metrics.json").is_file()
    html = (out / "report.html").read_text(encoding="utf-8")
    for section in ("answer", "benchmark", "fidelity"):  # the benchmark's answer and the set's evaluation
        assert f'<section id="{section}">' in html, section
    # the deliverables: the chosen setting's network trained on every labelled case, its card, its choice in the plan
    final = out / "final"
    card = json.loads((final / "model_card.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert plan["final"]["value"] == card["setting"] in results["order"] and plan["final"]["why"] == card["why"]
    assert (card["kind"] == "synthetic") == (card["setting"] == "ratio:0.5") == bool(card["labels"]["synthetic"])
    assert (final / "diffusion" / "pipeline" / "model_index.json").is_file() == (card["kind"] == "synthetic")
    assert (card["nnunet_raw"] is not None) == (card["kind"] == "synthetic")
    labelled = plan["fingerprint"]["num_images"]
    assert card["labels"]["real"]["images"] + card["labels"]["real"]["validation_images"] == labelled
    assert card["training"]["steps"] == 4 and card["recipe"]["train"]["steps"] == 4
    assert set(card["benchmark"]["rows"]) == {"baseline", "ratio:0.5"} and (final / "model_card.md").is_file()
    assert "final network" in html and card["why"] in html
    masks = out.parent / "masks"
    predicted = CliRunner().invoke(app, ["predict", str(final), str(data), "-o", str(masks)])
    assert predicted.exit_code == 0, predicted.output
    assert len(list(masks.glob("*.png"))) == labelled
    # not a terminal: every stage's progress shows as plain lines (a batch job's log shows life)
    for line in ("train-diffusion 2/2 loss", "generate 4/4 |", "train-seg 4/4 loss"):
        assert line in result.output, line

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = CliRunner().invoke(app, ["run", str(data), "-o", str(out)])
    assert again.exit_code == 0, again.output
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert changed == [] and "plan: " in again.output and "saved" in again.output

    if name == list(BUILTIN_DATASETS)[0]:  # the other branch: a benchmark whose synthetic row scored best
        results["settings"]["ratio:0.5"]["dice"]["mean"] = 1.0
        for run in results["runs"]:
            if run["setting"] == "ratio:0.5":
                run["case_dice"] = {case: 1.0 for case in run["case_dice"]}
        (bench / "results.json").write_text(json.dumps(results))
        shutil.rmtree(final)
        synthetic = CliRunner().invoke(app, ["run", str(data), "-o", str(out)])
        assert synthetic.exit_code == 0, synthetic.output
        card = json.loads((final / "model_card.json").read_text())
        assert card["setting"] == "ratio:0.5" and card["kind"] == "synthetic" and "beat the best free" in card["why"]
        # its own generator, trained on every labelled case, and a set drawn from it, mixed into the network
        trained_on = json.loads((final / "diffusion" / "training_data.json").read_text())["train_ids"]
        assert len(trained_on) == labelled and (final / "synth" / "manifest.jsonl").is_file()
        assert card["labels"]["synthetic"][0]["set"] == "synth" and card["labels"]["synthetic"][0]["images_used"] > 0
        # and real + synthetic as nnU-Net raw data whose folds keep each synthetic case with its layout's real case
        nnunet = final / card["nnunet_raw"]
        assert json.loads((nnunet / "dataset.json").read_text())["numTraining"] > labelled
        assert (nnunet / "splits_final.json").is_file()
        assert json.loads((out / "plan.json").read_text())["final"]["value"] == "ratio:0.5"
        assert "ratio:0.5" in (out / "report.html").read_text(encoding="utf-8")
        again = CliRunner().invoke(app, ["predict", str(final), str(data), "-o", str(out.parent / "masks2")])
        assert again.exit_code == 0, again.output


def test_plan_without_unlabelled_images_names_the_folder(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", unlabeled=0)
    result = CliRunner().invoke(app, ["run", str(data), "-o", str(tmp_path / "run"), "--plan-only"])
    assert result.exit_code == 2
    assert str(data / "unlabeled") in result.output and not (tmp_path / "run" / "plan.json").exists()


def test_plan_falls_back_to_augmented_styles_for_single_image_cases(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", cases=("p1", "p2", "p3", "p4"), per_case=1)
    plan = plan_run(data, device="cpu")
    assert plan_run(data).device == ("cuda" if torch.cuda.is_available() else "cpu")
    choice = plan.choices["diffusion.data.style_sampler"]
    assert choice.value == "augmented" and "single" in choice.why
    assert plan_run(write_tiny_dataset(tmp_path / "more"), device="cpu").choices[
        "diffusion.data.style_sampler"].value == "multi_patch"


def test_plan_has_no_control_that_repeats_the_baseline(tmp_path: Path) -> None:
    """A run trains on every labelled case, so an all-labelled row would be the baseline's runs again."""
    plan = plan_run(write_tiny_dataset(tmp_path / "data"), device="cpu")
    assert "low_label" not in plan.choices
    assert plan.choices["controls"].value == ["heavy_augmentation", "self_training"]


def test_plan_crops_images_larger_than_the_recipe(tmp_path: Path) -> None:
    plan = plan_run(write_tiny_dataset(tmp_path / "data", size=96), device="cpu")
    assert plan.choices["diffusion.model.image_size"].value == 64
    assert plan.choices["segmentation.train.patch_size"].value == 64


def test_plan_for_a_gpu_job_made_without_one(tmp_path: Path) -> None:
    data, out = write_tiny_dataset(tmp_path / "data", size=96), tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(data), "-o", str(out), "--plan-only", "--plan-for", "cuda"])
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    choices = plan["choices"]
    assert plan["device"] == "cuda" and choices["diffusion_config"]["value"] == "base"
    # the GPU recipe draws up to 256 px: the 96 px images are its size, no crop; every fold runs
    assert choices["diffusion.model.image_size"]["value"] == 96 and "segmentation.train.patch_size" not in choices
    assert choices["run_folds"]["value"] is None and choices["generation.per_mask"]["value"] == 10


def test_edited_plan_with_an_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    data, out = write_tiny_dataset(tmp_path / "data"), tmp_path / "run"
    assert CliRunner().invoke(app, ["run", str(data), "-o", str(out), "--plan-only"]).exit_code == 0
    _edit(out / "plan.json", {"diffusion.train.stepz": 3})
    result = CliRunner().invoke(app, ["run", str(data), "-o", str(out), "--plan-only"])
    assert result.exit_code == 2 and "stepz" in result.output
    plan = json.loads((out / "plan.json").read_text())
    del plan["choices"]["diffusion.train.stepz"]
    plan["choices"]["folds"]["why"] = ""
    (out / "plan.json").write_text(json.dumps(plan))
    result = CliRunner().invoke(app, ["run", str(data), "-o", str(out), "--plan-only"])
    assert result.exit_code == 2 and "choices.folds.why" in result.output
