"""``segsynth export``: write a dataset folder as nnU-Net raw data or in another file type."""

from __future__ import annotations

from pathlib import Path

import typer

from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors

FORMATS = ("nnunet", "png", "tif", "nifti")


@app.command("export")
def export(
    src: Path = typer.Argument(..., help="Dataset folder (e.g. a synthetic set)."),
    fmt: str = typer.Option(..., "--format", help=f"One of {', '.join(FORMATS)}."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create."),
    merge_real: Path | None = typer.Option(
        None, "--merge-real", help="nnunet only: real dataset to merge; synthetic cases get the syn_ prefix."
    ),
    file_ending: str = typer.Option(".png", "--file-ending", help="nnunet only: .png, .tif or .nii.gz."),
    seed: int = typer.Option(0, help="nnunet only: seed of the case folds in splits_final.json."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", metavar="", help="Replace an existing --out folder."),
) -> None:
    """Export SRC to nnU-Net raw format (with case-level splits_final.json) or re-write it as PNG/TIFF/NIfTI."""
    with user_errors():
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if fmt != "nnunet" and merge_real is not None:
            raise ValueError("--merge-real applies to --format nnunet only")
        if fmt == "nnunet":
            from segsynth.data.nnunet import export_nnunet

            summary = export_nnunet(src, out, merge_real=merge_real, file_ending=file_ending, seed=seed, overwrite=overwrite)
            console.print(
                f"wrote {summary['num_training']} nnU-Net cases ({summary['num_real']} real, "
                f"{summary['num_synthetic']} synthetic) to {out}"
            )
            if summary["num_folds"]:
                console.print(
                    f"{summary['num_folds']} case-level folds in {out / 'splits_final.json'} (synthetic cases train "
                    "only where their layout's real case trains): copy it to "
                    f"nnUNet_preprocessed/{out.name}/splits_final.json after nnUNetv2_plan_and_preprocess"
                )
        else:
            from segsynth.data.export import export_dataset

            spec = export_dataset(src, out, fmt=fmt, overwrite=overwrite)
            console.print(f"wrote {len(spec.cases)} labelled and {len(spec.unlabeled_cases)} unlabelled images to {out}")
