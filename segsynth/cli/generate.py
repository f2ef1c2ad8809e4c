"""``segsynth generate``: a synthetic image/mask set from a trained run (resumable, shardable).

The set's settings are a :class:`GenerationConfig`: ``-c gen.yaml`` (or its defaults), then the
named flags that were given, then ``--set key=value``, as in the training commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import typer
from rich.table import Table

from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors
from segsynth.cli.options import ConfigOption, SetOption, command_config, config_options
from segsynth.config import SamplerName
from segsynth.synth.config import GenerationConfig


def _parse_prior(text: str | None) -> dict[str, float] | None:
    """``"background=0.5,tumour=0.5"`` -> ``{"background": 0.5, "tumour": 0.5}``."""
    if text is None:
        return None
    prior = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            prior[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--class-prior must look like 'background=0.5,tumour=0.5', got {text!r}")
    return prior


def _default(name: str) -> str:
    """`` (default: X)`` for a help text, read from the config so the two cannot disagree."""
    return f" (default: {GenerationConfig.model_fields[name].default})"


@app.command()
def generate(
    run: Path = typer.Argument(
        ..., help="Training run folder (RUN/pipeline), a saved pipeline folder, or a train-diffusion --backbone run."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder of the synthetic set."),
    config: ConfigOption = None,
    overrides: SetOption = [],
    n: int | None = typer.Option(
        None, "-n", "--num-samples", help="Samples in the whole set (all shards); needed unless -c/--set give n."
    ),
    layouts: str | None = typer.Option(
        None, help="Layout source: augmented | variants | composed" + _default("layouts") + "."
    ),
    per_mask: int | None = typer.Option(
        None, help="Images per real mask with --layouts variants, as DiffBoost" + _default("per_mask") + "."
    ),
    class_prior: str | None = typer.Option(
        None, help="Class prior of --layouts augmented, e.g. 'background=0.5,tumour=0.5' (default uniform)."
    ),
    layout_data: Path | None = typer.Option(None, help="Labelled dataset for the layouts (default: the run's data)."),
    styles: Path | None = typer.Option(
        None, help="Style pool: dataset folder, its unlabeled/, or an image folder (default: the run's unlabeled/)."
    ),
    style_sampler: str | None = typer.Option(None, help="augmented | nearby | multi_patch (default: the run's)."),
    num_refs: int | None = typer.Option(None, help="Style references per sample (default: the run's N)."),
    sampler: str | None = typer.Option(None, help=" | ".join(get_args(SamplerName)) + _default("sampler") + "."),
    steps: int | None = typer.Option(None, help="Denoising steps" + _default("steps") + "."),
    style_guidance: float | None = typer.Option(
        None, help="Style guidance scale, as STEDM" + _default("style_guidance") + "."
    ),
    layout_guidance: float | None = typer.Option(
        None, help="Layout guidance scale (1: off)" + _default("layout_guidance") + "."
    ),
    guidance_rescale: float | None = typer.Option(
        None, help="CFG-rescale phi, as STEDM" + _default("guidance_rescale") + "."
    ),
    batch_size: int | None = typer.Option(None, help="Samples per pipeline call" + _default("batch_size") + "."),
    seed: int | None = typer.Option(
        None, help="Base seed; each sample's seed derives from (seed, index)" + _default("seed") + "."
    ),
    resume: bool = typer.Option(
        False, "--resume/--no-resume", metavar="", help="Continue an interrupted run; done samples are kept."
    ),
    shard: str | None = typer.Option(
        None,
        help="Generate only index range i of n (counting from 0), e.g. 1/4. Default: the whole set, or, under "
        "accelerate launch / torchrun, shard RANK/WORLD_SIZE for each process.",
    ),
    edges: str | None = typer.Option(
        None, help="Edge models: layout (mask boundary, default) | image (also the real image's edges; --layouts variants)."
    ),
    edge_guidance: float | None = typer.Option(
        None, help="Edge guidance scale (edge models; 1: off)" + _default("edge_guidance") + "."
    ),
    prompt: str | None = typer.Option(
        None, help="Text models: the prompt (default: the layout data's dataset.json prompt)."
    ),
    text_guidance: float | None = typer.Option(
        None, help="Text guidance scale (text models; default 3; 1 is off; ControlNet runs: the run's CFG scale)."
    ),
    size: int | None = typer.Option(
        None, help="Side of the images (default: the model's). Larger ones are sampled in blended overlapping tiles."
    ),
    tile_overlap: int | None = typer.Option(
        None, help="Pixels shared by neighbouring tiles with --size (default: tile/4)."
    ),
    device: str | None = typer.Option(None, help="cpu, cuda or cuda:N (default: this process's GPU if there is one)."),
    mixed_precision: str | None = typer.Option(
        None, help="auto (bf16 autocast on CUDA and on a CPU with native bf16) | no | bf16" + _default("mixed_precision")
        + "."
    ),
) -> None:
    """Generate synthetic images for layouts in the style of unlabelled reference images.
    \f
    Long because its parameter list is the command line (one typer option each); the body only
    turns the options into a GenerationConfig and calls :func:`segsynth.synth.generate`.
    """
    options = dict(locals())  # the parameters, each option named as its GenerationConfig field
    with user_errors(resumable=True):
        named = config_options(GenerationConfig, options) | {"class_prior": _parse_prior(class_prior)}
        cfg = command_config(GenerationConfig, config, overrides, named)

        from segsynth.synth.generate import generate as run_generation
        from segsynth.synth.generate import resolve_shard

        chosen = resolve_shard(shard)
        result = run_generation(run, out, cfg, shard=chosen, resume=resume, console=console, device=device)
    table = Table(title=f"synthetic set {result.out}", show_header=False)
    table.add_row("generated now", str(result.generated))
    table.add_row("already done", str(result.skipped))
    table.add_row("shard size", f"{result.shard_size} (shard {chosen[0]}/{chosen[1]})")
    table.add_row("set complete", "yes: manifest.jsonl + dataset.json written" if result.complete else "no: other shards pending")
    if result.complete and cfg.filter is not None:
        from segsynth.artifacts.names import GENERATION_JSON
        from segsynth.artifacts.schemas import GenerationRecord, read_record

        done = read_record(result.out / GENERATION_JSON, GenerationRecord).filtered
        if done is not None:
            table.add_row("filter", f"kept {done.kept} of {done.attempts} draws (min_dice {done.min_dice}); "
                          f"{done.kept} of {done.requested} samples" + (", draw cap reached" if done.reached_cap else ""))
    console.print(table)
