"""Check a model folder's ``config.json`` against the weights it ships, before anything is allocated.

``from_pretrained`` builds the model its config describes and only then reads the weights, so a
tampered config (``block_out_channels: [100000, 100000]``) allocates tens of GiB, or hangs, before
any mismatch is noticed. Here the model is built on PyTorch's ``meta`` device (shapes only, no
memory) and its parameter shapes are compared with those in the safetensors header (read without
loading a tensor): a config that does not describe exactly the stored weights is refused, naming
the file. Scheduler configs carry no weights; :class:`SchedulerFields` bounds what they may say.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from segsynth.config import StrictModel, format_validation_error
from segsynth.io.json_file import read_json_object

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
#: No sane width, size or count in a model config comes near this; bigger ones are refused
#: before the model is even built on the meta device (some constructors loop over such values).
MAX_CONFIG_INT = 1 << 16


def _too_big(value: Any, key: str) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) > MAX_CONFIG_INT:
        return f"{key}: {value} is beyond any real model (limit {MAX_CONFIG_INT})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key}: {value} is not finite"
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _too_big(item, f"{key}.{i}")
            if found:
                return found
    return None


def stored_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"{weights}: unreadable safetensors header ({exc})") from None


def check_model_folder(folder: Path, cls: type) -> None:
    """Refuse ``folder`` unless its ``config.json`` builds ``cls`` with exactly the stored weights.

    Args:
        folder: a diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).
        cls: the diffusers ``ModelMixin`` class it must build.

    Raises:
        ValueError: naming ``config.json`` (wrong class, out-of-range values, a model other than
            the weights) or the weights file (missing or unreadable header).
    """
    import torch

    config_path = folder / "config.json"
    config = read_json_object(config_path)
    if config.get("_class_name") != cls.__name__:
        raise ValueError(f"{config_path}: _class_name is {config.get('_class_name')!r}, expected {cls.__name__!r}")
    for key, value in config.items():
        problem = _too_big(value, key)
        if problem:
            raise ValueError(f"{config_path}: {problem}")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{weights}: missing (the weights the config describes)")
    stored = stored_shapes(weights)
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except Exception as exc:  # whatever the constructor makes of values it does not expect
        raise ValueError(f"{config_path}: does not describe a valid {cls.__name__} ({type(exc).__name__}: {exc})") from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if expected != stored:
        differ = sorted(k for k in expected.keys() | stored.keys() if expected.get(k) != stored.get(k))
        example = differ[0]
        raise ValueError(
            f"{config_path}: describes another model than {weights.name} holds ({len(differ)} tensor(s) differ, "
            f"e.g. {example}: config {expected.get(example)}, weights {stored.get(example)}); refused before loading"
        )


class SchedulerFields(StrictModel):
    """The fields of a diffusers scheduler config segsynth relies on, bounded; others pass through."""

    model_config = ConfigDict(extra="allow")

    num_train_timesteps: StrictInt = Field(1000, ge=1, le=100_000)
    beta_start: float = Field(0.0001, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = "linear"
    steps_offset: StrictInt = Field(0, ge=0, le=1000)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading"
    variance_type: Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned",
                           "learned_range"] = "fixed_small"
    clip_sample: StrictBool = True
    thresholding: StrictBool = False
    rescale_betas_zero_snr: StrictBool = False
    clip_sample_range: float = Field(1.0, gt=0)
    sample_max_value: float = Field(1.0, gt=0)
    dynamic_thresholding_ratio: float = Field(0.995, gt=0, le=1)
    trained_betas: list[float] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> SchedulerFields:
        if self.beta_start > self.beta_end:
            raise ValueError(f"beta_start {self.beta_start} is above beta_end {self.beta_end}")
        if self.trained_betas is not None and not all(0 < b < 1 for b in self.trained_betas):
            raise ValueError("trained_betas must lie in (0, 1)")
        return self


def check_scheduler_config(path: Path, class_name: str) -> None:
    """Refuse a scheduler config of another class than ``class_name`` (what ``model_index.json``
    names) or with impossible values (negative timesteps, betas outside (0, 1), unknown schedules)."""
    data = read_json_object(path)
    if data.get("_class_name") != class_name:
        raise ValueError(f"{path}: _class_name is {data.get('_class_name')!r}, expected {class_name!r}")
    try:
        SchedulerFields.model_validate({k: v for k, v in data.items() if not k.startswith("_")})
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, str(path))) from None

