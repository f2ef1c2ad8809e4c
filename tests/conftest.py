"""Shared fixtures: tiny, valid dataset folders written in a few milliseconds.

``write_tiny_dataset`` is a plain function (importable as ``from conftest import write_tiny_dataset``)
so tests can build variants; ``tiny_dataset`` is the default 3-case PNG folder as a fixture.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# One intra-op thread for the whole suite, set before torch starts: tests compare tensors bit for
# bit (a resumed run with an uninterrupted one, a sample drawn alone with the same sample in a
# batch), which a multi-threaded reduction does not promise; the kill tests fork this process,
# and a forked child of a multi-threaded OpenMP runtime can hang; and child ``segsynth``
# processes inherit the setting.
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from segsynth.artifacts.names import IMAGES_DIR, MASKS_DIR, UNLABELED_DIR
from segsynth.data.format import DatasetSpec, save_spec
from segsynth.data.io import write_image


#: The smallest diffusion model the trainer accepts (16 px, two levels): for CLI and subprocess tests.
TINY_DIFFUSION_MODEL = {
    "image_size": 16,
    "block_out_channels": [8, 16],
    "attention_levels": [False, True],
    "style": {"encoder_channels": [8, 16], "dim": 16, "num_refs": 2},
}

#: A benchmark's segmentation runs at their smallest: 6 steps of a two-level network.
TINY_SEG_OVERRIDES = {"train.steps": 6, "train.val_every": 2, "train.batch_size": 2,
                      "network.channels": [8, 16], "network.strides": [2]}

def make_fifo(path: Path, watch_s: float = 120.0) -> Path:
    """Create a FIFO at ``path`` that cannot hang the test reading it.

    A daemon thread opens it for writing, and closes it again, whenever a reader is blocked on it
    (the regression the FIFO tests guard against), so the reader sees end of file at once: a test
    then fails on its assertions instead of waiting forever.
    """
    os.mkfifo(path)

    def unblock() -> None:
        deadline = time.monotonic() + watch_s
        while time.monotonic() < deadline and os.path.lexists(path):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only while a reader waits
            except OSError:
                pass
            time.sleep(0.05)

    threading.Thread(target=unblock, daemon=True).start()
    return path


def tiny_pair(rng: np.random.Generator, size: int, channels: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One image/mask pair: a mask of random discs (one per foreground class) and a uint8 image
    whose intensity follows the mask plus noise, so image and layout are visibly related.

    Returns:
        ``image`` uint8 ``(H, W)`` or ``(H, W, C)`` and ``mask`` uint8 ``(H, W)``.
    """
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), dtype=np.uint8)
    for label in range(1, num_classes):
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        radius = rng.integers(max(2, size // 8), max(3, size // 3))
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = label
    base = 40 + 180 * mask.astype(np.float32) / max(num_classes - 1, 1)
    noise = rng.normal(0, 10, size=(size, size, channels))
    image = np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)
    return (image[..., 0] if channels == 1 else image), mask


def write_tiny_dataset(
    root: str | Path,
    cases: Sequence[str] = ("p1", "p2", "p3"),
    per_case: int = 2,
    size: int = 16,
    channels: int = 1,
    labels: Sequence[str] = ("background", "lesion"),
    unlabeled: int = 2,
    ext: str = ".png",
    seed: int = 0,
) -> Path:
    """Write a valid dataset folder: ``per_case`` labelled images for each case, plus ``unlabeled``
    extra images (case ``"u1"``) in ``unlabeled/``. Stems are ``<case>_<idx>``.

    Returns:
        ``root`` as a ``Path``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    case_of: dict[str, str] = {}
    for case in cases:
        for idx in range(per_case):
            stem = f"{case}_{idx}"
            image, mask = tiny_pair(rng, size, channels, len(labels))
            write_image(root / IMAGES_DIR / f"{stem}{ext}", image)
            write_image(root / MASKS_DIR / f"{stem}{ext}", mask)
            case_of[stem] = case
    unlabeled_of: dict[str, str] = {}
    for idx in range(unlabeled):
        stem = f"u1_{idx}"
        image, _ = tiny_pair(rng, size, channels, len(labels))
        write_image(root / UNLABELED_DIR / f"{stem}{ext}", image)
        unlabeled_of[stem] = "u1"
    spec = DatasetSpec(
        name="tiny",
        description="synthetic discs for tests",
        modality="Fluorescence microscopy",
        prompt="Nuclei, fluorescence microscopy",
        channels=channels,
        labels={name: value for value, name in enumerate(labels)},
        label_provenance="human",
        licence="CC0-1.0",
        cases=case_of,
        unlabeled_cases=unlabeled_of,
    )
    save_spec(root, spec)
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A valid 3-case, 6-image, 16 px single-channel PNG dataset with 2 unlabelled images."""
    return write_tiny_dataset(tmp_path / "data")


@pytest.fixture
def dataset_factory(tmp_path: Path) -> Callable[..., Path]:
    """``factory(name="data", **kwargs)`` writes ``write_tiny_dataset(tmp_path / name, **kwargs)``."""

    def factory(name: str = "data", **kwargs) -> Path:
        return write_tiny_dataset(tmp_path / name, **kwargs)

    return factory


def write_tiny_manifest(root: str | Path, layout_ids: dict[str, str | None]) -> Path:
    """Give the synthetic set at ``root`` the ``manifest.jsonl`` that ``segsynth generate`` writes:
    one record per image stem in ``layout_ids``, whose layout came from real sample ``layout_ids[stem]``
    (None: a composed layout).

    Returns:
        The manifest's path.
    """
    from segsynth.artifacts.schemas import Guidance, ManifestRecord
    from segsynth.synth.manifest import write_manifest

    records = [
        ManifestRecord(
            id=stem, image=f"{IMAGES_DIR}/{stem}.png", mask=f"{MASKS_DIR}/{stem}.png", index=index, seed=index,
            layout_source="variants" if layout_id else "composed", layout_id=layout_id, style_source=None,
            style_sampler=None, style_ids=[], prompt="tiny", guidance=Guidance(style=1.5, layout=1.0, rescale=0.7),
            sampler="dpmpp", steps=2, model_hash="0" * 64,
        )
        for index, (stem, layout_id) in enumerate(sorted(layout_ids.items()))
    ]
    return write_manifest(Path(root) / "manifest.jsonl", records)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tiny models: they run fastest that way and do not fight other
    processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_untrained_run(run: Path, data: Path) -> Path:
    """A run folder ``generate`` accepts, holding an untrained tiny model: for tests of what happens
    around sampling (locks, refusals, tampered files), where the images do not matter."""
    import json

    from segsynth.diffusion.objective import ObjectiveConfig, make_train_scheduler
    from segsynth.diffusion.pipeline import SegSynthPipeline
    from segsynth.models.config import ModelConfig
    from segsynth.models.model import SegSynthModel

    torch.manual_seed(0)
    cfg = ModelConfig(image_channels=1, num_classes=2, **TINY_DIFFUSION_MODEL)
    pipe = SegSynthPipeline.from_model(SegSynthModel.from_config(cfg), make_train_scheduler(ObjectiveConfig()))
    pipe.save_pretrained(run / "pipeline")
    (run / "training_data.json").write_text(json.dumps({"data_root": str(data), "num_refs": 2}))
    return run
