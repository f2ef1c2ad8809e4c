"""The headline table of a synthetic-set evaluation: each measure beside its reference value.

Shared by ``segsynth evaluate-synth`` and the demo, so both print the same numbers the same way.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"


def metrics_table(result: dict[str, Any]) -> Table:
    """The headline numbers of an ``evaluate_synth`` result, each beside its reference value."""
    table = Table(title=f"synthetic set vs real data ({result['num_synthetic']} samples, {result['image_size'][0]} px)")
    for column in ("measure", "synthetic", "reference", "reference is"):
        table.add_column(column, justify="left" if column in ("measure", "reference is") else "right")
    fidelity = result["layout_fidelity"]
    ceiling = fidelity.get("real_held_out", {})
    for metric in ("dice", "iou"):
        per_class = fidelity["synthetic"]["summary"][metric]
        # With one structure, the mean over foreground classes repeats it.
        shown = [c for c in per_class if c != "mean_fg"] if len(per_class) == 2 else list(per_class)
        for cls in shown:
            stats = per_class[cls]
            real = ceiling.get("summary", {}).get(metric, {}).get(cls, {}).get("mean")
            table.add_row(f"layout {metric} {cls}", _num(stats["mean"]), _num(real), "real held-out images (ceiling)")
    style = result["style_retrieval"]
    if "skipped" in style:
        table.add_row("style retrieval", "skipped", "", escape(style["skipped"]))
    else:
        table.add_row("style retrieval top-1", _num(style["top1_accuracy"]), _num(style["top1_chance"]), "chance")
        table.add_row("style retrieval pairwise", _num(style["pairwise_accuracy"]), _num(style["pairwise_chance"]), "chance")
    distribution = result["distribution"]
    if "skipped" in distribution:
        table.add_row("FID / KID", "skipped", "", escape(distribution["skipped"]))
    else:
        for key, entry in distribution.items():
            baseline = entry["real_vs_real"]
            for name in ("fid", "kid_mean"):
                table.add_row(
                    f"{name.replace('_mean', '')} ({key})", _num(entry["synthetic_vs_real"][name]),
                    _num(baseline.get(name)), "real vs real, split by case",
                )
    diversity = result["diversity"]
    for name in ("pixel_rmse", "stain_texture"):
        table.add_row(
            f"diversity {name}", _num(diversity["synthetic_same_layout"][name]),
            _num(diversity["real_different_images"][name]), "real tiles of different images",
        )
    return table
