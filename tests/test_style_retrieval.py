"""The style-retrieval measure answers to style, not to content: re-styled copies are retrieved, re-styled
copies of a sample's own references in random styles are not.

Every image here is one *content* (a map of discs) rendered in one *style* (a colour for background
and discs, plus grain of a given strength and size). A sample that is a reference of set A
re-rendered in the style of set B is the hardest honest case for the measure: its content points
at A, its style at B, and only B is its own set.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from segsynth.evaluation.style_retrieval import style_retrieval

SIZE, SETS, REFS, PER_SET = 24, 16, 3, 4


def random_content(rng: np.random.Generator) -> np.ndarray:
    """A ``(SIZE, SIZE)`` bool map of a few random discs."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    content = np.zeros((SIZE, SIZE), bool)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx, r = rng.integers(3, SIZE - 3, 2).tolist() + [int(rng.integers(2, SIZE // 4))]
        content |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return content


def random_style(rng: np.random.Generator) -> dict[str, np.ndarray | float]:
    """Background and disc colours (RGB), grain strength and grain size."""
    return {"background": rng.uniform(0.1, 0.9, 3), "foreground": rng.uniform(0.1, 0.9, 3),
            "grain": float(rng.uniform(0.02, 0.12)), "scale": float(rng.uniform(0.3, 2.0))}


def render(content: np.ndarray, style: dict, rng: np.random.Generator) -> np.ndarray:
    """``content`` painted in ``style``: ``(3, SIZE, SIZE)`` float32 in [0, 1]."""
    colour = np.where(content[None], style["foreground"][:, None, None], style["background"][:, None, None])
    grain = gaussian_filter(rng.normal(0, 1, (3, SIZE, SIZE)), (0, style["scale"], style["scale"]))
    grain *= style["grain"] / grain.std()
    return np.clip(colour + grain, 0, 1).astype(np.float32)


def world(seed: int = 0) -> tuple[list[dict], dict[str, np.ndarray], list[list[str]], list[np.ndarray]]:
    """``SETS`` styles, each with ``REFS`` reference images of their own content.

    Returns:
        ``(styles, reference images by key, the key list of each set, each reference's content)``.
    """
    rng = np.random.default_rng(seed)
    styles = [random_style(rng) for _ in range(SETS)]
    images, sets, contents = {}, [], []
    for s, style in enumerate(styles):
        keys = [f"set{s}_ref{r}" for r in range(REFS)]
        for key in keys:
            contents.append(random_content(rng))
            images[key] = render(contents[-1], style, rng)
        sets.append(keys)
    return styles, images, sets, contents


def test_restyled_copies_of_other_sets_references_are_retrieved_by_their_style() -> None:
    styles, images, sets, contents = world()
    rng = np.random.default_rng(1)
    samples, own = [], []
    for s in range(SETS):
        for k in range(PER_SET):  # content of another set's reference: it points at the wrong set
            other = (s + 1 + k % (SETS - 1)) % SETS
            samples.append(render(contents[other * REFS + k % REFS], styles[s], rng))
            own.append(sets[s])
    result = style_retrieval(samples, own, images, channels=3)
    assert result["num_reference_sets"] == SETS and result["top1_chance"] == pytest.approx(1 / SETS)
    assert result["pairwise_accuracy"] >= 0.9  # chance 0.5
    assert result["top1_accuracy"] >= 5 * result["top1_chance"]


@pytest.mark.parametrize("seed", [0, 1])
def test_own_content_in_random_styles_is_retrieved_at_chance(seed: int) -> None:
    _, images, sets, contents = world(seed)
    rng = np.random.default_rng(100 + seed)
    # each sample copies the content of one of its own references, but its style is drawn at random
    samples = [render(contents[i // PER_SET * REFS + i % REFS], random_style(rng), rng) for i in range(SETS * PER_SET)]
    own = [sets[i // PER_SET] for i in range(len(samples))]
    result = style_retrieval(samples, own, images, channels=3)
    assert abs(result["pairwise_accuracy"] - 0.5) < 0.1
    assert result["top1_accuracy"] <= 3 * result["top1_chance"]
