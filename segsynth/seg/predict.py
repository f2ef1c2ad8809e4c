"""``segsynth predict MODEL IMAGES -o MASKS``: a trained segmentation network applied to new images.

``MODEL`` is a saved network (``model.json`` + ``model.safetensors``), a ``train-seg`` run folder
(its ``best/`` network) or the ``final/`` folder of ``segsynth run`` (its ``network/``). ``IMAGES``
is a folder of PNG/TIFF/JPEG/NIfTI images, or a dataset folder (its ``images/``).

Each image is read and scaled exactly as training and ``evaluate-seg`` read it
(:func:`segsynth.data.dataset.unit_range_image`, then the same channel layout), a NIfTI volume slice
by slice along its last axis, and run through :func:`segsynth.seg.networks.predict_logits`: tiled by
MONAI's sliding window with the network's training patch when it was trained on patches, whole
otherwise. Without test-time augmentation the mask is the argmax of those logits, the very pixels
``evaluate-seg`` scores.

The mask takes the image's stem and format (JPEG, which cannot hold exact labels, becomes PNG) and
its geometry (a NIfTI mask carries the volume's affine and header). Pixel values are the label
values of the network's classes (0 = background). Each file is written atomically, probabilities
before the mask, so a mask on disk is complete and a re-run skips it; ``prediction.json`` records
the network and settings, and a folder made with others is refused instead of being mixed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from rich.console import Console

from segsynth.artifacts.names import (
    BEST_DIR,
    DATASET_JSON,
    IMAGES_DIR,
    MODEL_JSON,
    MODEL_WEIGHTS,
    NETWORK_DIR,
    PREDICTION_JSON,
    PROBABILITIES_DIR,
)
from segsynth.config import StrictModel
from segsynth.data.dataset import unit_range_image
from segsynth.data.io import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    NIFTI_EXTENSIONS,
    DataReadError,
    image_shape,
    split_ext,
    write_image,
)
from segsynth.data.loader import MAX_RASTER_CHANNELS, channels_first, list_stems
from segsynth.device import inference_device
from segsynth.fits import Estimate, check_memory
from segsynth.io.atomic import atomic_write_json
from segsynth.io.guard import OutputPathError, check_out_apart
from segsynth.io.json_file import read_json_object
from segsynth.io.lock import owns_folder
from segsynth.progress import StepProgress
from segsynth.seg.networks import load_network, predict_logits

#: Image formats whose masks are written as PNG instead (lossy formats cannot hold exact labels).
MASK_FALLBACK_EXT = ".png"
#: Probability maps are float32: TIFF for raster images (one page per class), NIfTI for NIfTI ones.
PROBABILITY_RASTER_EXT = ".tif"


class PredictConfig(StrictModel):
    """How ``segsynth predict`` runs the network.

    Attributes:
        overlap: fraction by which neighbouring sliding windows overlap (MONAI's ``overlap``); more
            overlap blends more windows per pixel, slower and smoother at window borders.
        window: side of the sliding window; default the network's training patch (a network trained on
            whole images then runs on whole images, as in ``evaluate-seg``).
        tta: test-time augmentation: average the class probabilities over the image and its
            horizontal, vertical and double flips (4 passes).
        probabilities: also write the per-class probability maps (float32) under ``probabilities/``.
    """

    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    window: int | None = Field(default=None, ge=8)
    tta: bool = False
    probabilities: bool = False


def network_dir(model: str | Path) -> Path:
    """The folder of the saved network ``model`` names: itself, a run's ``best/`` or a final folder's ``network/``.

    Raises:
        FileNotFoundError: none of the three, naming the folder.
    """
    model = Path(model)
    for candidate in (model, model / BEST_DIR, model / NETWORK_DIR):
        if (candidate / MODEL_JSON).is_file():
            return candidate
    raise FileNotFoundError(
        f"{model}: no segmentation network here (looked for {MODEL_JSON} in it, in {BEST_DIR}/ of a train-seg run "
        f"and in {NETWORK_DIR}/ of a segsynth run's final folder)"
    )


def image_folder(images: str | Path) -> Path:
    """``images`` itself, or ``images/images`` when ``images`` is a dataset folder."""
    images = Path(images)
    if (images / DATASET_JSON).is_file() and (images / IMAGES_DIR).is_dir():
        return images / IMAGES_DIR
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: not a folder of images")
    return images


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(images, other files)`` of ``folder`` (not hidden, not sub-folders), sorted by name.

    Raises:
        DataReadError: two files share a stem (their masks would share a name).
        ValueError: no image at all.
    """
    found = sorted(list_stems(folder).values(), key=lambda p: p.name)
    files = [p for p in found if split_ext(p)[1] in IMAGE_EXTENSIONS]
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files, [p for p in found if p not in files]


def mask_name(image: Path) -> str:
    """The mask's file name: the image's stem and format (a lossy image's mask is PNG)."""
    stem, ext = split_ext(image)
    return stem + (ext if ext in MASK_EXTENSIONS else MASK_FALLBACK_EXT)


def probability_name(image: Path) -> str:
    stem, ext = split_ext(image)
    return stem + (ext if ext in NIFTI_EXTENSIONS else PROBABILITY_RASTER_EXT)


def file_channels(path: Path) -> int:
    """Channels of an image from its header (NIfTI is single-channel; see :mod:`segsynth.data.loader`)."""
    shape = image_shape(path)
    if split_ext(path)[1] in NIFTI_EXTENSIONS:
        if len(shape) > 3:
            raise DataReadError(path, f"NIfTI images must be (X, Y) or (X, Y, Z) single-channel, got {shape}")
        return 1
    return shape[2] if len(shape) == 3 and shape[2] <= MAX_RASTER_CHANNELS else 1


def check_channels(files: Sequence[Path], channels: int, model: Path) -> None:
    """Refuse the first image whose channel count is not the network's, before anything is written.

    Raises:
        DataReadError: naming the image, its channels and the network's.
    """
    for path in files:
        found = file_channels(path)
        if found != channels:
            raise DataReadError(
                path, f"has {found} channel(s), but the network in {model} takes {channels}; "
                "convert the images to the channels the network was trained on"
            )


def _weights_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    with open(directory / MODEL_WEIGHTS, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open_folder(out: Path, record: dict[str, Any]) -> None:
    """Write ``prediction.json``, or check that the folder's masks were made the same way.

    Raises:
        OutputPathError: the folder holds files but no ``prediction.json``.
        ValueError: the folder holds masks of another network or other settings.
    """
    path = out / PREDICTION_JSON
    held = sorted(entry.name for entry in out.iterdir() if not entry.name.startswith(".")) if out.is_dir() else []
    if held and not path.is_file():
        # not a folder of predictions: its files (the user's own masks, say) would mix with ours
        raise OutputPathError(
            f"--out {out} holds {len(held)} entries but no {PREDICTION_JSON} ({', '.join(held[:5])}); "
            "predictions go to a new or empty folder, or to one an earlier predict wrote"
        )
    if path.is_file():
        saved = read_json_object(path)
        keys = ("network_sha256", "window", "overlap", "tta")
        differs = [k for k in keys if saved.get(k) != record[k]]
        if differs:
            raise ValueError(
                f"{path}: the masks here were predicted with another {', '.join(differs)}; "
                "use a new --out (or delete the folder) so masks of two networks are never mixed"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)


class Predictor:
    """A loaded network and the settings it predicts with (class probabilities of one 2D image)."""

    def __init__(self, model: Path, config: PredictConfig) -> None:
        self.directory = network_dir(model)
        self.model, _, self.meta = load_network(self.directory)
        self.model.to(inference_device())
        self.config = config
        self.window = config.window if config.window is not None else self.meta.get("patch_size")
        divisor = int(self.meta["divisor"])
        if self.window is not None and self.window % divisor:
            raise ValueError(f"window {self.window}: the network in {self.directory} needs a multiple of {divisor}")
        if self.window is not None:
            check_memory(self._window_estimate(), inference_device())  # before any mask is written

    def _window_estimate(self) -> Estimate:
        """What one window holds at least: its input, and the logits, the blending weights and the
        blended sum MONAI keeps per class (the network's own activations not counted: a lower bound)."""
        pixels = int(self.window) ** 2
        classes = len(self.meta["class_names"])
        parts = {f"window input ({self.window}x{self.window})": pixels * self.channels * 4,
                 "logits, blending weights and sum": pixels * (2 * classes + 1) * 4}
        return Estimate("predict", parts, lower=f"--window ({self.window})")

    @property
    def channels(self) -> int:
        return int(self.meta["in_channels"])

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        return predict_logits(self.model, image, self.meta["divisor"], self.window, self.config.overlap)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(mask (H, W) int64, probabilities (K, H, W) float32 or None)`` of ``image`` (C, H, W) in [0, 1].

        Without TTA the mask is the argmax of the logits (what ``evaluate-seg`` scores) and the
        probabilities their softmax; with TTA both come from the mean probabilities of the flips.
        """
        x = torch.from_numpy(np.ascontiguousarray(image))[None]
        if not self.config.tta:
            logits = self._logits(x)[0]
            probs = torch.softmax(logits, 0) if self.config.probabilities else None
            mask = logits.argmax(0)
        else:
            probs = torch.softmax(self._logits(x)[0], 0)
            for dims in ((-1,), (-2,), (-2, -1)):  # flipped back on the same (last) axes of (K, H, W)
                probs += torch.softmax(self._logits(x.flip(dims))[0], 0).flip(dims)
            probs /= 4
            mask = probs.argmax(0)
        return mask.numpy().astype(np.int64), (probs.numpy().astype(np.float32) if probs is not None else None)


def _predict_file(predictor: Predictor, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Mask and probabilities of one file; a NIfTI volume slice by slice, stacked on its last axis."""
    arr = unit_range_image(path)  # the whole file is scaled at once, as in training
    volume = split_ext(path)[1] in NIFTI_EXTENSIONS and arr.ndim == 3
    slices = [arr[..., z] for z in range(arr.shape[2])] if volume else [arr]
    masks, probs = [], []
    for plane in slices:
        mask, prob = predictor(channels_first(plane, predictor.channels, path))
        masks.append(mask)
        probs.append(prob)
    if not volume:
        prob = probs[0]
        if prob is not None and split_ext(path)[1] in NIFTI_EXTENSIONS:
            prob = np.moveaxis(prob, 0, -1)  # (X, Y, K): NIfTI keeps its spatial axes first
        return masks[0], prob
    mask = np.stack(masks, axis=-1)
    prob = np.stack(probs, axis=-1).transpose(1, 2, 3, 0) if probs[0] is not None else None  # (X, Y, Z, K)
    return mask, prob


def _mask_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.uint16


@owns_folder("out")
def predict(
    model: str | Path,
    images: str | Path,
    out: str | Path,
    config: PredictConfig | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Segment every image of ``images`` with the network ``model`` into the folder ``out``.

    Args:
        model: a saved network folder, a ``train-seg`` run folder or a ``segsynth run`` final folder.
        images: a folder of images, or a dataset folder (its ``images/``).
        out: the masks folder (created; a folder from an earlier call with the same network and
            settings continues: its complete masks are skipped).
        config: the :class:`PredictConfig` (default: its defaults).
        console: progress (default: stderr).

    Returns:
        ``{"network", "images", "out", "masks": [file names], "predicted": n, "skipped": n, "not_images":
        [names of the files left alone, e.g. a README]}``.

    Raises:
        FileNotFoundError: no network or no image folder.
        DataReadError: an unreadable image, or one whose channels differ from the network's.
        OutputPathError: ``out`` at, inside or around the images or the model, or a non-empty
            folder that no earlier ``predict`` wrote.
        ValueError: ``out`` holds masks of another network or settings.
    """
    config = config or PredictConfig()
    console = console or Console(stderr=True)
    out = Path(out)
    folder = image_folder(images)
    check_out_apart(out, [images, model])
    files, others = list_images(folder)
    predictor = Predictor(Path(model), config)
    check_channels(files, predictor.channels, predictor.directory)
    record = {
        "network": str(predictor.directory.resolve()),
        "network_sha256": _weights_sha256(predictor.directory),
        "class_names": predictor.meta["class_names"],
        "images": str(folder.resolve()),
        "window": predictor.window,
        **config.model_dump(mode="json", exclude={"window"}),
    }
    _open_folder(out, record)
    dtype = _mask_dtype(len(predictor.meta["class_names"]))
    todo = [p for p in files if not _complete(out, p, config)]
    with StepProgress("predict", len(files), console, len(files) - len(todo)) as progress:
        for path in todo:
            mask, prob = _predict_file(predictor, path)
            if prob is not None:
                write_image(out / PROBABILITIES_DIR / probability_name(path), prob, like=path)
            write_image(out / mask_name(path), mask.astype(dtype), like=path)
            progress.advance()
    return {"network": record["network"], "images": record["images"], "out": str(out),
            "masks": [mask_name(p) for p in files], "predicted": len(todo), "skipped": len(files) - len(todo),
            "not_images": [p.name for p in others]}


def _complete(out: Path, image: Path, config: PredictConfig) -> bool:
    """Whether ``image`` is done: its mask is there (written last) and, when asked, its probabilities."""
    if not (out / mask_name(image)).is_file():
        return False
    return not config.probabilities or (out / PROBABILITIES_DIR / probability_name(image)).is_file()
