"""One property across the command line: whatever folder a command reads and wherever its output
is pointed, the command succeeds or refuses cleanly, and it never writes to what it reads.

Hypothesis draws a command that reads a dataset or run folder, where its ``--out`` goes (a fresh
path, an empty folder, the input itself, a folder inside the input, the folder holding the input,
an existing folder of another kind), ``--overwrite`` on or off, a small or absurd ``--set`` value,
and an odd file in an input (an empty file, text named ``.png``, a folder where a file belongs).
Every command line then holds the promises every command makes:

- exit code 0 or 2 (``data check``: 0, or 1 for a dataset with errors), no traceback;
- every input folder byte-identical afterwards, file modes included;
- a refused command leaves no output: a new ``--out`` does not exist, an existing one is unchanged;
- an ``--out`` at, inside or around an input, or on a non-empty folder of another kind, is refused.

The world (a 16 px dataset, a diffusion run, a segmentation run, a synthetic set, an nnU-Net raw
folder) is built once; each example runs on a fresh copy. Examples are few and derandomized, so a
failure reproduces.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import TINY_DIFFUSION_MODEL, write_tiny_dataset, write_untrained_run
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from segsynth.cli import app

#: Examples per command; more for a longer search: SEGSYNTH_PROPERTY_EXAMPLES=50 pytest tests/test_property_cli.py
PROPERTY = settings(max_examples=int(os.environ.get("SEGSYNTH_PROPERTY_EXAMPLES", "6")), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIFFUSION = {"model": TINY_DIFFUSION_MODEL,
             "train": {"steps": 1, "batch_size": 2, "warmup": 0, "log_every": 1, "sample_every": 0,
                       "checkpoint_every": 1, "mixed_precision": "no"},
             "sampling": {"steps": 1, "grid_rows": 1}}
SEG = {"network": {"channels": [8, 16], "strides": [2], "num_res_units": 0},
       "train": {"steps": 2, "val_every": 2, "batch_size": 2, "augment": "none"}}
AUTOENCODER = {"model": {"block_out_channels": [8, 8, 8], "latent_channels": 2, "layers_per_block": 1, "norm_num_groups": 4},
               "tile_size": 16, "steps": 1, "batch_size": 2, "eval_tiles": 2, "checkpoint_every": 1, "log_every": 1}


# --- the world every example copies ---------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    """``data``, ``diffusion_run``, ``seg_run``, ``synth``, ``nnunet`` and ``configs`` in one folder."""
    root = tmp_path_factory.mktemp("world")
    configs = root / "configs"
    configs.mkdir()
    for name, body in {"diffusion": DIFFUSION, "seg": SEG, "autoencoder": AUTOENCODER}.items():
        (configs / f"{name}.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    data = write_tiny_dataset(root / "data", cases=("p1", "p2", "p3", "p4"))
    write_untrained_run(root / "diffusion_run", data)
    runner = CliRunner()
    for args in (
        ["train-seg", str(data), "-o", str(root / "seg_run"), "-c", str(configs / "seg.yaml")],
        ["generate", str(root / "diffusion_run"), "-o", str(root / "synth"), "-n", "8", "--steps", "1",
         "--layouts", "variants", "--per-mask", "1"],
        ["export", str(data), "--format", "nnunet", "-o", str(root / "nnunet")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    # written after the world's runs so the runs do not take it for their own input
    (configs / "benchmark.yaml").write_text(yaml.safe_dump({
        "folds": 2, "run_folds": [0], "seeds": [0], "settings": ["ratio:0.5"], "val_fraction": 0.5,
        "diffusion_config": str(configs / "diffusion.yaml"), "segmentation_config": str(configs / "seg.yaml"),
        "generation": {"n": 2, "steps": 1, "batch_size": 2},
    }), encoding="utf-8")
    return root


def _foreign(root: Path, kind: str) -> Path:
    """An existing output path holding something that is not the command's output."""
    path = root / f"existing-{kind}"
    if kind == "file":
        path.write_text("a user's notes\n", encoding="utf-8")
    elif kind == "unknown":
        path.mkdir()
        (path / "notes.txt").write_text("a user's notes\n", encoding="utf-8")
    else:
        shutil.copytree(root / {"dataset": "data"}.get(kind, kind), path)
    return path


# --- snapshots ------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Mode and content hash (or link target) of ``root`` and of everything below it."""
    if not root.exists() and not root.is_symlink():
        return {}
    shot = {}
    for path in [root, *sorted(root.rglob("*"))] if root.is_dir() and not root.is_symlink() else [root]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            body = "->" + str(path.readlink())
        elif stat.S_ISREG(mode):
            body = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            body = "<dir>"
        shot[path.relative_to(root.parent).as_posix()] = (mode, body)
    return shot


# --- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A command line over the world: its words (``{data}`` stands for the world's ``data`` folder,
    and so on), the world folders it reads, how its output is placed, and what it may exit with."""

    words: tuple[str, ...]
    reads: tuple[str, ...]
    out: str | None = None  # "dir" or "file": what --out names; None: no --out
    kind: str | None = None  # the kind of folder the command writes (an existing one may be replaced)
    overwrite: bool = False  # takes --overwrite/--no-overwrite
    out_optional: bool = False
    resumable: bool = False  # writes into an existing folder to continue (an unrecognised one too)
    sets: tuple[tuple[str, tuple[object, ...]], ...] = ()  # --set keys and the values drawn for them
    flags: tuple[tuple[str, tuple[object, ...]], ...] = ()  # named options and the values drawn for them
    codes: frozenset[int] = frozenset({0, 2})

    @property
    def name(self) -> str:
        return " ".join(w for w in self.words[:2] if not w.startswith(("{", "-")))


STEPS = (0, -1, 1, 2)
SIZES = (0, -16, 15, 16)
COMMANDS = [
    Command(("data", "check", "{data}", "--json"), ("data",), codes=frozenset({0, 1})),
    Command(("data", "info", "{data}", "--json"), ("data",), out="file", out_optional=True),
    Command(("data", "import-nnunet", "{nnunet}"), ("nnunet",), out="dir", kind="dataset", overwrite=True),
    Command(("export", "{data}", "--format", "tif"), ("data",), out="dir", kind="dataset", overwrite=True),
    Command(("export", "{data}", "--format", "png"), ("data",), out="dir", kind="dataset", overwrite=True),
    Command(("export", "{synth}", "--format", "nnunet", "--merge-real", "{data}"), ("synth", "data"), out="dir",
            kind="nnunet_raw", overwrite=True, flags=(("--seed", (-1, 3)), ("--file-ending", (".tif", ".jpg")))),
    Command(("train-diffusion", "{data}", "-c", "{configs}/diffusion.yaml"), ("data", "configs"), out="dir", resumable=True,
            kind="diffusion_run", sets=(("train.steps", STEPS), ("train.batch_size", (0, -2, 1)),
                                        ("model.image_size", SIZES), ("train.lr", (-1.0, ".inf", 0.001)),
                                        ("train.seed", (-1, 3)))),
    Command(("train-autoencoder", "{data}", "-c", "{configs}/autoencoder.yaml"), ("data", "configs"), out="dir", resumable=True,
            kind="autoencoder_run", sets=(("steps", STEPS), ("batch_size", (0, -2, 2)), ("tile_size", SIZES))),
    Command(("train-seg", "{data}", "-c", "{configs}/seg.yaml"), ("data", "configs"), out="dir", resumable=True, kind="seg_run",
            sets=(("train.steps", STEPS), ("train.batch_size", (0, -2, 2)), ("train.val_every", (0, -1, 1)),
                  ("train.patch_size", (0, 7, 8)), ("train.seed", (-1, 3)), ("split.seed", (-1, 3)))),
    Command(("train-seg", "{data}", "-c", "{configs}/seg.yaml", "--synthetic", "{synth}"),
            ("data", "configs", "synth"), out="dir", resumable=True, kind="seg_run"),
    Command(("generate", "{diffusion_run}", "-n", "2", "--steps", "1"), ("diffusion_run", "data"), out="dir", resumable=True,
            kind="synthetic_set", flags=(("--steps", STEPS), ("-n", (0, -1, 1)), ("--batch-size", (0, -1, 1)),
                                         ("--size", SIZES), ("--num-refs", (0, -1, 1)),
                                         ("--seed", (-1, 3)))),
    Command(("evaluate-seg", "{seg_run}", "{data}"), ("seg_run", "data"), out="file", out_optional=True),
    Command(("predict", "{seg_run}", "{data}"), ("seg_run", "data"), out="dir", resumable=True,
            flags=(("--window", SIZES), ("--overlap", (-0.5, 1.0, 0.5)))),
    Command(("evaluate-synth", "{synth}", "--real", "{data}", "--seg-run", "{seg_run}"), ("synth", "data", "seg_run"),
            out="dir", resumable=True, kind="evaluation", flags=(("--max-samples", (0, -1, 1)), ("--seed", (-1, 3)))),
    Command(("report", "{seg_run}", "{synth}"), ("seg_run", "synth"), out="file"),
    Command(("benchmark", "{data}", "-c", "{configs}/benchmark.yaml"), ("data", "configs"), out="dir", resumable=True,
            kind="benchmark", sets=(("folds", (0, 1, -2)), ("generation.n", (0, -1)), ("seeds", ([], [-1])))),
    Command(("run", "{data}", "--plan-only", "--plan-for", "cpu"), ("data",), out="dir", resumable=True, kind="run"),
    Command(("recipes",), ()),
]
#: Commands that succeed in seconds on the world's inputs: they may be drawn to run to the end.
#: The benchmark runs only when refused (an --out that must be refused, or an absurd --set).
SLOW = {"benchmark"}

PLACES = ("fresh", "empty", "at", "inside", "around", "configs", "unknown", "file", "dataset", "diffusion_run")
ODD = ("none", "empty", "text", "folder")
#: The files of each input folder that may be made odd: images, masks and every record a command reads.
ODD_TARGETS = {
    "data": ("images/p1_0.png", "masks/p2_1.png", "unlabeled/u1_0.png", "dataset.json"),
    "seg_run": ("best/model.json", "best/model.safetensors", "split.json", "config.yaml"),
    "diffusion_run": ("training_data.json", "pipeline/model_index.json", "pipeline/unet/config.json",
                      "pipeline/unet/diffusion_pytorch_model.safetensors"),
    "synth": ("manifest.jsonl", "generation.json", "dataset.json"),
    "nnunet": ("dataset.json", "imagesTr/p1_0_0000.png", "labelsTr/p2_1.png"),
}


def odd_file(root: Path, odd: str, target: str) -> None:
    """Make ``root/target`` an empty file, text where an image or a record belongs, or a folder."""
    path = root / target
    if odd == "empty":
        path.write_bytes(b"")
    elif odd == "text":
        path.write_bytes(b"this is not an image\n")
    elif odd == "folder":
        path.unlink()
        path.mkdir()
        (path / "inner.png").write_bytes(b"")


@dataclass
class Case:
    argv: list[str]
    out: Path | None
    place: str
    refusal_expected: bool
    clean: bool  # valid inputs, a fresh or empty --out and no odd value: must succeed


def build_case(root: Path, command: Command, draw: Callable) -> Case:
    """Draw where the output goes and which values are odd, and write the world to match."""
    argv = [str(root / w[1:w.index("}")]) + w[w.index("}") + 1:] if w.startswith("{") else w for w in command.words]
    clean = True
    targets = [f"{folder}/{name}" for folder in command.reads for name in ODD_TARGETS.get(folder, ())]
    odd = draw(st.sampled_from(ODD if targets else ("none",)), label="odd file")
    if odd != "none":
        odd_file(root, odd, draw(st.sampled_from(targets), label="target"))
        clean = False
    for key, values in command.sets:
        if draw(st.booleans(), label=f"set {key}"):
            value = draw(st.sampled_from(values), label=key)
            argv += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
            clean = False
    for flag, values in command.flags:
        if draw(st.booleans(), label=f"flag {flag}"):
            value = draw(st.sampled_from(values), label=flag)
            if flag in argv:
                del argv[argv.index(flag):argv.index(flag) + 2]
            argv += [flag, str(value)]
            clean = False
    out, place, refusal = None, "none", False
    if command.out is not None and not (command.out_optional and draw(st.booleans(), label="no --out")):
        place = draw(st.sampled_from([p for p in PLACES if p != "configs" or "configs" in command.reads]), label="--out")
        primary = root / command.reads[0]
        name = "out.json" if command.out == "file" else "out"
        if place == "fresh":
            out = root / "fresh" / name
        elif place == "empty":
            out = root / "empty"
            out.mkdir()
        elif place == "at":
            out = primary
        elif place == "inside":
            out = primary / name
        elif place == "around":
            out = root
        elif place == "configs":
            out = root / "configs"  # the folder holding the command's --config file
        else:
            out = _foreign(root, place)
        # An existing non-empty folder (or file) that is not the command's kind is never written to;
        # a file output replaces an existing file (as any -o FILE does) but never a folder.
        foreign = place in {"dataset", "diffusion_run"} or (place == "unknown" and not command.resumable)
        refusal = place in {"at", "inside", "around"} or (foreign and place != command.kind)
        if place == "configs":
            clean = False  # the folder of its --config file: allowed, the file itself stays as it is
        if command.out == "file":
            refusal = refusal or place == "empty"
            clean = clean and place != "empty"
        else:
            refusal = refusal or place == "file"
        if place in {"dataset", "diffusion_run"} and place == command.kind:
            clean = False  # replacing one of its own kind: allowed with --overwrite or --resume
        argv += ["--out", str(out)]
        if command.overwrite and draw(st.booleans(), label="--overwrite"):
            argv.append("--overwrite")
    clean = clean and place in {"fresh", "empty", "none"}
    return Case(argv, out, place, refusal, clean)


def relocate(root: Path, original: Path) -> None:
    """Point the copy's records (a run's data root, the benchmark's config paths) at the copy."""
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".jsonl", ".yaml"}:
            text = path.read_text(encoding="utf-8")
            if str(original) in text:
                path.write_text(text.replace(str(original), str(root)), encoding="utf-8")


def run_case(root: Path, command: Command, case: Case) -> None:
    inputs = {name: snapshot(root / name) for name in ("data", "diffusion_run", "seg_run", "synth", "nnunet", "configs")}
    outside = snapshot(root)  # everything, for a refused command
    result = CliRunner().invoke(app, case.argv)
    shown = f"segsynth {' '.join(case.argv)}\nexit {result.exit_code}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{shown}\n{result.exception!r}"
    assert "Traceback" not in result.output, shown
    assert result.exit_code in command.codes, shown
    for name, before in inputs.items():
        after = snapshot(root / name)
        if name == "configs":  # the config files are the inputs; a run may sit next to them
            after = {key: value for key, value in after.items() if key in before}
        assert after == before, f"{name} changed:\n{shown}"
    if result.exit_code != 0:
        assert snapshot(root) == outside, f"a refused command wrote something:\n{shown}"
    if case.refusal_expected:
        assert result.exit_code == 2, f"--out {case.place} was not refused:\n{shown}"
    if case.clean and command.codes == frozenset({0, 2}):
        assert result.exit_code == 0, f"a valid command line failed:\n{shown}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command.words[:4]))
@PROPERTY
@given(data=st.data())
def test_every_command_succeeds_or_refuses_and_never_touches_its_inputs(world: Path, command: Command, data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "world"
        shutil.copytree(world, root, symlinks=True)
        relocate(root, world)
        case = build_case(root, command, data.draw)
        event(f"--out {case.place}")  # --hypothesis-show-statistics: where the output went
        if command.name in SLOW and not case.refusal_expected and case.clean:
            return  # a whole benchmark: tested in test_benchmark*.py
        run_case(root, command, case)


@pytest.mark.parametrize("argv", [
    ["train-diffusion", "{data}", "-c", "{configs}/diffusion.yaml"],
    ["train-seg", "{data}", "-c", "{configs}/seg.yaml"],
    ["generate", "{diffusion_run}", "-n", "1", "--steps", "1"],
    ["evaluate-synth", "{synth}", "--real", "{data}", "--seg-run", "{seg_run}"],
    ["run", "{data}", "--plan-only"],
], ids=lambda argv: argv[0])
def test_a_continuing_command_never_writes_into_a_folder_of_another_kind(world: Path, tmp_path: Path, argv) -> None:
    """Commands that continue into an existing --out refuse a dataset or another stage's run there."""
    shutil.copytree(world, tmp_path / "world", symlinks=True)
    root = tmp_path / "world"
    relocate(root, world)
    for kind in ("dataset", "diffusion_run"):
        out = _foreign(root, kind)
        if argv[0] == "train-diffusion" and kind == "diffusion_run":
            continue  # its own kind: continued with --resume
        before = snapshot(out)
        words = [str(root / w[1:w.index("}")]) + w[w.index("}") + 1:] if w.startswith("{") else w for w in argv]
        result = CliRunner().invoke(app, [*words, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert f"holds a {kind} folder" in result.output, result.output
        assert snapshot(out) == before


# --- sizes that cannot fit: refused before start, not a crash or a run that never ends -------------

#: Each a real ``segsynth`` process under a 5 GiB address-space limit: the estimate has to refuse
#: before allocating. The limit and the timeout keep the test from taking the machine down.
HUGE = [
    ["train-diffusion", "{data}", "-c", "{configs}/diffusion.yaml", "--set", "model.image_size=65536"],
    ["train-diffusion", "{data}", "-c", "{configs}/diffusion.yaml", "--set", "train.batch_size=1000000"],
    ["train-seg", "{data}", "-c", "{configs}/seg.yaml", "--set", "train.batch_size=1000000"],
    ["train-seg", "{data}", "-c", "{configs}/seg.yaml", "--set", "train.patch_size=100000"],
    ["generate", "{diffusion_run}", "-n", "1", "--steps", "1", "--size", "100000"],
    ["predict", "{seg_run}", "{data}", "--window", "100000"],
]


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (5 << 30, 5 << 30))


@pytest.mark.slow
@pytest.mark.parametrize("argv", HUGE, ids=[" ".join(a[i] for i in (0, -1)) for a in HUGE])
def test_a_size_that_cannot_fit_is_refused_before_start(world: Path, tmp_path: Path, argv: list[str]) -> None:
    import subprocess
    import sys

    words = [str(world / w[1:w.index("}")]) + w[w.index("}") + 1:] if w.startswith("{") else w for w in argv]
    out = tmp_path / "out"
    command = [sys.executable, "-c", "import sys; from segsynth.cli import main; sys.argv[0] = 'segsynth'; main()",
               *words, "--out", str(out)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, preexec_fn=_limit_memory,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after 120 s: segsynth {' '.join(words)}")
    assert done.returncode == 2 and "unexpected" not in done.stderr, done.stderr
    assert not out.exists()
