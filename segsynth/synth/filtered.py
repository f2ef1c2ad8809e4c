"""The filtered writer: draws a frozen segmentation network (the layout judge) does not read as
their layouts are dropped into ``rejected.jsonl``, and the kept ones fill the shard's samples in
draw order, so a resumed filtered run makes the same decisions and the same set."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from segsynth.artifacts.dataset_format import DatasetSpec
from segsynth.artifacts.manifest import ManifestWriter, manifest_name, read_manifest, rejected_name
from segsynth.artifacts.names import IMAGES_DIR
from segsynth.artifacts.schemas import RejectedRecord
from segsynth.io.finite import check_images
from segsynth.progress import StepProgress
from segsynth.synth.config import GenerationConfig, GenerationRecipe
from segsynth.synth.draws import SetDraws, _blocks, _draw, _to_pixels, _write_sample
from segsynth.synth.shards import ShardJob, shard_range

if TYPE_CHECKING:
    from segsynth.synth.judge import LayoutJudge



def _judge(cfg: GenerationConfig, spec: DatasetSpec, device: str | torch.device | None) -> LayoutJudge | None:
    """The frozen network of ``cfg.filter`` (None without a filter), checked against the layouts."""
    if cfg.filter is None:
        return None
    from segsynth.synth.judge import LayoutJudge

    return LayoutJudge(cfg.filter, spec.channels, spec.class_names, device)


def filter_draws(config: GenerationRecipe) -> int:
    """Draws a filtered set may make in all: ``ceil(max_attempts_factor * n)`` (split over the shards
    like the samples, :func:`shard_range`)."""
    assert config.filter is not None
    return math.ceil(round(config.filter.max_attempts_factor * config.n, 9))


def _write_filtered(out: Path, config: GenerationRecipe, judge: LayoutJudge, sources: SetDraws, job: ShardJob,
                    prompt: str) -> int:
    """Fill this shard's samples from its draws in order, keeping a draw only if the judge passes it.

    Draw ``d`` is drawn exactly as sample ``d`` of an unfiltered set (its seed is ``(seed, d)``), so a
    threshold of 0 gives the unfiltered set. The k-th kept draw of a shard becomes its k-th sample;
    a rejected draw gets a line in ``rejected.jsonl`` instead. Both files are appended in draw order
    (each line fsynced), so after a kill the committed draws are a prefix of the shard's draws, and
    the block that holds the first undecided draw is rendered whole again, in the same batches as
    an uninterrupted run: the same decisions, the same set. Stops at the shard's sample count or when
    its draws (:func:`filter_draws`) run out, then warns with the count kept.

    Returns:
        Samples written by this call.
    """
    shard, console = job.shard, job.console
    slots = shard_range(config.n, shard)
    draws = shard_range(filter_draws(config), shard)
    part, rejected_part = out / manifest_name(*shard), out / rejected_name(*shard)
    kept: dict[int, int] = {}  # draw -> slot of the samples on disk
    for record in read_manifest(part):  # _done_indices has already dropped lines without files
        if record.draw is None:
            raise ValueError(f"{part}: sample {record.id} has no 'draw'; not a filtered set's manifest")
        kept[record.draw] = record.index
    rejected = {r.draw for r in read_manifest(rejected_part, repair=True, model=RejectedRecord) if r.draw in draws}
    decided = set(kept) | rejected
    generated = 0
    with ManifestWriter(part) as writer, ManifestWriter(rejected_part) as rejects, \
            StepProgress("generate", len(slots), console, len(kept)) as progress:
        for block in _blocks(draws, sources.batch_size):
            if len(kept) >= len(slots):
                break
            todo = [d for d in block if d not in decided]
            if not todo:
                continue
            block_draws = [_draw(d, config.seed, sources.layouts, sources.styles) for d in block]
            images = sources.render(block, block_draws)
            check_images(images, block.start, f"generate {out}")
            # the whole block is judged, as it was rendered: the judge's batches stay those of an
            # uninterrupted run too, so no float in its decision can differ after a resume
            scores = judge.score([_to_pixels(image) for image in images], [drawn["layout"] for drawn in block_draws],
                                 [out / IMAGES_DIR / f"draw_{d:07d}.png" for d in block])
            for d in todo:
                dice = scores[d - block.start]
                if len(kept) >= len(slots):
                    break
                draw = block_draws[d - block.start]
                if not judge.keeps(dice):
                    rejects.append(RejectedRecord(draw=d, seed=draw["seed"], layout_id=draw["layout_id"],
                                                  style_ids=draw["style_ids"], judge_dice=dice))
                    decided.add(d)
                    continue
                slot = slots.start + sum(1 for k in kept if k < d)
                if slot in kept.values():
                    raise ValueError(f"{part}: sample {slot} is already taken by another draw; the set's files were "
                                     "changed since it was written (generate it into a new folder)")
                record = _write_sample(out, slot, draw, images[d - block.start], config, prompt)
                record = record.model_copy(update={"draw": d, "judge_dice": dice})
                writer.append(record)
                kept[d] = slot
                decided.add(d)
                generated += 1
                progress.advance()
                if job.on_sample is not None:
                    job.on_sample(record)
    if len(kept) < len(slots):
        message = (f"generate {out}: the filter (min_dice {judge.record.min_dice}) kept {len(kept)} of the "
                   f"{len(slots)} samples of shard {shard[0]}/{shard[1]} after all its {len(draws)} draws "
                   f"(max_attempts_factor {judge.record.max_attempts_factor}); the set is finished with fewer samples")
        warnings.warn(message, stacklevel=2)
        if console is not None:
            console.print(f"[yellow]warning:[/] {message}", highlight=False)
    return generated


def _filtered_parts_complete(out: Path, config: GenerationRecipe) -> bool:
    """Cheap test whether every shard of a filtered set is done: all its samples kept, or all its
    draws decided (kept or rejected)."""
    total = filter_draws(config)
    for index in range(config.num_shards):
        shard = (index, config.num_shards)
        kept, rejected = (_line_count(out / name(*shard)) for name in (manifest_name, rejected_name))
        if kept != len(shard_range(config.n, shard)) and kept + rejected != len(shard_range(total, shard)):
            return False
    return True


def _line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0
