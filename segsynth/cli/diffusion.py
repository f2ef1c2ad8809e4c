"""``segsynth train-diffusion``: train (or resume) the conditional diffusion model on a dataset folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from segsynth.artifacts.names import CONTROLNET_DIR, PIPELINE_DIR, TRAIN_LOG
from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors
from segsynth.cli.options import ConfigOption, ResumeOption, SetOption, TrainSeedOption, command_config
from segsynth.config import ConfigError


@app.command("train-diffusion")
def train_diffusion_command(
    data: list[Path] = typer.Argument(
        ..., help="Dataset folder (dataset.json, images/, masks/); several folders train one model on all of them."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder."),
    config: ConfigOption = None,
    overrides: SetOption = [],
    seed: TrainSeedOption = None,
    resume: ResumeOption = False,
    autoencoder: Path | None = typer.Option(
        None, "--autoencoder", help="train-autoencoder folder: denoise its latents instead of pixels (latent mode)."
    ),
    backbone: Path | None = typer.Option(
        None, "--backbone", help="Local Stable Diffusion folder (diffusers layout): train a ControlNet on it, frozen "
        "(needs the backbone extra; see docs/backbone.md)."
    ),
) -> None:
    """Train the layout- and style-conditioned diffusion model; resumable with --resume."""
    with user_errors():
        from segsynth.io.guard import check_continuable, check_out_apart

        check_out_apart(out, [*data, autoencoder, backbone])
        check_continuable(out, "controlnet_run" if backbone is not None else "diffusion_run")
    if backbone is not None:
        train_backbone_command(data, backbone, config, out, resume, overrides, autoencoder, seed)
        return
    with user_errors(resumable=True):
        from segsynth.diffusion.config import DiffusionTrainConfig
        from segsynth.diffusion.train import train_diffusion

        cfg = command_config(DiffusionTrainConfig, config, overrides, {"train.seed": seed})
        run = train_diffusion(data[0] if len(data) == 1 else data, cfg, out, resume=resume, console=console,
                              autoencoder=autoencoder)
    if os.environ.get("RANK", "0") != "0":
        return  # under a multi-process launch the main process reports for all
    lines = (run / TRAIN_LOG).read_text(encoding="utf-8").splitlines()
    last = json.loads(lines[-1]) if lines else {}
    console.print(
        f"[green]trained[/] {last.get('step', cfg.train.steps)} steps, last loss {last.get('loss', float('nan')):.4f}; "
        f"pipeline: {run / PIPELINE_DIR}"
    )


def train_backbone_command(data: list[Path], backbone: Path, config: Path | None, out: Path, resume: bool,
                           overrides: list[str], autoencoder: Path | None, seed: int | None) -> None:
    """``train-diffusion --backbone``: a ControlNet on a frozen Stable Diffusion folder (segsynth.controlnet)."""
    with user_errors(resumable=True):
        from segsynth.controlnet.config import ControlNetTrainConfig
        from segsynth.controlnet.train import train_controlnet

        if autoencoder is not None:
            raise ConfigError("--autoencoder and --backbone exclude each other (the backbone brings its own VAE)")
        cfg = command_config(ControlNetTrainConfig, config, overrides, {"train.seed": seed})
        run = train_controlnet(data[0] if len(data) == 1 else data, backbone, cfg, out, resume=resume, console=console)
    lines = (run / TRAIN_LOG).read_text(encoding="utf-8").splitlines()
    last = json.loads(lines[-1]) if lines else {}
    console.print(
        f"[green]trained[/] {last.get('step', cfg.train.steps)} steps, last loss {last.get('loss', float('nan')):.4f}; "
        f"controlnet: {run / CONTROLNET_DIR}"
    )
