"""``segsynth run DATA -o RUN``: plan from the data, then every stage, resumable, ending in the report."""

from __future__ import annotations

from pathlib import Path

import typer

from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors


@app.command("run")
def run_command(
    data: Path = typer.Argument(..., help="Dataset folder: labelled images/ and masks/, and unlabeled/ for styles."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder; re-run the same command to continue."),
    plan_only: bool = typer.Option(
        False, "--plan-only/--no-plan-only", metavar="", help="Write RUN/plan.json and stop (edit it, then run again)."
    ),
    plan_for: str | None = typer.Option(
        None, "--plan-for", help="Plan for cpu or cuda (e.g. a GPU job planned on a login node); default: the device found here."
    ),
) -> None:
    """Plan recipes from the dataset fingerprint, then train, generate, benchmark, evaluate and report."""
    with user_errors():
        from segsynth.io.guard import check_continuable, check_out_apart
        from segsynth.run import run_all

        check_out_apart(out, [data])
        check_continuable(out, "run")
        if plan_for not in (None, "cpu", "cuda"):
            raise ValueError(f"--plan-for {plan_for!r}: plan for cpu or cuda")
        paths = run_all(data, out, plan_only=plan_only, device=plan_for, console=console)
        if plan_only:
            console.print(f"plan written: {paths['plan']}; edit it, then run `segsynth run {data} -o {out}`")
