"""Report figures as PNG bytes (matplotlib's object API: no pyplot, no global state, no display)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

#: Colours of setting / run groups (colour-blind-safe order).
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: Benchmark rows keep one colour in every plot: the real-only rows first, then each strategy.
SETTING_ORDER = ("baseline", "baseline+heavy-aug", "all-labelled", "ratio", "concat", "merge")
DPI = 110


def setting_colour(name: str) -> str:
    """The colour of a benchmark setting (``ratio:0.5`` shares ``ratio``'s) or of any other group.

    Unknown names get a colour from a hash of the name, so one name has one colour in every figure.
    """
    key = name.partition(":")[0]
    if key in SETTING_ORDER:
        return COLOURS[SETTING_ORDER.index(key)]
    return COLOURS[sum(map(ord, name)) % len(COLOURS)]


def to_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def array_png(pixels: np.ndarray) -> bytes:
    """An ``(H, W)`` or ``(H, W, 3)`` uint8 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def _numeric(rows: Sequence[Mapping[str, object]], key: str) -> list[float]:
    return [float(r[key]) if isinstance(r.get(key), (int, float)) and r.get(key) is not None else float("nan") for r in rows]


def diffusion_curves(rows: Sequence[Mapping[str, object]], title: str) -> bytes:
    """Loss terms (log scale) and learning rate against the optimisation step.

    Only logged keys that are losses (``loss``, ``loss_*``) are drawn: weights, drop rates and
    speeds share the log but not the loss axis."""
    terms = sorted({k for r in rows for k, v in r.items() if k.startswith("loss") and isinstance(v, (int, float))})
    steps = _numeric(rows, "step")
    fig = Figure(figsize=(10, 3.2))
    loss_ax, lr_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    positive = True
    for i, term in enumerate(terms):
        values = np.asarray(_numeric(rows, term))
        finite = values[np.isfinite(values)]
        positive = positive and finite.size > 0 and bool(np.all(finite > 0))
        loss_ax.plot(steps, values, label=term, color=COLOURS[i % len(COLOURS)], linewidth=1.2,
                     marker="o" if len(rows) <= 20 else None, markersize=3)
    if terms and positive:
        loss_ax.set_yscale("log")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(title, fontsize=10)
    if terms:
        loss_ax.legend(fontsize=8)
    lr_ax.plot(steps, _numeric(rows, "lr"), color="#444444", linewidth=1.2)
    lr_ax.set_xlabel("step")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (loss_ax, lr_ax):
        ax.grid(alpha=0.3)
    return to_png(fig)


def segmentation_curves(runs: Mapping[str, Sequence[Sequence[Mapping[str, object]]]]) -> bytes:
    """Training loss and validation Dice per optimiser step; one line per run, one colour per group."""
    fig = Figure(figsize=(10, 3.2))
    loss_ax, dice_ax = fig.subplots(1, 2)
    for group, logs in runs.items():
        colour = setting_colour(group)
        for j, rows in enumerate(logs):
            steps = _numeric(rows, "step")
            style = {"color": colour, "alpha": 0.8, "linewidth": 1.1, "label": group if j == 0 else None,
                     "marker": "o" if len(rows) <= 20 else None, "markersize": 3}
            loss_ax.plot(steps, _numeric(rows, "loss"), **style)
            dice_ax.plot(steps, _numeric(rows, "val_dice"), **style)
    loss_ax.set_ylabel("training loss (Dice + CE)")
    dice_ax.set_ylabel("validation Dice")
    dice_ax.set_ylim(0, 1)
    for ax in (loss_ax, dice_ax):
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    dice_ax.legend(fontsize=8, loc="lower right")
    return to_png(fig)


def case_dice_plot(per_setting: Mapping[str, Sequence[float]], title: str) -> bytes:
    """Box plot plus jittered points of per-case Dice for each setting."""
    names = list(per_setting)
    fig = Figure(figsize=(max(4.5, 1.6 * len(names) + 1.5), 3.6))
    ax = fig.subplots()
    data = [np.asarray([v for v in per_setting[n] if v is not None and np.isfinite(v)]) for n in names]
    positions = np.arange(1, len(names) + 1)
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=False,
               medianprops={"color": "#222222"}, boxprops={"color": "#666666"}, whiskerprops={"color": "#666666"})
    rng = np.random.default_rng(0)
    for i, values in enumerate(data):
        jitter = rng.uniform(-0.15, 0.15, len(values))
        ax.scatter(positions[i] + jitter, values, s=14, alpha=0.7, color=setting_colour(names[i]), zorder=3)
        if len(values):
            ax.plot([positions[i] - 0.25, positions[i] + 0.25], [values.mean()] * 2, color="#C00000", linewidth=1.5)
    ax.set_xticks(positions, names)
    ax.set_ylabel("Dice per test case")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def fidelity_bars(classes: Sequence[str], synthetic: Sequence[float], real: Sequence[float | None]) -> bytes:
    """Per-class layout Dice on synthetic images beside the real held-out ceiling."""
    fig = Figure(figsize=(max(4.0, 1.3 * len(classes) + 1.5), 3.0))
    ax = fig.subplots()
    x = np.arange(len(classes))
    ax.bar(x - 0.2, synthetic, 0.4, label="synthetic vs conditioning mask", color=COLOURS[0])
    ax.bar(x + 0.2, [np.nan if r is None else r for r in real], 0.4, label="real held-out (ceiling)", color=COLOURS[1])
    ax.set_xticks(x, classes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)
