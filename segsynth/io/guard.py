"""Inputs are sacred: where a command may write, and what ``--overwrite`` may remove.

Two checks, made before anything is written:

- :func:`check_out_apart`: the output path of a command must not be one of its inputs, hold one
  or sit inside one (symlinks resolved). Writing a run into ``DATA/images`` makes the data fail its
  own check; exporting ``SRC`` into the folder that holds it and replacing that folder deletes
  the source. A command may name the few places inside an input that are its own documented
  output (``evaluate-synth`` writes ``SYNTH/evaluation``).
- :func:`check_replaceable`: an existing output folder is replaced only when it holds an output
  of the same kind (recognised by its artifact files, :mod:`segsynth.artifacts.detect`), so
  ``--overwrite`` can never remove a parent folder with other datasets in it, a run folder or
  anything segsynth does not recognise.

Both raise :class:`OutputPathError` (a ``ValueError``: the command line reports it as
``error: ...`` with exit code 2), naming both paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from segsynth.artifacts.detect import detect
from segsynth.artifacts.names import DATASET_JSON, NNUNET_IMAGES_DIR

#: The kind of an nnU-Net raw dataset folder (``dataset.json`` next to ``imagesTr/``), which
#: :func:`segsynth.artifacts.detect.detect` would take for a dataset folder.
NNUNET_RAW = "nnunet_raw"


class OutputPathError(ValueError):
    """The output path would overwrite, hold or sit inside an input, or replace a folder of another kind."""


def _resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` with every symlink resolved (also of a path that does not exist yet)."""
    return Path(path).expanduser().resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and child.is_relative_to(parent)


def check_out_apart(
    out: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    out_flag: str = "--out",
    allowed: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Refuse an output path that is an input, holds one or sits inside one.

    Args:
        out: the path the command writes (a folder or a file).
        inputs: every path the command reads: data folders, run folders, reference folders,
            files. ``None`` entries (options not given) are skipped.
        out_flag: how the output is spelled on the command line, for the message.
        allowed: exact output paths inside an input that are the command's own documented
            output place (never the input itself).

    Raises:
        OutputPathError: naming the output and the input it collides with.
    """
    target = _resolved(out)
    exempt = {_resolved(path) for path in allowed}
    for given in inputs:
        if given is None:
            continue
        source = _resolved(given)
        if target == source:
            relation = "is the input"
        elif _inside(source, target):
            relation = "holds the input"
        elif _inside(target, source) and target not in exempt:
            relation = "sits inside the input"
        else:
            continue
        raise OutputPathError(
            f"{out_flag} {out} {relation} {given}: inputs are never written to or replaced; "
            f"choose an output that neither is, holds nor sits inside {given}"
        )


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of an existing output folder: a kind of :func:`segsynth.artifacts.detect.detect`,
    :data:`NNUNET_RAW`, or None when it holds nothing segsynth recognises."""
    path = Path(path)
    if path.is_dir() and (path / DATASET_JSON).is_file() and (path / NNUNET_IMAGES_DIR).is_dir():
        return NNUNET_RAW
    return detect(path)


def _holding(path: Path) -> str:
    """What an unrecognised existing path is, in a few words for an error message."""
    if path.is_symlink():
        return "is a symlink"
    if not path.is_dir():
        return "is a file"
    entries = sorted(entry.name for entry in path.iterdir())
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    return f"is not a segsynth output folder (it holds {shown})"


def check_replaceable(out: str | os.PathLike[str], kind: str, overwrite: bool, *, out_flag: str = "--out") -> None:
    """Refuse to write a new ``kind`` folder at ``out`` when that would lose something.

    A missing ``out`` (or an empty folder) is always fine. An existing one needs ``overwrite``
    and must itself hold a ``kind`` output, recognised by its artifact files.

    Args:
        out: the folder about to be created (or replaced) atomically.
        kind: the kind of folder the command writes (``"dataset"``, :data:`NNUNET_RAW`, ...).
        overwrite: the user asked to replace an existing output.
        out_flag: how the output is spelled on the command line, for the message.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is false.
        OutputPathError: ``overwrite`` is set but ``out`` holds something other than a ``kind`` output.
    """
    path = Path(out)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it (only a {kind} folder is replaced)")
    found = None if path.is_symlink() else output_kind(path)
    if found == kind:
        return
    what = f"is a {found} folder" if found is not None else _holding(path)
    raise OutputPathError(
        f"{out_flag} {out} {what}; --overwrite replaces only a {kind} folder: "
        "choose another output path (or remove it yourself)"
    )


def check_continuable(out: str | os.PathLike[str], kind: str, *, out_flag: str = "--out") -> None:
    """Refuse to write into an existing folder that segsynth recognises as another kind of output.

    Commands that continue an interrupted run write into an existing ``out`` (no ``--overwrite``
    there: nothing is removed). Their files must not be mixed into a dataset, a synthetic set or
    another stage's run, which would then hold files of two kinds and no longer read as either. A
    folder segsynth does not recognise (empty, or a run killed before its first record) is fine.

    Raises:
        OutputPathError: naming the folder and the kind it holds.
    """
    path = Path(out)
    if not path.is_dir():
        return
    found = output_kind(path)
    if found is None or found == kind:
        return
    raise OutputPathError(
        f"{out_flag} {out} holds a {found} folder, not a {kind} folder; its files are never mixed with "
        "another output: choose another output folder"
    )
