"""The on-disk dataset format: ``dataset.json`` + ``images/`` + ``masks/`` [+ ``unlabeled/``].

Close to nnU-Net's raw layout so users recognise it, plus what synthesis needs: a case (patient,
slide, volume) id for every image, the label provenance (human or derived, with the recipe), the
text prompt and the licence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, StrictInt, ValidationError, field_validator, model_validator

from segsynth.artifacts.names import DATASET_JSON, name_key
from segsynth.config import StrictModel, format_validation_error
from segsynth.io.atomic import atomic_write_json
from segsynth.io.json_file import read_json_object



class DatasetFormatError(ValueError):
    """``dataset.json`` is missing or invalid; the message names the file and the key."""


class DatasetSpec(StrictModel):
    """Contents of ``dataset.json``.

    ``cases`` maps the stem of every labelled image (file name without extension) to its case id;
    ``unlabeled_cases`` does the same for ``unlabeled/``. A NIfTI volume's stem is also the case of
    each of its 2D slices.
    """

    format_version: int = 1
    name: str = Field(min_length=1)
    description: str = ""
    modality: str = Field(min_length=1)
    prompt: str = Field(min_length=1, description="text prompt naming organ/structure and modality")
    # Strict: "1" or 1.0 would be accepted as 1 by pydantic, and masks are compared with these values.
    channels: StrictInt = Field(ge=1, le=4)
    labels: dict[str, StrictInt]
    label_provenance: Literal["human", "derived"]
    derivation: str | None = Field(default=None, description="recipe, required when labels are derived")
    licence: str = Field(min_length=1)
    source: str = ""
    cases: dict[str, str]
    unlabeled_cases: dict[str, str] = Field(default_factory=dict)

    @field_validator("cases", "unlabeled_cases")
    @classmethod
    def _names_in_one_unicode_form(cls, cases: dict[str, str]) -> dict[str, str]:
        """Stems and case ids in NFC (:func:`~segsynth.artifacts.names.name_key`), the form file names are
        matched in; two keys that are one name in two Unicode spellings are refused."""
        normal: dict[str, str] = {}
        spelled: dict[str, str] = {}
        for stem, case in cases.items():
            key = name_key(stem)
            if key in normal:
                raise ValueError(f"{spelled[key]!r} and {stem!r} are the same name in two Unicode spellings; keep one")
            normal[key], spelled[key] = name_key(case), stem
        return normal

    @field_validator("labels")
    @classmethod
    def _labels_consecutive_from_background(cls, labels: dict[str, int]) -> dict[str, int]:
        values = sorted(labels.values())
        if not values:
            raise ValueError("at least one label (background: 0) is required")
        if len(set(values)) != len(values):
            raise ValueError(f"label values must be unique, got {labels}")
        if values[0] != 0:
            raise ValueError(f"label 0 must be present and mean background, got {labels}")
        by_value = {v: k for k, v in labels.items()}
        if by_value[0].lower() not in {"background", "bg"}:
            raise ValueError(f"label 0 must be background, got {by_value[0]!r}")
        if values != list(range(len(values))):
            raise ValueError(f"label values must be consecutive 0..K-1, got {values}")
        return labels

    @model_validator(mode="after")
    def _derived_needs_recipe(self) -> DatasetSpec:
        if self.label_provenance == "derived" and not self.derivation:
            raise ValueError("label_provenance 'derived' requires a 'derivation' recipe")
        for stem, case in {**self.cases, **self.unlabeled_cases}.items():
            if not case:
                raise ValueError(f"empty case id for {stem!r}")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        """Label names ordered by value."""
        return [name for name, _ in sorted(self.labels.items(), key=lambda item: item[1])]


def load_spec(root: str | Path) -> DatasetSpec:
    """Read and validate ``root/dataset.json``."""
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        if path.exists():  # a folder, FIFO, socket or device: never opened (a FIFO would block)
            raise DatasetFormatError(f"{path}: not a regular file; dataset.json must be a JSON file")
        raise DatasetFormatError(f"{path}: missing (every dataset folder needs a dataset.json)")
    data = read_json_object(path, DatasetFormatError)
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as exc:
        raise DatasetFormatError(format_validation_error(exc, str(path))) from None


def save_spec(root: str | Path, spec: DatasetSpec) -> Path:
    """Write ``root/dataset.json`` atomically with sorted keys (same spec, same bytes)."""
    return atomic_write_json(Path(root) / DATASET_JSON, spec.model_dump(mode="json"))
