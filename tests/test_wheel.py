"""The wheel works anywhere: built from a copy of the sources, installed into a fresh environment and
run from a folder outside the checkout, it plans a run with its own recipes. Nothing is downloaded:
the wheel is built without build isolation and installed without dependencies, and the fresh
environment borrows this one's installed packages (torch and the rest) through a ``.pth`` file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from PIL import Image

import segsynth

ROOT = Path(__file__).resolve().parents[1]
#: What a source distribution holds: the package, its metadata and the README it points to.
SOURCES = ("pyproject.toml", "README.md")


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_wheel_installed_elsewhere_plans_a_run_with_its_own_recipes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "segsynth", src / "segsynth", ignore=shutil.ignore_patterns("__pycache__"))
    for name in SOURCES:
        shutil.copy2(ROOT / name, src / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index",
                  "-w", str(tmp_path / "dist"), str(src)], cwd=tmp_path)
    assert "deprecated" not in built.lower(), [line for line in built.splitlines() if "deprecat" in line.lower()]
    wheel = next((tmp_path / "dist").glob("segsynth-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         cwd=tmp_path)
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path).strip()
    # this environment's packages come after the wheel's own on the fresh one's path
    Path(purelib, "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    cli = str(venv / "bin" / "segsynth")
    where = _run([str(python), "-c", "import segsynth; print(segsynth.__file__)"], cwd=work, env=env).strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where
    assert _run([cli, "--version"], cwd=work, env=env).strip() == f"segsynth {segsynth.__version__}"
    listed = _run([cli, "recipes"], cwd=work, env=env)
    assert "tiny" in listed and "base" in listed

    _run([cli, "data", "builtin", "nuclei-fluo", "-o", "data"], cwd=work, env=env)
    _run([cli, "run", "data", "-o", "RUN", "--plan-only", "--plan-for", "cpu"], cwd=work, env=env)
    plan = json.loads((work / "RUN" / "plan.json").read_text(encoding="utf-8"))
    assert plan["choices"]["diffusion_config"]["value"] == "tiny"
    assert plan["choices"]["diffusion.train.steps"]["why"] == "the tiny recipe's training length"

    # a tiny network trained and applied by the installed wheel: one mask per image, each of its image's size
    _run([cli, "train-seg", "data", "-o", "seg", "--set", "train.steps=2", "--set", "train.val_every=1",
          "--set", "train.batch_size=2", "--set", "network.channels=[8,16]", "--set", "network.strides=[2]"],
         cwd=work, env=env)
    _run([cli, "predict", "seg", "data", "-o", "masks"], cwd=work, env=env)
    images = sorted((work / "data" / "images").iterdir())
    masks = {path.stem: path for path in (work / "masks").glob("*.png")}
    assert sorted(masks) == sorted(path.stem for path in images)
    for image in images:
        with Image.open(image) as shown, Image.open(masks[image.stem]) as mask:
            assert mask.size == shown.size, image.name
