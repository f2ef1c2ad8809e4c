"""``segsynth train-autoencoder``: the autoencoder of latent mode, trained on the dataset's own images."""

from __future__ import annotations

from pathlib import Path

import typer

from segsynth.cli.app import app
from segsynth.cli.errors import console, user_errors
from segsynth.cli.options import ConfigOption, ResumeOption, SetOption, TrainSeedOption, command_config


@app.command("train-autoencoder")
def train_autoencoder_command(
    data: list[Path] = typer.Argument(..., help="Dataset folder(s); labelled and unlabelled images are used."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (its autoencoder/ goes to train-diffusion --autoencoder)."),
    config: ConfigOption = None,
    overrides: SetOption = [],
    seed: TrainSeedOption = None,
    resume: ResumeOption = False,
) -> None:
    """Train an AutoencoderKL (f4 or f8) for latent diffusion; reports held-out PSNR / SSIM."""
    with user_errors(resumable=True):
        from segsynth.artifacts.names import RECONSTRUCTION_JSON
        from segsynth.artifacts.schemas import Reconstruction, read_record
        from segsynth.autoencoder.config import AutoencoderTrainConfig
        from segsynth.io.guard import check_continuable, check_out_apart
        from segsynth.autoencoder.train import train_autoencoder

        check_out_apart(out, data)
        check_continuable(out, "autoencoder_run")
        cfg = command_config(AutoencoderTrainConfig, config, overrides, {"train.seed": seed})
        run = train_autoencoder(data, cfg, out, resume=resume, console=console)
        quality = read_record(run / RECONSTRUCTION_JSON, Reconstruction)
    ae, base = quality.autoencoder, quality.bicubic_baseline
    console.print(
        f"[green]autoencoder[/] f{quality.factor}, {quality.tiles} tiles of {quality.evaluated_on}: "
        f"PSNR {ae.psnr:.2f} dB, SSIM {ae.ssim:.3f} (bicubic x{quality.factor}: {base.psnr:.2f} dB, "
        f"{base.ssim:.3f}); use --autoencoder {run}"
    )
