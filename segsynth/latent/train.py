"""``segsynth train-autoencoder``: fit an ``AutoencoderKL`` to the images of one or more datasets.

Labelled and unlabelled images both train it (the autoencoder needs no masks, and the unlabelled
pool is usually the larger). A seeded fraction of cases is held out, and the reconstruction quality
on tiles of those unseen cases is what ``reconstruction.json`` reports, next to a bicubic
down/up-sampling baseline of the same factor, so the numbers say how much the code keeps beyond
a plain low-resolution copy.

Every random draw (tile choice, crop, flip, posterior sample) is a pure function of
``(seed, step, slot)``, so a run killed at any step resumes from its newest checkpoint exactly.

Output folder::

    AE/config.yaml          resolved config
    AE/split.json           training and held-out image ids
    AE/train_log.jsonl      loss terms per log interval
    AE/checkpoints/step_*/  resumable state
    AE/autoencoder/         the trained AutoencoderKL (config.json + safetensors)
    AE/reconstruction.json  PSNR / SSIM on held-out tiles vs. the bicubic baseline
    AE/reconstructions.png  held-out tiles (top) and their reconstructions (bottom)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from rich.console import Console
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from segsynth.config import load_config, save_resolved_config
from segsynth.data.format import load_spec
from segsynth.data.io import write_image
from segsynth.data.loader import SegDataset, sample_seed
from segsynth.data.style_sampling import random_patch
from segsynth.io.atomic import atomic_directory, atomic_write_json
from segsynth.io.checkpoint import CheckpointManager
from segsynth.io.run_log import check_resume, check_same_record, truncate_log
from segsynth.io.lock import owns_folder
from segsynth.io.finite import check_losses, check_weights
from segsynth.latent.autoencoder import AUTOENCODER_DIR, build_autoencoder, encode_images
from segsynth.latent.config import AutoencoderTrainConfig
from segsynth.progress import StepProgress
from segsynth.tracking import tracked

CONFIG_YAML = "config.yaml"
SPLIT_JSON = "split.json"
TRAIN_LOG = "train_log.jsonl"
QUALITY_JSON = "reconstruction.json"
RECON_PNG = "reconstructions.png"
#: Settings a resumed run may change: how long and how visibly it runs, not what a step computes.
RESUMABLE_CHANGES = {"steps", "checkpoint_every", "log_every", "eval_tiles", "log_with"}


class ImagePool:
    """Images of several dataset folders (labelled and unlabelled), split by case into train / held out.

    Args:
        roots: dataset folders; all must have the same channel count.
        holdout: fraction of cases held out (seeded by ``seed``).
        seed: seeds the split.
    """

    def __init__(self, roots: Sequence[Path], holdout: float, seed: int) -> None:
        specs = [load_spec(root) for root in roots]
        channels = {spec.channels for spec in specs}
        if len(channels) != 1:
            raise ValueError(f"datasets {[str(r) for r in roots]} mix {sorted(channels)} image channels; "
                             "one autoencoder codes one channel count")
        self.channels = channels.pop()
        self.datasets = [SegDataset(root, split) for root in roots for split in ("labeled", "unlabeled")]
        self.items = [(d, i) for d in self.datasets for i in range(len(d))]
        if not self.items:
            raise ValueError(f"{[str(r) for r in roots]}: no images to train an autoencoder on")
        cases = sorted({self.case(item) for item in self.items})
        rng = np.random.default_rng([seed, 17])
        n_held = min(len(cases) - 1, max(1 if holdout > 0 else 0, round(holdout * len(cases))))
        held = set(rng.permutation(len(cases))[:n_held].tolist())
        held_cases = {cases[i] for i in held}
        self.train = [item for item in self.items if self.case(item) not in held_cases]
        self.held_out = [item for item in self.items if self.case(item) in held_cases]

    @staticmethod
    def case(item: tuple[SegDataset, int]) -> str:
        dataset, index = item
        return f"{dataset.root}::{dataset.refs[index].case_id}"

    @staticmethod
    def ids(items: Sequence[tuple[SegDataset, int]]) -> list[str]:
        return [f"{d.root.name}/{d.split}/{d.refs[i].id}" for d, i in items]

    def verify(self) -> None:
        """Read every image now, so a bad file fails before the output folder is touched."""
        for dataset in self.datasets:
            dataset.verify()

    def tiles(self, items: Sequence[tuple[SegDataset, int]], count: int, size: int, seed: int, step: int,
              augment: bool) -> torch.Tensor:
        """``count`` random ``size`` tiles in [0, 1] from ``items``; tile k of a call depends only on
        ``(seed, step, k)``."""
        tiles = []
        for k in range(count):
            rng = np.random.default_rng(sample_seed(seed, step, k))
            dataset, index = items[int(rng.integers(len(items)))]
            tile = random_patch(dataset.load_arrays(index)[0], size, rng)
            if augment:
                tile = np.rot90(tile, int(rng.integers(4)), axes=(1, 2))
                if rng.random() < 0.5:
                    tile = tile[:, :, ::-1]
            tiles.append(np.ascontiguousarray(tile, dtype=np.float32))
        return torch.from_numpy(np.stack(tiles))


def reconstruction_loss(vae: AutoencoderKL, images: torch.Tensor, kl_weight: float,
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
    """L1 between input and reconstruction of a posterior sample, plus ``kl_weight`` times the KL
    to N(0, I) (summed over the latent, averaged over the batch, as in LDM)."""
    x = images * 2 - 1
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator)).sample
    l1 = (recon.float() - x.float()).abs().mean()
    kl = posterior.kl().float().mean()
    return {"loss": l1 + kl_weight * kl, "l1": l1.detach(), "kl": kl.detach()}


@torch.no_grad()
def reconstruction_quality(vae: AutoencoderKL, tiles: torch.Tensor) -> dict[str, Any]:
    """PSNR / SSIM of the autoencoder and of bicubic down/up-sampling by its factor on ``tiles``.

    Returns:
        ``{"autoencoder": {"psnr", "ssim"}, "bicubic_baseline": {...}, "reconstructions": tensor}``.
    """
    vae.eval()
    device = next(vae.parameters()).device
    x = tiles.to(device)
    recon = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample.float() + 1) / 2).clamp(0, 1)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    small = F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
    baseline = F.interpolate(small, size=x.shape[-2:], mode="bicubic").clamp(0, 1)

    def scores(y: torch.Tensor) -> dict[str, float]:
        return {"psnr": float(peak_signal_noise_ratio(y, x, data_range=1.0)),
                "ssim": float(structural_similarity_index_measure(y, x, data_range=1.0))}

    return {"autoencoder": scores(recon), "bicubic_baseline": scores(baseline), "reconstructions": recon.cpu()}


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, tiles: torch.Tensor) -> float:
    """1 / std of the posterior means of ``tiles``: makes the denoiser's inputs unit-scaled."""
    vae.register_to_config(scaling_factor=1.0)
    device = next(vae.parameters()).device
    latents = torch.cat([encode_images(vae, chunk.to(device)).float() for chunk in tiles.split(16)])
    return float(1.0 / latents.std().clamp_min(1e-6))


def _prepare_out(out: Path, cfg: AutoencoderTrainConfig, split: dict[str, Any], resume: bool) -> None:
    config_path = out / CONFIG_YAML
    check_resume(config_path, cfg, resume, RESUMABLE_CHANGES.__contains__)
    if resume:
        for key in ("data", "train", "held_out"):
            check_same_record(out / SPLIT_JSON, key, split[key], "the images differ from those of the run being resumed")
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_config(cfg, config_path)
    atomic_write_json(out / SPLIT_JSON, split)


def _save_grid(path: Path, tiles: torch.Tensor, recon: torch.Tensor, columns: int = 8) -> None:
    """Originals above reconstructions, ``columns`` tiles side by side."""
    pick = slice(0, min(columns, len(tiles)))
    rows = [torch.cat(list(t[pick]), dim=-1) for t in (tiles, recon)]
    grid = (torch.cat(rows, dim=-2).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    write_image(path, grid[0] if grid.shape[0] == 1 else np.moveaxis(grid, 0, -1))


@owns_folder("out")
def train_autoencoder(
    data: str | Path | Sequence[str | Path],
    config: AutoencoderTrainConfig | str | Path | None,
    out: str | Path,
    resume: bool = False,
    console: Console | None = None,
) -> Path:
    """Train (or resume) the autoencoder of latent mode on the images of ``data``.

    Args:
        data: dataset folder(s); labelled and unlabelled images are used.
        config: an :class:`AutoencoderTrainConfig`, a YAML path, or None for the defaults.
        out: output folder (see the module docstring).
        resume: continue from the newest checkpoint in ``out``.
        console: rich console for a progress bar; None trains quietly.

    Returns:
        ``out``; ``out/autoencoder`` is what ``train-diffusion --autoencoder`` takes.
    """
    roots = [Path(d).resolve() for d in ([data] if isinstance(data, (str, Path)) else data)]
    cfg = config if isinstance(config, AutoencoderTrainConfig) else load_config(AutoencoderTrainConfig, config)
    out = Path(out)
    pool = ImagePool(roots, cfg.holdout, cfg.seed)
    pool.verify()
    split = {"data": [str(r) for r in roots], "train": pool.ids(pool.train), "held_out": pool.ids(pool.held_out)}
    _prepare_out(out, cfg, split, resume)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.type == "cuda")
    torch.manual_seed(cfg.seed)
    vae = build_autoencoder(cfg.model, pool.channels, cfg.tile_size).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    checkpoints = CheckpointManager(out)
    step = 0
    latest = checkpoints.latest() if resume else None
    if latest is not None:
        step, tree = latest
        vae.load_state_dict(tree["model"])
        optimizer.load_state_dict(tree["optimizer"])
        truncate_log(out / TRAIN_LOG, step)
    checkpoints.remove_stale()

    window: dict[str, float] = {}
    with StepProgress("train-autoencoder", cfg.steps, console, step) as progress, tracked(cfg.log_with, out, cfg) as track:
        while step < cfg.steps:
            vae.train()
            images = pool.tiles(pool.train, cfg.batch_size, cfg.tile_size, cfg.seed, step, augment=True).to(device)
            generator = torch.Generator(device=device).manual_seed(sample_seed(cfg.seed + 1, step, 0))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                terms = reconstruction_loss(vae, images, cfg.kl_weight, generator)
            check_losses(terms, step + 1, "train-autoencoder")
            terms["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            for name, value in terms.items():
                window[name] = window.get(name, 0.0) + float(value.detach())
            if step % cfg.log_every == 0 or step == cfg.steps:
                count = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                record = {"step": step, **{k: v / count for k, v in window.items()}}
                with (out / TRAIN_LOG).open("a", encoding="utf-8") as log:
                    log.write(json.dumps(record) + "\n")
                track(record)
                progress.update(step, l1=record["l1"])
                window = {}
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                check_weights(vae.named_parameters(), step, "train-autoencoder")
                checkpoints.save(step, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step})
            progress.update(step)

    vae.eval()
    scale_tiles = pool.tiles(pool.train, max(cfg.eval_tiles, 16), cfg.tile_size, cfg.seed + 2, 0, augment=False)
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, scale_tiles))
    with atomic_directory(out / AUTOENCODER_DIR, overwrite=True) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    held = pool.held_out or pool.train
    tiles = pool.tiles(held, cfg.eval_tiles, cfg.tile_size, cfg.seed + 3, 0, augment=False)
    quality = reconstruction_quality(vae, tiles)
    _save_grid(out / RECON_PNG, tiles, quality.pop("reconstructions"))
    atomic_write_json(out / QUALITY_JSON, {
        **quality,
        "tiles": cfg.eval_tiles,
        "tile_size": cfg.tile_size,
        "factor": cfg.model.factor,
        "evaluated_on": "held-out cases" if pool.held_out else "training images (the data has one case)",
        "scaling_factor": vae.config.scaling_factor,
        "steps": cfg.steps,
    })
    return out
