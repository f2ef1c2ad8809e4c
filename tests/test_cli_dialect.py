"""One command-line dialect: the same flags for the same things on every command, and a start-up
that loads torch only in the commands that need it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

import segsynth
from segsynth.cli import app
from segsynth.cli.options import command_config

#: Commands that write nothing, or write only inside the folder they read (so need no --out).
NO_OUT = {"data check": "reads only", "recipes": "lists the shipped recipes"}
CONFIG_COMMANDS = {"train-diffusion", "train-autoencoder", "train-seg", "benchmark", "generate", "evaluate-synth"}
SEED_COMMANDS = {"train-diffusion", "train-autoencoder", "train-seg", "generate", "data builtin", "export", "evaluate-synth"}
RESUME_COMMANDS = {"train-diffusion", "train-autoencoder", "train-seg", "generate"}
DEVICE_COMMANDS = {"generate"}
HEAVY = ("torch", "diffusers", "monai")


def _commands(group: TyperGroup, prefix: str = "") -> dict[str, typer.core.TyperCommand]:
    """Every leaf command by its full name (``data check``)."""
    found: dict[str, typer.core.TyperCommand] = {}
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            found |= _commands(command, f"{prefix}{name} ")
        else:
            found[f"{prefix}{name}"] = command
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _options(command: typer.core.TyperCommand) -> dict[str, TyperOption]:
    """Each option by its long name (``--out``), help excluded."""
    return {
        next(o for o in p.opts if o.startswith("--")): p
        for p in command.params
        if isinstance(p, TyperOption) and p.name != "help"
    }


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_speaks_the_dialect(name: str) -> None:
    options = _options(COMMANDS[name])
    if name not in NO_OUT:
        assert "--out" in options and "-o" in options["--out"].opts, f"{name}: writes, so needs -o/--out"
    has_config = "--config" in options
    assert has_config == (name in CONFIG_COMMANDS), f"{name}: config commands are {sorted(CONFIG_COMMANDS)}"
    if has_config:
        assert "-c" in options["--config"].opts and options["--set"].multiple, f"{name}: -c/--config with --set k=v"
    for flag, commands in (("--seed", SEED_COMMANDS), ("--resume", RESUME_COMMANDS), ("--device", DEVICE_COMMANDS)):
        assert (flag in options) == (name in commands), f"{name}: {flag} belongs to exactly {sorted(commands)}"
    for long, option in options.items():
        if option.is_flag and not option.is_eager:
            assert option.secondary_opts == [f"--no-{long[2:]}"], f"{name}: boolean {long} needs {long}/--no-{long[2:]}"
        if option.is_flag:  # the help shows the switch pair, not a type
            assert option.metavar == "", f"{name}: boolean {long} shows a type in --help; give it metavar=\"\""


def test_app_has_version_and_short_help() -> None:
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"segsynth {segsynth.__version__}"
    for argv in (["-h"], ["data", "check", "-h"], ["train-seg", "-h"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0 and "Usage:" in result.output, argv


def test_no_help_screen_shows_a_type_for_a_flag() -> None:
    """A flag takes no value: ``-h/--help``, ``--quick``, ``--resume`` show no ``<bool>`` on any screen."""
    runner = CliRunner()
    screens = [[], ["data"], *(name.split() for name in COMMANDS)]
    for argv in screens:
        result = runner.invoke(app, [*argv, "-h"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "Show this message and exit" in result.output, argv
        assert "<bool>" not in result.output, (argv, result.output)


def test_named_options_are_overrides_and_set_has_the_last_word() -> None:
    from segsynth.seg.config import SegTrainConfig

    cfg = command_config(SegTrainConfig, None, ["train.seed=7"], {"train.seed": 3, "train.steps": None})
    assert cfg.train.seed == 7 and cfg.train.steps == SegTrainConfig().train.steps
    assert command_config(SegTrainConfig, None, [], {"train.seed": 3}).train.seed == 3
    bad = CliRunner().invoke(app, ["train-seg", "data", "-o", "out", "--set", "train.seed"])
    assert bad.exit_code == 2 and "expected key=value" in bad.output


def test_start_up_imports_no_torch(tiny_dataset: Path) -> None:
    """``import segsynth``, ``segsynth --help`` and ``segsynth data check`` run without torch,
    diffusers or MONAI, which cost seconds to import; a command that trains imports them itself."""
    script = (
        "import sys\n"
        "import segsynth, segsynth.cli\n"
        "from segsynth.cli import main\n"
        f"for argv in (['--help'], ['data', 'check', {str(tiny_dataset)!r}]):\n"
        "    sys.argv = ['segsynth', *argv]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exit:\n"
        "        assert not exit.code, (argv, exit.code)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout[-2000:]


def test_every_public_name_still_imports_from_the_package() -> None:
    for name in segsynth.__all__:
        assert getattr(segsynth, name) is not None, name
    assert set(segsynth.__all__) <= set(dir(segsynth))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        segsynth.nope  # noqa: B018
