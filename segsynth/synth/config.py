"""What a synthetic set is made with: the user's :class:`GenerationConfig`, and the
:class:`GenerationRecipe` that ``generation.json`` saves (its ``config`` record) once the run has
filled in what the user left to it.

Two types, because they answer two questions. The config is what a user asks for: None leaves a
setting to the run (its training data, style sampler, number of references) and the batch size is
there because it is a choice of the user's, though it changes no sample. The record is the recipe
that decides every byte of the set, compared on resume: everything resolved, plus the model's hash
and the shard count, and no batch size, so a set resumes with any batch size.

This module needs only pydantic, so the command line builds and checks a config before torch loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from segsynth.config import SamplerName, StrictModel, parse_config
from segsynth.renamed import renamed_attributes

Count = Annotated[int, Field(ge=1)]
Steps = Annotated[int, Field(ge=1, le=1000)]
Scale = Annotated[float, Field(ge=0)]
Rescale = Annotated[float, Field(ge=0, le=1)]
Seed = Annotated[int, Field(ge=0)]
Side = Annotated[int, Field(ge=8)]
Pixels = Annotated[int, Field(ge=0)]
LayoutKind = Literal["augmented", "variants", "composed"]

#: Default prompt guidance of a text model (``model.text``). In ``benchmarks/results/edge_text.json``
#: (one 1500-step model of the three built-in datasets), guidance 3 instead of 1 raises how often
#: a prompt's samples on its own dataset's layouts are classified as its modality from 0.75 to 0.90,
#: at the same layout fidelity (0.87 of the real ceiling), for one more UNet row per step.
TEXT_GUIDANCE = 3.0
EdgeSource = Literal["layout", "image"]
Fraction = Annotated[float, Field(ge=0, le=1)]


class FilterSettings(StrictModel):
    """How strictly a set's samples must follow their layouts (the judge aside; the benchmark
    supplies its own judge per fold).

    Attributes:
        min_dice: a sample is kept only when the judge's prediction on its image scores at least
            this mean foreground Dice against its layout (0 keeps every sample).
        max_attempts_factor: draws allowed per requested sample: at most ``ceil(factor * n)`` draws
            are made (split over the shards like the samples); when they run out before ``n``
            samples pass, the set is finished with fewer samples, a warning and ``reached_cap``.
    """

    min_dice: Fraction
    max_attempts_factor: Annotated[float, Field(ge=1)] = 3.0


class FilterConfig(FilterSettings):
    """:class:`FilterSettings` with the judge: a ``train-seg`` run (its ``best/`` network), a saved
    network folder, or a ``segsynth run`` final folder, trained on real data only."""

    judge: Path


class FilterRecord(StrictModel):
    """The filter as ``generation.json`` keeps it: the judge by path and by weights, so resuming
    with another judge (other decisions, another set) is refused."""

    judge: str
    judge_hash: str
    min_dice: Fraction
    max_attempts_factor: Annotated[float, Field(ge=1)]


class GenerationConfig(StrictModel):
    """The settings of one synthetic set, as a user gives them (``segsynth generate -c gen.yaml``,
    its flags, or ``generate(run, out, GenerationConfig(n=...))``).

    Attributes:
        n: samples in the whole set (over all shards).
        layouts: ``augmented``, ``variants`` or ``composed`` (see :mod:`segsynth.synth.layouts`).
        per_mask: images per real mask for ``variants`` (DiffBoost: 50).
        class_prior: ``{label: weight}`` for ``augmented`` (default uniform over present classes).
        layout_data: labelled dataset giving masks / composition prior and ``dataset.json`` fields;
            None: the run's training data.
        styles: style pool (dataset folder, its ``unlabeled/``, or a plain image folder); None: the
            ``unlabeled/`` split of the run's training data, or no references without a run (the
            model's learned null style).
        style_sampler: ``augmented``, ``nearby`` or ``multi_patch``; None: the run's sampler.
        num_refs: style references per sample; None: the run's N.
        sampler, steps, style_guidance, layout_guidance, guidance_rescale: the pipeline's sampling
            settings (STEDM: DDIM 128 steps, style 1.5, rescale 0.7). The default, DPM-Solver++ with
            10 steps (20 UNet rows per image with style guidance, 12.8x fewer than STEDM's 256),
            keeps layout fidelity within 2 Dice points of STEDM's setting on one model
            (``benchmarks/results/sampler_steps.json``) and the downstream ΔDice of the committed
            benchmark within 0.003 of DPM-Solver++ 20 on all three built-in datasets; UniPC with
            5 steps, cheaper still and as faithful by that fidelity measure, cost 3.4-3.6 Dice
            points downstream on brain-mri (``benchmarks/results/downstream-before-after.md``).
        seed: base seed; sample ``index`` draws from a seed of ``(seed, index)``.
        edges: edge models only: ``layout`` (None means this: the layout's boundary, no real image
            needed) or ``image`` (also the Canny edges of the real image behind each mask; needs
            ``layouts="variants"``, whose masks are the real images' own, uncropped differently).
        edge_guidance: guidance scale of the edge condition (1: off).
        prompt: text models only: the prompt; None: ``prompt`` of the layout data's dataset.json.
        text_guidance: guidance scale of the text condition; None: :data:`TEXT_GUIDANCE` for a
            text model, or for a ControlNet run the prompt's classifier-free guidance of the run
            (``sampling.guidance_scale``).
        size: side of the generated images and masks; None: the model's training size. Larger
            layouts are denoised in overlapping tiles of the training size, blended at every step,
            so memory is bounded by the tile, not the image.
        tile_overlap: pixels shared by neighbouring tiles; None: a quarter of the tile.
        batch_size: samples per pipeline call (changes no sample, so it is not recorded).
        filter: drop samples whose image a frozen real-data segmenter does not read as their layout
            (:class:`FilterConfig`); rejected draws are listed in ``rejected.jsonl``. None: keep all.
        mixed_precision: ``auto`` runs the denoiser under bf16 autocast on CUDA and on a CPU with
            native bf16 (full precision elsewhere), ``bf16`` asks for it, ``no`` keeps fp32. The
            sampler's state, the guidance arithmetic and the decoded images stay fp32. The set's
            ``generation.json`` records the precision it was drawn in (``precision``), since it
            changes the bytes. On a CPU with AVX512-BF16, bf16 sampled 1.64x faster than fp32 at
            the same layout fidelity (``benchmarks/results/sampling_precision.json``).
    """

    n: Count
    layouts: LayoutKind = "augmented"
    per_mask: Count = 50
    class_prior: dict[str, float] | None = None
    layout_data: Path | None = None
    styles: Path | None = None
    style_sampler: str | None = None
    num_refs: Count | None = None
    sampler: SamplerName = "dpmpp"
    steps: Steps = 10
    style_guidance: Scale = 1.5
    layout_guidance: Scale = 1.0
    guidance_rescale: Rescale = 0.7
    seed: Seed = 0
    edges: EdgeSource | None = None
    edge_guidance: Scale = 1.0
    prompt: str | None = None
    text_guidance: Scale | None = None
    size: Side | None = None
    tile_overlap: Pixels | None = None
    batch_size: Count = 8
    filter: FilterConfig | None = None
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"

    @model_validator(mode="after")
    def _image_edges_need_variants(self) -> GenerationConfig:
        if self.edges == "image" and self.layouts != "variants":
            raise ValueError("edges 'image' (the real image's edges) needs layouts 'variants' "
                             "(a mask unchanged next to its own image)")
        return self

    def resolve(self, model_hash: str, num_shards: int, resolved: Mapping[str, Any]) -> GenerationRecipe:
        """The recipe of a set made with this config: the settings the user decides as they are,
        ``resolved`` (what the run filled in, and the model-dependent edge / text keys) for the rest.

        Raises:
            ConfigError: a resolved value the record refuses (naming the key).
        """
        own = self.model_dump(include=set(RECORD_VERBATIM))
        return parse_config(GenerationRecipe, {**own, "model_hash": model_hash, "num_shards": num_shards, **resolved},
                            "generate")


#: Settings a record takes from the user's config unchanged; the others the run resolves.
RECORD_VERBATIM = ("n", "layouts", "per_mask", "class_prior", "sampler", "steps", "style_guidance", "layout_guidance",
                   "guidance_rescale", "seed", "size", "tile_overlap")


class GenerationRecipe(StrictModel):
    """Everything that decides the bytes of a synthetic set (the ``config`` key of ``generation.json``,
    whose whole file is :class:`segsynth.artifacts.schemas.GenerationRecord`).

    Resuming, or adding a shard, with different values is refused: the set would mix two recipes.
    Only the keys that edge / text models or large images use have defaults: they are left out of
    the saved file at their defaults (:meth:`saved`), so sets made without them keep their bytes.
    """

    n: Count
    layouts: LayoutKind
    per_mask: Count
    class_prior: dict[str, float] | None
    layout_data: str
    styles: str | None
    style_sampler: str | None
    num_refs: Count | None  # None: a model without style references (ControlNet runs)
    sampler: SamplerName
    steps: Steps
    style_guidance: Scale
    layout_guidance: Scale
    guidance_rescale: Rescale
    seed: Seed
    num_shards: Count
    model_hash: str
    edge_source: EdgeSource | None = None
    edge_guidance: Scale = 1.0
    prompt: str | None = None
    text_guidance: Scale = 1.0
    size: Side | None = None
    tile_overlap: Pixels | None = None
    filter: FilterRecord | None = None
    precision: Literal["fp32", "bf16"] = "fp32"

    def saved(self) -> dict[str, Any]:
        """The record as ``generation.json`` holds it: the optional keys only where they differ
        from their defaults."""
        optional = {name: field.default for name, field in type(self).model_fields.items() if not field.is_required()}
        data = self.model_dump(mode="json")
        return {k: v for k, v in data.items() if not (k in optional and v == optional[k])}


__getattr__ = renamed_attributes(__name__, {"GenerationRecord": "GenerationRecipe"})
