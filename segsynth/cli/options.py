"""The options every command spells the same way, and the one way a command builds its config.

A command with a config takes ``-c/--config FILE`` and any number of ``--set key.path=value``;
its own named options (``--seed``, ``--mix``, ...) are dotted overrides too, applied before
``--set`` so an explicit ``--set`` has the last word.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from segsynth.config import ConfigError, load_config
from segsynth.io.yaml_file import parse_yaml_text

T = TypeVar("T", bound=BaseModel)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config, or a shipped recipe by name (e.g. tiny; see segsynth recipes); --set overrides its values.")
]
SetOption = Annotated[
    list[str], typer.Option("--set", help="Override a config value: key.path=value, read as YAML (repeatable).")
]
ResumeOption = Annotated[bool, typer.Option("--resume/--no-resume", metavar="", help="Continue from the newest checkpoint in --out.")]
TrainSeedOption = Annotated[int | None, typer.Option("--seed", help="Seed of the run (sets train.seed).")]


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["train.steps=10", "data.style_sampler=nearby"]`` -> ``{"train.steps": 10, ...}`` (values read as YAML)."""
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.steps=100")
        overrides[key.strip()] = parse_yaml_text(value, f"--set {item!r}", ConfigError)
    return overrides


def config_options(cls: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """The options among ``values`` (a command's parameters) that are top-level fields of ``cls``.

    A command names each such option exactly as its config field, so this is the whole mapping:
    no hand-kept list of keys can drift from the config.
    """
    return {name: value for name, value in values.items() if name in cls.model_fields}


def command_config(cls: type[T], config: Path | None, sets: list[str], named: dict[str, Any] | None = None) -> T:
    """The config of a command: ``config`` (or the defaults), then ``named`` options that were given
    (None means not given), then ``--set`` values.

    Raises:
        ConfigError: an unreadable file, a malformed ``--set`` or a value the config refuses.
    """
    overrides = {key: value for key, value in (named or {}).items() if value is not None}
    return load_config(cls, config, {**overrides, **parse_overrides(sets)})
