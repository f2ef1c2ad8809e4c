"""The report's generator-fidelity section: the ``evaluate-synth`` metrics (layout Dice/IoU vs the real
ceiling, style retrieval vs chance, FID/KID vs the real-vs-real baseline, diversity)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segsynth.artifacts.names import METRICS_JSON
from segsynth.artifacts.schemas import read_metrics
from segsynth.report import figures
from segsynth.report.context import ReportContext
from segsynth.report.html import Raw, Section, heading, image, paragraph, path_text, table


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}" if value != 0 and abs(value) < 10 ** -digits else f"{value:.{digits}f}"
    return str(value)


def evaluation(report: ReportContext, folder: Path) -> None:
    metrics = read_metrics(folder / METRICS_JSON)
    if metrics is None:
        return
    report.dataset(metrics.real, "real data of a generator evaluation")
    report.dataset(metrics.synthetic, "synthetic set")
    section = report.sections["fidelity"]
    seg = metrics.seg_run
    section.add(
        heading(f"evaluation {report.rel(folder)}"),
        table(["", "value"], [
            ("synthetic set", path_text(metrics.synthetic)),
            ("real data", path_text(metrics.real)),
            ("segmentation network (real data only)",
             Raw(path_text(seg.path).markup + (" (trained by evaluate-synth)" if seg.trained_here else ""))),
            ("synthetic samples", metrics.num_synthetic),
            ("image size", " × ".join(map(str, metrics.image_size))),
        ], text_columns=(1,)),
    )
    _layout(section, metrics.layout_fidelity)
    _style(section, metrics.style_retrieval)
    _distribution(section, metrics.distribution, metrics.real_tiles)
    _diversity(section, metrics.diversity)


def _layout(section: Section, fidelity: dict[str, Any]) -> None:
    section.add(heading("layout fidelity: real-data network on synthetic images vs their conditioning masks"))
    synthetic = fidelity["synthetic"]["summary"]
    ceiling = fidelity.get("real_held_out", {})
    real = ceiling.get("summary", {})
    ratio = fidelity.get("fraction_of_ceiling", {})
    rows = []
    for cls in synthetic["dice"]:
        rows.append((
            cls,
            f"{_fmt(synthetic['dice'][cls]['mean'])} ± {_fmt(synthetic['dice'][cls]['std'])}",
            _fmt(real.get("dice", {}).get(cls, {}).get("mean")),
            f"{_fmt(synthetic['iou'][cls]['mean'])} ± {_fmt(synthetic['iou'][cls]['std'])}",
            _fmt(real.get("iou", {}).get(cls, {}).get("mean")),
            _fmt(ratio.get(cls)),
        ))
    section.add(table(["class", "Dice synthetic", "Dice real held-out", "IoU synthetic", "IoU real held-out",
                       "synthetic / real Dice"], rows))
    if "skipped" in ceiling:
        section.add(paragraph(f"real ceiling skipped: {ceiling['skipped']}"))
    else:
        section.add(paragraph(f"ceiling: the same network on {ceiling.get('num_images')} real images ({ceiling.get('selection')})"))
    classes = [c for c in synthetic["dice"] if c != "mean_fg"]
    section.add(image(
        figures.fidelity_bars(classes, [synthetic["dice"][c]["mean"] for c in classes],
                              [real.get("dice", {}).get(c, {}).get("mean") for c in classes]),
        "layout Dice per class", "mean Dice per class, synthetic images vs the real held-out ceiling",
    ))


def _style(section: Section, style: dict[str, Any]) -> None:
    section.add(heading("style retrieval (zero-shot): is a sample nearest its own references?"))
    if "skipped" in style:
        section.add(paragraph(f"skipped: {style['skipped']}"))
        return
    rows = [("all (stain + Gram)", _fmt(style["top1_accuracy"]), _fmt(style["top1_chance"]),
             _fmt(style["pairwise_accuracy"]), _fmt(style["pairwise_chance"]))]
    for part, values in style.get("by_part", {}).items():
        rows.append((f"{part} only", _fmt(values["top1_accuracy"]), _fmt(values["top1_chance"]),
                     _fmt(values["pairwise_accuracy"]), _fmt(values["pairwise_chance"])))
    section.add(
        table(["style space", "top-1 accuracy", "top-1 chance", "pairwise accuracy", "pairwise chance"], rows),
        paragraph(f"{style['num_samples']} samples, {style['num_reference_sets']} distinct reference sets of "
                  f"{style['num_reference_images']} pool images. Space: {style['space']}."),
    )


def _distribution(section: Section, distribution: dict[str, Any], tiles: dict[str, Any]) -> None:
    section.add(heading("distribution distance: FID / KID on offline features"))
    if "skipped" in distribution:
        section.add(paragraph(f"skipped: {distribution['skipped']}"))
        return
    rows, names = [], []
    for key, entry in distribution.items():
        ours, base = entry["synthetic_vs_real"], entry["real_vs_real"]
        rows.append((
            key, _fmt(ours["fid"]), _fmt(base.get("fid")),
            f"{_fmt(ours['kid_mean'])} ± {_fmt(ours['kid_std'])}",
            f"{_fmt(base.get('kid_mean'))} ± {_fmt(base.get('kid_std'))}" if "kid_mean" in base else "n/a",
            f"{ours['n_fake']} / {ours['n_real']}", base.get("split", base.get("skipped", "")),
        ))
        names.append(f"{key}: {entry['extractor']}")
    section.add(
        table(["extractor", "FID synthetic vs real", "FID real vs real", "KID synthetic vs real", "KID real vs real",
               "n synthetic / real", "real halves split"], rows, text_columns=(6,)),
        paragraph("Extractors (no downloaded weights): " + "; ".join(names)),
        paragraph(f"Real images: {tiles.get('num_tiles')} tiles of {' × '.join(map(str, tiles.get('tile_size', [])))} px from "
                  f"{tiles.get('num_images')} {tiles.get('split')} images of {tiles.get('num_cases')} cases. "
                  "Lower is closer; the real-vs-real column is what a perfect generator would reach."),
    )


def _diversity(section: Section, diversity: dict[str, Any]) -> None:
    section.add(heading("diversity: mean pairwise distance of samples for the same layout"))
    rows = []
    for name in ("pixel_rmse", "stain_texture"):
        rows.append((
            name,
            _fmt(diversity["synthetic_same_layout"][name]),
            _fmt(diversity["real_different_images"][name]),
            _fmt(diversity["real_same_case"][name]),
            _fmt(diversity["ratio_to_real"][name]),
        ))
    section.add(
        table(["distance", "synthetic, same layout", "real, different images", "real, same case", "synthetic / real"], rows),
        paragraph(f"Grouped by {diversity['grouping']}: {diversity['num_groups']} groups, "
                  f"{diversity['synthetic_same_layout']['num_pairs']} pairs. Near 0: the generator ignores its noise."),
    )
