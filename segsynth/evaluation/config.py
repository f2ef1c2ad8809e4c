"""What ``evaluate_synth`` measures on: one config object instead of a row of keyword arguments.

Recorded in ``metrics.json`` (``config``), so two evaluations can be told apart by what they
sampled, and read from YAML / ``--set`` like every other command's config.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from segsynth.config import StrictModel


class EvaluationConfig(StrictModel):
    """The samples and tiles a synthetic set is measured on.

    Attributes:
        real_split: real images used for FID/KID and diversity: ``all``, ``labeled`` or
            ``unlabeled`` (cut into tiles of the synthetic size; layout fidelity always uses the
            synthetic set's own layouts, judged by a network trained on labelled real images).
        max_samples: synthetic samples evaluated (a seeded subset of larger sets; None: all).
        max_real_tiles: real tiles used (a seeded subset; None: all).
        kid_subsets: random subsets KID is averaged over.
        seed: seed of every subset and of the random style / texture network.
    """

    real_split: Literal["all", "labeled", "unlabeled"] = "all"
    max_samples: Annotated[int, Field(ge=1)] | None = 2000
    max_real_tiles: Annotated[int, Field(ge=1)] | None = 1000
    kid_subsets: Annotated[int, Field(ge=1)] = 50
    seed: int = 0
