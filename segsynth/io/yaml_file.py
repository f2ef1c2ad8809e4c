"""Reading YAML (configs, saved run configs, ``--set`` values) with a key given twice refused.

PyYAML keeps the last of two equal keys in one mapping without a word, so a config with two
``train:`` blocks silently loses the first one, and the run trains with settings nobody wrote in
one place. This loader refuses that at any depth, naming the key and both lines; merge keys
(``<<: *defaults``) still override as YAML intends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ValueError):
    """One mapping gives ``key`` twice, at ``first`` and ``second`` (1-based lines)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} appears twice in one mapping (lines {first} and {second}); "
                         "YAML would silently keep only the second, so merge them into one")
        self.key, self.first, self.second = key, first, second


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` for a key given twice in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it in its own words
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml_text(text: str, where: str, error: type[Exception] = ValueError) -> Any:
    """``yaml.safe_load`` with a duplicate key, invalid YAML or runaway nesting raised as ``error`` naming ``where``."""
    try:
        loader = StrictSafeLoader(text)  # what yaml.safe_load does, with the strict loader
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except DuplicateKeyError as exc:
        raise error(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML ({exc})") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply to be a config") from None


def read_yaml(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """The YAML document in ``path``, read by :func:`parse_yaml_text`; an unreadable file is ``error`` too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(f"{path}: cannot read config ({reason})") from None
    return parse_yaml_text(text, str(path), error)
