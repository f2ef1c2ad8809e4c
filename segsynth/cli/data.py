"""``segsynth data check | info | import-nnunet``: validate, fingerprint and import dataset folders."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from segsynth.cli.app import data_app
from segsynth.cli.errors import console, user_errors


@data_app.command("check")
def check(
    root: Path = typer.Argument(..., help="Dataset folder (dataset.json, images/, masks/, unlabeled/)."),
    as_json: bool = typer.Option(False, "--json/--no-json", metavar="", help="Print the report as JSON instead of a table."),
) -> None:
    """Report every problem of a dataset folder (never modifies it); exit 1 when there are errors."""
    from segsynth.data.check import check_dataset

    report = check_dataset(root)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        if report.problems:
            table = Table(title=f"{len(report.errors)} error(s), {len(report.warnings)} warning(s) in {root}")
            for column in ("level", "file", "kind", "problem"):
                table.add_column(column, overflow="fold")
            for p in report.problems:
                colour = "red" if p.severity == "error" else "yellow"
                table.add_row(f"[{colour}]{p.severity}[/]", p.file, p.kind, p.message)
            console.print(table)
        counts = report.counts
        verdict = "[green]ok[/]" if report.ok else "[red]invalid[/]"
        console.print(
            f"{verdict}: {counts.get('images', 0)} images ({counts.get('samples', 0)} paired 2D samples), "
            f"{counts.get('masks', 0)} masks, {counts.get('unlabeled', 0)} unlabelled files"
        )
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("info")
def info(
    root: Path = typer.Argument(..., help="Dataset folder (only read, never written to)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Also save the fingerprint as this JSON file (e.g. fingerprint.json), outside the dataset."
    ),
    as_json: bool = typer.Option(False, "--json/--no-json", metavar="", help="Print the fingerprint as JSON."),
) -> None:
    """Counts, class pixel fractions and image sizes (the dataset folder is only read)."""
    with user_errors():
        from segsynth.data.info import dataset_info

        fp = dataset_info(root, out=out)
    if as_json:
        typer.echo(json.dumps(fp, indent=2, sort_keys=True))
        return
    size = fp["image_size"]
    console.print(
        f"[bold]{fp['name']}[/] ({fp['modality']}, {fp['channels']} channel(s)): {fp['num_images']} labelled images "
        f"in {fp['num_cases']} cases, {fp['num_unlabeled']} unlabelled; height {size['height']['min']}-"
        f"{size['height']['max']}, width {size['width']['min']}-{size['width']['max']}"
    )
    table = Table(title="classes")
    for column in ("label", "value", "pixel fraction", "per-image mean ± std", "images containing"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, value in sorted(fp["labels"].items(), key=lambda item: item[1]):
        per = fp["per_image_fractions"][name]
        table.add_row(
            name, str(value), f"{fp['class_fractions'][name]:.4f}", f"{per['mean']:.4f} ± {per['std']:.4f}",
            f"{fp['class_presence'][name]:.0%}",
        )
    console.print(table)
    if out is not None:
        console.print(f"wrote {out}")


@data_app.command("import-nnunet")
def import_nnunet_command(
    src: Path = typer.Argument(..., help="nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create."),
    case_pattern: str | None = typer.Option(
        None, "--case-pattern", help="Regex whose first group is the patient id, matched at the start of each case."
    ),
    prompt: str | None = typer.Option(None, help="Text prompt (default: '<name>, <channel names>')."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", metavar="", help="Replace an existing --out folder."),
) -> None:
    """Import an nnU-Net raw dataset as a dataset folder."""
    with user_errors():
        from segsynth.data.nnunet import import_nnunet

        spec = import_nnunet(src, out, case_pattern=case_pattern, prompt=prompt, overwrite=overwrite)
    console.print(
        f"imported {len(spec.cases)} cases ({len(set(spec.cases.values()))} patients, {spec.channels} channel(s), "
        f"labels {spec.class_names}) into {out}; run `segsynth data check {out}` next"
    )
