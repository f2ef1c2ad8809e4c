"""Files from elsewhere never run code: no pickle anywhere, crafted files refused, no path escapes."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_dataset
from typer.testing import CliRunner

from segsynth.cli import app
from segsynth.diffusion.objective import ObjectiveConfig, make_train_scheduler
from segsynth.diffusion.pipeline import SegSynthPipeline
from segsynth.io.checkpoint import CheckpointManager, load_state_tree
from segsynth.models.config import ModelConfig
from segsynth.models.model import SegSynthModel
from segsynth.seg.config import NetworkConfig
from segsynth.seg.networks import build_network, load_network, save_network

torch.set_num_threads(1)

PACKAGE = Path(__file__).resolve().parents[1] / "segsynth"


class CreatesAFile:
    """Unpickling this object creates ``self.path``: the side effect a malicious checkpoint has."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def malicious_pickle(target: Path, marker: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as handle:
        pickle.dump({"weight": CreatesAFile(marker)}, handle)
    return target


def malicious_torch_file(target: Path, marker: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": CreatesAFile(marker)}, target)
    return target


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=16, image_channels=1, num_classes=2, block_out_channels=(8, 16), attention_levels=(False, True),
        style={"encoder_channels": (8, 16), "dim": 16, "num_refs": 2},
    )
    pipe = SegSynthPipeline.from_model(SegSynthModel.from_config(cfg), make_train_scheduler(ObjectiveConfig()))
    pipe.save_pretrained(tmp_path / "run" / "pipeline")
    return tmp_path / "run" / "pipeline"


def test_no_pickle_loading_anywhere_in_the_package() -> None:
    """Every load goes through safetensors or JSON; a torch.load must say weights_only=True."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            code = line.split("#", 1)[0]
            if re.search(r"\bimport pickle\b|\bpickle\.(loads?|Unpickler)\b|\bcloudpickle\b|\bdill\b|\bjoblib\.load\b|allow_pickle\s*=\s*True", code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
            if re.search(r"\bnp\.load\(", code) and "allow_pickle=False" not in code:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
            if re.search(r"yaml\.(unsafe_)?load\(|yaml\.full_load", code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("maker", [malicious_pickle, malicious_torch_file], ids=["pickle", "torch.save"])
def test_pickled_pipeline_weights_are_refused_without_unpickling(pipeline_dir: Path, tmp_path: Path, maker) -> None:
    marker = tmp_path / "pwned"
    (pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    maker(pipeline_dir / "unet" / "diffusion_pytorch_model.bin", marker)
    data = write_tiny_dataset(tmp_path / "data")
    result = CliRunner().invoke(app, ["generate", str(pipeline_dir.parent), "--out", str(tmp_path / "synth"), "-n", "1",
                                      "--steps", "1", "--layout-data", str(data)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    message = " ".join(result.output.split())
    assert "diffusion_pytorch_model.bin" in message and "never pickle" in message
    # diffusers' own loader, called directly, refuses it too (safetensors only)
    with pytest.raises(OSError, match="safetensors"):
        SegSynthPipeline.from_pretrained(pipeline_dir)
    assert not marker.exists()
    assert not (tmp_path / "synth").exists()


def test_pipeline_naming_foreign_code_is_refused(pipeline_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    index_path = pipeline_dir / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["unet"] = ["evil_unet", "EvilUNet"]
    index_path.write_text(json.dumps(index), encoding="utf-8")
    (pipeline_dir / "unet" / "evil_unet.py").write_text(f"open({str(marker)!r}, 'w')\n", encoding="utf-8")
    data = write_tiny_dataset(tmp_path / "data")
    args = ["generate", str(pipeline_dir), "--out", str(tmp_path / "synth"), "-n", "1", "--steps", "1",
            "--layout-data", str(data)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "evil_unet.py" in " ".join(result.output.split())
    (pipeline_dir / "unet" / "evil_unet.py").unlink()
    index["unet"] = ["os", "system"]
    index_path.write_text(json.dumps(index), encoding="utf-8")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "only segsynth, diffusers and transformers" in " ".join(result.output.split())
    assert not marker.exists()


def test_crafted_checkpoint_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    manager = CheckpointManager(tmp_path / "run")
    path = manager.save(2, {"w": torch.ones(2), "step": 2})
    malicious_torch_file(path / "state.safetensors", marker)
    with pytest.raises(ValueError, match="state.safetensors: unreadable checkpoint tensors"):
        load_state_tree(path)
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        manager.latest()
    assert not marker.exists()


def test_crafted_segmentation_network_is_refused_by_evaluate_seg(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cfg = NetworkConfig(channels=(4, 8), strides=(2,), num_res_units=0)
    run = tmp_path / "run"
    save_network(run / "best", build_network(cfg, 1, 2), cfg, 1, ["background", "lesion"])
    malicious_pickle(run / "best" / "model.safetensors", marker)
    with pytest.raises(ValueError, match="model.safetensors: weights do not load"):
        load_network(run / "best")
    data = write_tiny_dataset(tmp_path / "data")
    result = CliRunner().invoke(app, ["evaluate-seg", str(run), str(data)])
    assert result.exit_code == 2 and "model.safetensors" in " ".join(result.output.split()), result.output
    assert not marker.exists()


def test_manifest_entries_cannot_point_outside_the_set(pipeline_dir: Path, tmp_path: Path) -> None:
    """A resumed set whose manifest names ``../`` files is refused, and the outside file is untouched."""
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "synth"
    args = ["generate", str(pipeline_dir), "--out", str(out), "-n", "3", "--steps", "1", "--layout-data", str(data),
            "--styles", str(data)]
    assert CliRunner().invoke(app, args).exit_code == 0
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"keep me")
    manifest = out / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    rows[1]["image"] = "../precious.png"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "manifest.jsonl: line 2" in message and "inside the synthetic set" in message
    assert outside.read_bytes() == b"keep me"
