"""Strict, typed configuration shared by every stage.

Unknown keys, wrong types and impossible values fail *before* any work starts, with the key's
dotted path in the message (diffusers warns and ignores; we refuse, because a typo in a config
silently changing an experiment is worse than a crash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from segsynth.io.atomic import atomic_write_text
from segsynth.io.yaml_file import read_yaml
from segsynth.recipes import config_source, recipe_names


#: The generation samplers every config and command accepts (their factories are
#: :data:`segsynth.diffusion.schedulers.SAMPLERS`, which a test holds to exactly these names). Declared
#: here, below every stage's config, so that configs read by the command line stay free of diffusers.
SamplerName = Literal["ddim", "dpmpp", "unipc"]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment,
    and every float (nested in lists and dicts too) must be finite: ``inf``/``nan`` pass every
    range check (``inf >= 0``, ``nan`` compares false both ways) and turn into NaN weights or black
    images many steps later."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and every bad key."""


T = TypeVar("T", bound=BaseModel)


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Turn pydantic's error list into one line per bad key: ``source: key.path: problem``."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def parse_config(cls: type[T], data: dict[str, Any], source: str = "<config>") -> T:
    """Validate ``data`` as ``cls`` and raise :class:`ConfigError` with every bad key named."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(cls: type[T], path: str | Path | None, overrides: dict[str, Any] | None = None) -> T:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply dotted overrides.

    Args:
        cls: the pydantic model of the config.
        path: a YAML file, or the name of a shipped recipe (``tiny``; see :mod:`segsynth.recipes`)
            when no file of that name exists.
        overrides: ``{"train.steps": 10}``-style values applied after the file.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = config_source(path)
        source = str(path)
        if isinstance(path, Path) and path.parent == Path(".") and not path.exists():
            raise ConfigError(f"{path}: cannot read config (no such file); shipped recipes: {', '.join(recipe_names())}")
        loaded = read_yaml(path, ConfigError)  # a key given twice is refused, not silently dropped
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {dotted}: {part} is not a section")
        node[leaf] = value
    return parse_config(cls, data, source)


def save_resolved_config(config: BaseModel, path: str | Path) -> Path:
    """Write the fully resolved config (defaults filled in) next to a run's outputs."""
    return atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
