"""Create a run folder, or check that a resumed run trains the same thing on the same inputs.

Every trainer records its resolved config and a few JSON records (data, split, backbone); a
resumed run must agree with them, up to the settings that decide how long or how visibly it runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from segsynth.artifacts.names import CONFIG_YAML
from segsynth.config import save_resolved_config
from segsynth.io.atomic import atomic_write_json
from segsynth.io.run_log import check_resume, check_same_record


@dataclass(frozen=True)
class RunRecord:
    """A JSON record of the run folder and what a resumed run must share with the saved one.

    Attributes:
        name: file name inside the run folder (from :mod:`segsynth.artifacts.names`).
        data: the record.
        must_match: the dotted keys a resumed run must have equal, each with the error message
            when it differs (the file is named before it); None: the whole record must be equal.
        problem: the error message when the whole record differs.
        added: top-level keys older runs did not record (such as the data's content hash): a
            saved record without one is checked without it, so those runs still resume.
    """

    name: str
    data: dict[str, Any]
    must_match: Mapping[str, str] | None = None
    problem: str = "differs from the run being resumed"
    added: tuple[str, ...] = ()

    def check(self, out: Path) -> None:
        """Raise ``ValueError`` naming the file when the saved record disagrees."""
        path = out / self.name
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        missing = {key for key in self.added if isinstance(saved, dict) and key not in saved}
        if self.must_match is not None:
            for key, problem in self.must_match.items():
                if key.split(".")[0] in missing:
                    continue
                value: Any = self.data
                for part in key.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                check_same_record(path, key, value, problem)
        elif saved is not None:
            data = {key: value for key, value in self.data.items() if key not in missing}
            if saved != json.loads(json.dumps(data)):
                raise ValueError(f"{path}: {self.problem}")


def prepare_run_folder(out: Path, cfg: BaseModel, resume: bool, may_change: Callable[[str], bool],
                       records: Sequence[RunRecord] = ()) -> None:
    """Refuse a used folder without ``resume`` or a resumed run that differs; then write the
    resolved config and ``records``.

    Raises:
        FileExistsError: ``out`` holds a run and ``resume`` is False.
        ConfigError: the saved config differs in a key ``may_change`` refuses.
        ValueError: a saved record differs (the message names the file).
    """
    check_resume(out / CONFIG_YAML, cfg, resume, may_change)
    if resume:
        for record in records:
            record.check(out)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, out / CONFIG_YAML)
    for record in records:
        atomic_write_json(out / record.name, record.data)
