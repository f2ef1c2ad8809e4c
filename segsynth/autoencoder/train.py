"""``segsynth train-autoencoder``: fit an ``AutoencoderKL`` to the images of one or more datasets.

Labelled and unlabelled images both train it (the autoencoder needs no masks, and the unlabelled
pool is usually the larger). A seeded fraction of cases is held out, and the reconstruction quality
on tiles of those unseen cases is what ``reconstruction.json`` reports, next to a bicubic
down/up-sampling baseline of the same factor, so the numbers say how much the code keeps beyond
a plain low-resolution copy.

Every random draw (tile choice, crop, flip, posterior sample) is a pure function of
``(seed, step, slot)``, so a run killed at any step resumes from its newest checkpoint exactly.
:class:`AutoencoderTask` is what this stage hands the training engine (:mod:`segsynth.engine`),
which owns the folder, the log, checkpoints, precision and resume. Under a multi-process launch,
rank r of W takes slots ``r * b ... (r + 1) * b - 1`` of the ``W * b`` tiles one process of batch
``W * b`` would take, with the same posterior noise, so W processes learn what that one process
learns (up to float summation order).

Output folder::

    AE/config.yaml          resolved config
    AE/image_split.json     training and held-out image ids
    AE/train_log.jsonl      loss terms per log interval
    AE/checkpoints/step_*/  resumable state
    AE/autoencoder/         the trained AutoencoderKL (config.json + safetensors)
    AE/reconstruction.json  PSNR / SSIM on held-out tiles vs. the bicubic baseline
    AE/reconstructions.png  held-out tiles (top) and their reconstructions (bottom)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.utils.torch_utils import randn_tensor
from rich.console import Console
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from segsynth.fits import Estimate, check_fits, parameter_bytes, saved_activation_bytes, training_estimate
from segsynth.artifacts.names import AUTOENCODER_DIR, IMAGE_SPLIT_JSON, RECONSTRUCTION_JSON, RECONSTRUCTIONS_PNG
from segsynth.config import load_config
from segsynth.data.format import load_spec
from segsynth.data.io import write_image
from segsynth.data.loader import SegDataset, sample_seed
from segsynth.data.style_sampling import random_patch
from segsynth.engine import DefaultHooks, Engine, EngineSettings, RunRecord, prepare_run_folder
from segsynth.io.atomic import atomic_directory, atomic_write_json
from segsynth.io.hashing import data_hash
from segsynth.io.lock import owns_folder
from segsynth.autoencoder.autoencoder import build_autoencoder, encode_images
from segsynth.autoencoder.config import AutoencoderTrainConfig

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

    def tiles(self, items: Sequence[tuple[SegDataset, int]], slots: Iterable[int], size: int, seed: int, step: int,
              augment: bool) -> torch.Tensor:
        """Random ``size`` tiles in [0, 1] from ``items``, one per slot; the tile of slot k depends
        only on ``(seed, step, k)``."""
        tiles = []
        for k in slots:
            rng = np.random.default_rng(sample_seed(seed, step, k))
            dataset, index = items[int(rng.integers(len(items)))]
            tile = random_patch(dataset.load_arrays(index)[0], size, rng)
            if augment:
                tile = np.rot90(tile, int(rng.integers(4)), axes=(1, 2))
                if rng.random() < 0.5:
                    tile = tile[:, :, ::-1]
            tiles.append(np.ascontiguousarray(tile, dtype=np.float32))
        return torch.from_numpy(np.stack(tiles))


class ReconstructionObjective(torch.nn.Module):
    """The autoencoder's training loss as a module's ``forward``.

    L1 between input and reconstruction of a posterior sample, plus ``kl_weight`` times the KL to
    N(0, I) (summed over the latent, averaged over the batch, as in LDM). Encoding and decoding
    happen inside one ``forward`` so that a data-parallel wrapper sees the whole step and
    synchronises every gradient.
    """

    def __init__(self, vae: AutoencoderKL, kl_weight: float) -> None:
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, images: torch.Tensor, generator: torch.Generator,
                share: tuple[int, int] = (0, 1)) -> dict[str, torch.Tensor]:
        """``share`` is ``(rank, world)``: the posterior noise is drawn for the global batch of
        ``world * len(images)`` tiles and this process keeps its rows (``(0, 1)``: its own batch)."""
        x = images * 2 - 1
        posterior = self.vae.encode(x).latent_dist
        rank, world = share
        n = len(images)
        noise = randn_tensor((world * n, *posterior.mean.shape[1:]), generator=generator, device=x.device,
                             dtype=posterior.mean.dtype)[rank * n : (rank + 1) * n]
        recon = self.vae.decode(posterior.mean + posterior.std * noise).sample
        l1 = (recon.float() - x.float()).abs().mean()
        kl = posterior.kl().float().mean()
        return {"loss": l1 + self.kl_weight * kl, "l1": l1.detach(), "kl": kl.detach()}


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


class AutoencoderTask(DefaultHooks):
    """One autoencoder run: the model, its optimiser and the tile draws (a :class:`~segsynth.engine.TrainTask`;
    the reconstructions are drawn once, at release)."""

    def __init__(self, engine: Engine, pool: ImagePool, cfg: AutoencoderTrainConfig) -> None:
        self.cfg, self.pool, self.out = cfg, pool, engine.out
        self.accelerator = engine.accelerator
        torch.manual_seed(cfg.seed)
        self.vae = build_autoencoder(cfg.model, pool.channels, cfg.tile_size)
        optimizer = torch.optim.Adam(self.vae.parameters(), lr=cfg.lr)
        self.objective, self.optimizer = self.accelerator.prepare(ReconstructionObjective(self.vae, cfg.kl_weight),
                                                                  optimizer)

    def state_tree(self, step: int) -> dict[str, Any]:
        return {"model": self.vae.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_tree(self, tree: dict[str, Any]) -> None:
        self.vae.load_state_dict(tree["model"])
        self.optimizer.load_state_dict(tree["optimizer"])

    def batches(self, step: int) -> Iterator[torch.Tensor]:
        """This process's tiles of each step: slots ``rank * b ...`` of the global batch's draws."""
        acc, b = self.accelerator, self.cfg.batch_size
        for s in range(step, self.cfg.steps):
            slots = range(acc.process_index * b, (acc.process_index + 1) * b)
            yield self.pool.tiles(self.pool.train, slots, self.cfg.tile_size, self.cfg.seed, s, augment=True).to(acc.device)

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        acc = self.accelerator
        self.objective.train()
        generator = torch.Generator(device=acc.device).manual_seed(sample_seed(self.cfg.seed + 1, step, 0))
        with acc.autocast():
            terms = self.objective(batch, generator, (acc.process_index, acc.num_processes))
        acc.backward(terms["loss"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return terms

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.vae.named_parameters()

    def release(self, step: int) -> None:
        """Set the latent scale, write ``AE/autoencoder`` and the held-out reconstruction report."""
        cfg, pool, vae = self.cfg, self.pool, self.vae
        vae.eval()
        scale_tiles = pool.tiles(pool.train, range(max(cfg.eval_tiles, 16)), cfg.tile_size, cfg.seed + 2, 0, augment=False)
        vae.register_to_config(scaling_factor=latent_scaling_factor(vae, scale_tiles))
        with atomic_directory(self.out / AUTOENCODER_DIR, overwrite=True) as tmp:
            vae.save_pretrained(tmp, safe_serialization=True)
        held = pool.held_out or pool.train
        tiles = pool.tiles(held, range(cfg.eval_tiles), cfg.tile_size, cfg.seed + 3, 0, augment=False)
        quality = reconstruction_quality(vae, tiles)
        _save_grid(self.out / RECONSTRUCTIONS_PNG, tiles, quality.pop("reconstructions"))
        atomic_write_json(self.out / RECONSTRUCTION_JSON, {
            **quality,
            "tiles": cfg.eval_tiles,
            "tile_size": cfg.tile_size,
            "factor": cfg.model.factor,
            "evaluated_on": "held-out cases" if pool.held_out else "training images (the data has one case)",
            "scaling_factor": vae.config.scaling_factor,
            "steps": cfg.steps,
        })


def _save_grid(path: Path, tiles: torch.Tensor, recon: torch.Tensor, columns: int = 8) -> None:
    """Originals above reconstructions, ``columns`` tiles side by side."""
    pick = slice(0, min(columns, len(tiles)))
    rows = [torch.cat(list(t[pick]), dim=-1) for t in (tiles, recon)]
    grid = (torch.cat(rows, dim=-2).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    write_image(path, grid[0] if grid.shape[0] == 1 else np.moveaxis(grid, 0, -1))


def memory_estimate(cfg: AutoencoderTrainConfig, channels: int, mixed_precision: str = "no") -> Estimate:
    """Peak memory of one step (a lower bound, see :mod:`segsynth.fits`): the autoencoder built and
    run (encode, decode) on the ``meta`` device for ``batch_size`` tiles, its saved activations counted."""
    b, side = cfg.batch_size, cfg.tile_size
    with torch.device("meta"):
        vae = build_autoencoder(cfg.model, channels, side)
        weights = list(vae.parameters())
        activations = saved_activation_bytes(lambda: vae(torch.zeros(b, channels, side, side)), weights)
    return training_estimate("train-autoencoder", parameter_bytes(vae), activations, b * side * side * channels * 4,
                             weight_copies=4, mixed_precision=mixed_precision,
                             lower=f"batch_size ({b}) or tile_size ({side})")


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
    split = {"data": [str(r) for r in roots], "train": pool.ids(pool.train), "held_out": pool.ids(pool.held_out),
             "data_sha256": data_hash(pool.datasets)}
    engine = Engine(out, EngineSettings(label="train-autoencoder", steps=cfg.steps, log_every=cfg.log_every,
                                        checkpoint_every=cfg.checkpoint_every, mixed_precision=cfg.mixed_precision,
                                        log_with=cfg.log_with, shown=("l1",)), cfg)
    problem = "the images differ from those of the run being resumed"
    # before the run folder is written: a run that cannot fit is refused with nothing left behind
    check_fits(memory_estimate(cfg, pool.channels, engine.accelerator.mixed_precision), engine.accelerator.device, out)
    if engine.is_main:
        prepare_run_folder(out, cfg, resume, RESUMABLE_CHANGES.__contains__,
                           [RunRecord(IMAGE_SPLIT_JSON, split, dict.fromkeys(("data", "train", "held_out", "data_sha256"), problem),
                                      added=("data_sha256",))])
    engine.accelerator.wait_for_everyone()
    engine.run(AutoencoderTask(engine, pool, cfg), resume=resume, console=console)
    return out
