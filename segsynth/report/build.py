"""``build_report``: one self-contained HTML page about runs, benchmarks and synthetic sets.

Give it any mix of folders (a demo output, a benchmark, a diffusion run, a segmentation run, a
synthetic set, an ``evaluate-synth`` output, a dataset); what each is is recognised from its files
(:mod:`segsynth.artifacts.detect`) and every JSON record is validated by its schema
(:mod:`segsynth.artifacts.schemas`), so a broken file is named in the page; the page gets, always in this order and each present even when
empty:

1. the answer: per benchmark and setting, ΔDice vs the baseline with its case-level interval,
   relative gain, change in across-case spread and gap closed, and how many real test cases,
   folds and seeds it rests on;
2. sample grids: the diffusion runs' preview grids and, per synthetic set, ``layout | style refs |
   sample`` grids per class and per style source;
3. training curves: diffusion loss terms and learning rate; segmentation loss and validation Dice;
4. benchmark: the full results table and per-case Dice as box + strip plots per setting;
5. generator fidelity: the ``evaluate-synth`` metrics (layout Dice/IoU vs the real ceiling, style
   retrieval vs chance, FID/KID vs the real-vs-real baseline, diversity);
6. resolved configs;
7. data provenance: every dataset involved, with human vs derived labels and the recipe;
8. inventory: what was found where.

A benchmark setting has one name (the table's) and one colour in every plot.

Images are embedded (base64 PNG), text is escaped, and the file is written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from segsynth.artifacts.detect import Found, discover
from segsynth.artifacts.names import (
    BENCHMARK_YAML,
    CONFIG_YAML,
    DATASET_JSON,
    FINAL_DIR,
    FOLD_DIR,
    GENERATION_JSON,
    METRICS_JSON,
    MODEL_CARD_JSON,
    PLAN_JSON,
    RECONSTRUCTION_JSON,
    REPORT_HTML,
    RESULTS_JSON,
    SAMPLES_DIR,
    SEED_DIR,
    SEG_RUNS_DIR,
    SPLIT_JSON,
    TRAIN_LOG,
    TRAINING_DATA_JSON,
)
from segsynth.artifacts.schemas import (
    BenchmarkResults,
    GenerationRecord,
    Reconstruction,
    SegRunSplit,
    TrainingData,
    read_image_split,
    read_metrics,
    read_record,
)
from segsynth.benchmark.summary import HEADERS, LEGEND, headline, table_rows
from segsynth.data.format import load_spec
from segsynth.evaluation.sets import load_synthetic
from segsynth.io.atomic import atomic_write_text
from segsynth.io.guard import check_out_apart
from segsynth.io.json_file import read_json_object
from segsynth.report import figures
from segsynth.report.grids import synthetic_grids
from segsynth.report.html import Raw, Section, gallery, heading, image, page, paragraph, path_text, preformatted, table, tag

KIND_LABELS = {
    "run": "segsynth run",
    "benchmark": "benchmark",
    "diffusion_run": "diffusion run",
    "controlnet_run": "ControlNet run",
    "autoencoder_run": "autoencoder run",
    "seg_run": "segmentation run",
    "synthetic_set": "synthetic set",
    "evaluation": "evaluate-synth metrics",
    "dataset": "dataset",
}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete, parseable lines of a log (a torn last line is skipped)."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


#: Columns of the benchmark table shown on the report's first screen.
ANSWER_COLUMNS = ("setting", "cases", "runs", "Dice", "Δ vs best control", "CI (control)", "ΔDice", "95% CI", "p",
                  "rel. gain", "Δ case std", "gap closed", "still rising")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}" if value != 0 and abs(value) < 10 ** -digits else f"{value:.{digits}f}"
    return str(value)


def _rel(path: Path, roots: Sequence[Path]) -> str:
    """``path`` relative to the given folder it lies in (absolute otherwise)."""
    resolved = path.resolve()
    for root in roots:
        base = root.resolve()
        try:
            relative = resolved.relative_to(base)
        except ValueError:
            continue
        return f"{base.name}/{relative.as_posix()}" if relative.parts else base.name
    return str(resolved)


class _Report:
    def __init__(self, paths: Sequence[Path], found: list[Found], rows_per_grid: int, max_synthetic: int) -> None:
        self.paths = list(paths)
        self.found = found
        self.rows_per_grid = rows_per_grid
        self.max_synthetic = max_synthetic
        self.sections = {
            "answer": Section("answer", "Does synthetic data help?"),
            "samples": Section("samples", "Sample grids"),
            "curves": Section("curves", "Training curves"),
            "benchmark": Section("benchmark", "Benchmark"),
            "fidelity": Section("fidelity", "Generator fidelity"),
            "configs": Section("configs", "Resolved configs"),
            "provenance": Section("provenance", "Data provenance"),
            "overview": Section("overview", "Inventory"),
        }
        self.datasets: dict[Path, set[str]] = {}
        #: run folder -> benchmark setting name, so curves and tables name a setting alike
        self.setting_of: dict[Path, str] = {}

    def of(self, kind: str) -> list[Path]:
        return [f.path for f in self.found if f.kind == kind]

    def rel(self, path: Path) -> str:
        return _rel(path, self.paths)

    def guarded(self, section: str, what: Path, action: Callable[[], None]) -> None:
        """Run one folder's part; a broken folder becomes a note instead of ending the report."""
        try:
            action()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.sections[section].add(paragraph(f"{self.rel(what)}: could not be read ({type(exc).__name__}: {exc})"))

    def dataset(self, root: str | Path | None, role: str) -> None:
        if root:
            self.datasets.setdefault(Path(root).resolve(), set()).add(role)

    # --- sections ---------------------------------------------------------------------------

    def overview(self) -> None:
        rows = [(KIND_LABELS[f.kind], path_text(self.rel(f.path))) for f in self.found]
        self.sections["overview"].add(
            paragraph("Folders recognised in the given paths (kind decided from the files each stage writes)."),
            table(["kind", "folder"], rows, text_columns=(1,)),
        )

    def diffusion_run(self, run: Path, label: str = "diffusion run") -> None:
        """Preview grids, loss curves, config and training data of a diffusion (or ControlNet) run."""
        samples, curves, configs = self.sections["samples"], self.sections["curves"], self.sections["configs"]
        grids = sorted((run / SAMPLES_DIR).glob("step_*.png"))
        if grids:
            samples.add(heading(f"{label} {self.rel(run)}"))
            shown = [grids[0], grids[-1]] if len(grids) > 1 else grids
            figures_shown = []
            for grid in shown:
                step = grid.stem.removeprefix("step_").lstrip("0") or "0"
                figures_shown.append(image(grid.read_bytes(), f"preview grid at step {step}",
                                           f"step {step}{' (latest)' if grid == grids[-1] else ''}: layout | style references | sample (EMA weights)"))
            samples.add(gallery(figures_shown))
        log = _read_jsonl(run / TRAIN_LOG)
        if log:
            curves.add(heading(f"{label} {self.rel(run)}"),
                       image(figures.diffusion_curves(log, self.rel(run)), f"{label} training curves",
                             f"{len(log)} log records, last step {log[-1].get('step')}"))
        if (run / CONFIG_YAML).is_file():
            configs.add(preformatted((run / CONFIG_YAML).read_text(encoding="utf-8"), f"{label} {self.rel(run)}: {CONFIG_YAML}"))
        if (run / TRAINING_DATA_JSON).is_file():
            info = read_record(run / TRAINING_DATA_JSON, TrainingData)
            self.dataset(info.data_root, "diffusion training data")
            for extra in info.datasets or []:
                self.dataset(extra.data_root, "diffusion training data")
            summary = info.model_dump(mode="json", exclude_unset=True, exclude={"train_ids", "datasets"})
            summary["train_ids"] = f"{len(info.train_ids or [])} samples"
            configs.add(preformatted(yaml.safe_dump(summary, sort_keys=True), f"{label} {self.rel(run)}: {TRAINING_DATA_JSON}"))

    def autoencoder_run(self, run: Path) -> None:
        """Loss curves, config and held-out reconstruction quality of a ``train-autoencoder`` run."""
        log = _read_jsonl(run / TRAIN_LOG)
        if log:
            self.sections["curves"].add(heading(f"autoencoder run {self.rel(run)}"),
                                        image(figures.diffusion_curves(log, self.rel(run)), "autoencoder training curves",
                                              f"{len(log)} log records, last step {log[-1].get('step')}"))
        if (run / CONFIG_YAML).is_file():
            self.sections["configs"].add(preformatted((run / CONFIG_YAML).read_text(encoding="utf-8"),
                                                      f"autoencoder run {self.rel(run)}: {CONFIG_YAML}"))
        split = read_image_split(run)
        for root in split.data if split is not None else []:
            self.dataset(root, "autoencoder training data")
        if (run / RECONSTRUCTION_JSON).is_file():
            quality = read_record(run / RECONSTRUCTION_JSON, Reconstruction).model_dump(mode="json", exclude_unset=True)
            self.sections["configs"].add(preformatted(yaml.safe_dump(quality, sort_keys=True),
                                                      f"autoencoder run {self.rel(run)}: {RECONSTRUCTION_JSON}"))

    def synthetic_set(self, root: Path) -> None:
        self.dataset(root, "synthetic set")
        synthetic = load_synthetic(root, self.max_synthetic)
        grids, note = synthetic_grids(synthetic, self.rows_per_grid)
        section = self.sections["samples"]
        section.add(heading(f"synthetic set {self.rel(root)}"))
        total = len(load_spec(root).cases)
        section.add(paragraph(f"{total} samples; rows picked from {len(synthetic.ids)} of them"
                              if total > len(synthetic.ids) else f"{total} samples"))
        if note:
            section.add(paragraph(note))
        section.add(gallery([image(figures.array_png(g.pixels), g.title, f"{g.title}: {g.caption}") for g in grids]))
        if (root / GENERATION_JSON).is_file():
            config = read_record(root / GENERATION_JSON, GenerationRecord).config
            self.dataset(config.get("layout_data"), "layout source of a synthetic set")
            self.sections["configs"].add(
                preformatted(yaml.safe_dump(config, sort_keys=True), f"synthetic set {self.rel(root)}: {GENERATION_JSON}")
            )

    def seg_runs(self, runs: list[Path]) -> None:
        groups: dict[str, list[list[dict[str, Any]]]] = {}
        configs: dict[str, list[str]] = {}
        for run in runs:
            log = _read_jsonl(run / TRAIN_LOG)
            group = self.setting_of.get(run.resolve(), run.parent.name if run.name.startswith(SEED_DIR.format(seed="")) else run.name)
            if log:
                groups.setdefault(group, []).append(log)
            if (run / CONFIG_YAML).is_file():
                configs.setdefault((run / CONFIG_YAML).read_text(encoding="utf-8"), []).append(self.rel(run))
            if (run / SPLIT_JSON).is_file():
                split = read_record(run / SPLIT_JSON, SegRunSplit)
                self.dataset(split.data_root, "segmentation training data (real)")
                for synthetic in split.synthetic:
                    self.dataset(synthetic.root, "synthetic data mixed into segmentation training")
        if groups:
            count = sum(len(v) for v in groups.values())
            self.sections["curves"].add(
                heading(f"segmentation runs ({count})"),
                image(figures.segmentation_curves(groups), "segmentation training curves",
                      "one line per run, one colour per setting / run; validation Dice picks each run's best network"),
            )
        for text, where in configs.items():
            label = where[0] if len(where) == 1 else f"{where[0]} and {len(where) - 1} more with the same config"
            self.sections["configs"].add(preformatted(text, f"segmentation run {label}: {CONFIG_YAML}"))

    def benchmark(self, bench: Path) -> None:
        section = self.sections["benchmark"]
        section.add(heading(f"benchmark {self.rel(bench)}"))
        results_path = bench / RESULTS_JSON
        per_setting: dict[str, list[float]] = {}
        if results_path.is_file():
            record = read_record(results_path, BenchmarkResults)
            results = record.model_dump()
            self.dataset(record.data, "benchmark data (real)")
            section.add(paragraph(headline(results)), table(HEADERS, table_rows(results)), paragraph(LEGEND))
            for run in record.runs:
                per_setting.setdefault(run["setting"], []).extend(run.get("case_dice", {}).values())
        else:
            section.add(paragraph(f"no {RESULTS_JSON} yet (benchmark unfinished): per-case Dice from the finished runs' "
                                  f"{METRICS_JSON}"))
            pattern = f"{FOLD_DIR.format(fold='*')}/{SEG_RUNS_DIR}/*/{SEED_DIR.format(seed='*')}/{METRICS_JSON}"
            for metrics_path in sorted(bench.glob(pattern)):
                metrics = read_json_object(metrics_path)
                setting = metrics_path.parent.parent.name
                for values in metrics.get("per_case", {}).values():
                    per_setting.setdefault(setting, []).append(float(np.mean(list(values["dice"].values()))))
        if per_setting:
            counts = ", ".join(f"{name}: {len(v)}" for name, v in per_setting.items())
            section.add(image(
                figures.case_dice_plot(per_setting, "per-case Dice (test cases × folds × seeds)"),
                "per-case Dice per setting",
                f"box: quartiles; dots: one test case of one run; red bar: mean. Points per setting: {counts}",
            ))
        if (bench / BENCHMARK_YAML).is_file():
            self.sections["configs"].add(
                preformatted((bench / BENCHMARK_YAML).read_text(encoding="utf-8"), f"benchmark {self.rel(bench)}: {BENCHMARK_YAML}")
            )

    def run_plan(self, run: Path) -> None:
        """The plan a ``segsynth run`` followed: every choice and why (its stages are reported as found)."""
        self.sections["configs"].add(
            preformatted((run / PLAN_JSON).read_text(encoding="utf-8"), f"segsynth run {self.rel(run)}: {PLAN_JSON}")
        )

    def answer(self, bench: Path) -> None:
        """The first screen: what each setting did to Dice, and what that rests on."""
        results_path = bench / RESULTS_JSON
        if not results_path.is_file():
            return
        record = read_record(results_path, BenchmarkResults)
        results = record.model_dump()
        for run in record.runs:
            self.setting_of[Path(run["run"]).resolve()] = run["setting"]
        rows = table_rows(results)
        keep = [HEADERS.index(c) for c in ANSWER_COLUMNS]
        data = Path(record.data or bench).name
        self.sections["answer"].add(
            heading(f"{data} ({self.rel(bench)})"),
            paragraph(headline(results) + "."),
            table([HEADERS[i] for i in keep], [[row[i] for i in keep] for row in rows]),
        )

    def final(self, run: Path) -> None:
        """The network a ``segsynth run`` hands over: which setting, why, and how to apply it."""
        card_path = run / FINAL_DIR / MODEL_CARD_JSON
        if not card_path.is_file():
            return
        card = read_json_object(card_path)
        self.sections["answer"].add(
            heading(f"final network ({self.rel(run / FINAL_DIR)})"),
            paragraph(f"Trained with {card['setting']}: {card['why']}."),
            paragraph(f"Apply it: {card['use']}"),
        )

    def evaluation(self, folder: Path) -> None:
        metrics = read_metrics(folder / METRICS_JSON)
        if metrics is None:
            return
        self.dataset(metrics.real, "real data of a generator evaluation")
        self.dataset(metrics.synthetic, "synthetic set")
        section = self.sections["fidelity"]
        seg = metrics.seg_run
        section.add(
            heading(f"evaluation {self.rel(folder)}"),
            table(["", "value"], [
                ("synthetic set", path_text(metrics.synthetic)),
                ("real data", path_text(metrics.real)),
                ("segmentation network (real data only)",
                 Raw(path_text(seg.path).markup + (" (trained by evaluate-synth)" if seg.trained_here else ""))),
                ("synthetic samples", metrics.num_synthetic),
                ("image size", " × ".join(map(str, metrics.image_size))),
            ], text_columns=(1,)),
        )
        self._layout(section, metrics.layout_fidelity)
        self._style(section, metrics.style_retrieval)
        self._distribution(section, metrics.distribution, metrics.real_tiles)
        self._diversity(section, metrics.diversity)

    def _layout(self, section: Section, fidelity: dict[str, Any]) -> None:
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

    def _style(self, section: Section, style: dict[str, Any]) -> None:
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

    def _distribution(self, section: Section, distribution: dict[str, Any], tiles: dict[str, Any]) -> None:
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

    def _diversity(self, section: Section, diversity: dict[str, Any]) -> None:
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

    def provenance(self) -> None:
        for root in self.of("dataset"):
            self.dataset(root, "dataset folder given")
        rows = []
        for root, roles in sorted(self.datasets.items(), key=lambda item: str(item[0])):
            try:
                spec = load_spec(root)
            except (OSError, ValueError) as exc:
                rows.append(("?", ", ".join(sorted(roles)), "", f"{DATASET_JSON} unreadable: {exc}", "", "", "", "", path_text(str(root))))
                continue
            rows.append((
                spec.name, ", ".join(sorted(roles)), tag(spec.label_provenance, spec.label_provenance),
                spec.derivation or "masks drawn by people" if spec.label_provenance == "human" else spec.derivation,
                spec.licence, len(spec.cases), len(spec.unlabeled_cases), len(set(spec.cases.values())),
                path_text(str(root)),
            ))
        if rows:
            self.sections["provenance"].add(
                paragraph("Labels are human (drawn by people) or derived (made by an algorithm, recipe given). "
                          "A synthetic set's masks are the layouts its images were generated from."),
                table(["dataset", "role", "labels", "how the labels were made", "licence", "labelled images",
                       "unlabelled images", "cases", "folder"], rows, text_columns=(1, 3, 4, 8)),
            )

    def build(self, title: str) -> str:
        self.overview()
        for run in self.of("run"):
            self.guarded("configs", run, lambda run=run: self.run_plan(run))
        for bench in self.of("benchmark"):
            self.guarded("answer", bench, lambda bench=bench: self.answer(bench))
        for run in self.of("run"):
            self.guarded("answer", run, lambda run=run: self.final(run))
        if self.sections["answer"].parts:
            self.sections["answer"].add(paragraph(LEGEND))
        for run in self.of("diffusion_run"):
            self.guarded("samples", run, lambda run=run: self.diffusion_run(run))
        for run in self.of("controlnet_run"):
            self.guarded("samples", run, lambda run=run: self.diffusion_run(run, "ControlNet run"))
        for run in self.of("autoencoder_run"):
            self.guarded("curves", run, lambda run=run: self.autoencoder_run(run))
        for root in self.of("synthetic_set"):
            self.guarded("samples", root, lambda root=root: self.synthetic_set(root))
        self.guarded("curves", Path("segmentation runs"), lambda: self.seg_runs(self.of("seg_run")))
        for bench in self.of("benchmark"):
            self.guarded("benchmark", bench, lambda bench=bench: self.benchmark(bench))
        for folder in self.of("evaluation"):
            self.guarded("fidelity", folder, lambda folder=folder: self.evaluation(folder))
        self.provenance()
        s = self.sections
        empty = {
            "answer": f"No finished benchmark ({RESULTS_JSON}) found.",
            "overview": "Nothing recognised.",
            "samples": "No diffusion run with preview grids and no synthetic set found.",
            "curves": f"No {TRAIN_LOG} found.",
            "benchmark": "No benchmark found.",
            "fidelity": f"No evaluate-synth {METRICS_JSON} found (run: segsynth evaluate-synth SYNTH --real DATA).",
            "configs": "No resolved config found.",
            "provenance": f"No {DATASET_JSON} reachable from the given folders.",
        }
        subtitle = f"{len(self.found)} folders from: " + ", ".join(str(p) for p in self.paths)
        return page(title, subtitle, [(s[key], empty[key]) for key in s])


def build_report(
    paths: Sequence[str | Path],
    out: str | Path = REPORT_HTML,
    title: str = "segsynth report",
    *,
    rows_per_grid: int = 4,
    max_synthetic: int = 500,
) -> Path:
    """Write one self-contained HTML report about ``paths`` to ``out`` (atomically).

    Args:
        paths: benchmark, run, synthetic set, evaluation or dataset folders (or a folder holding
            some, e.g. a demo output); each is recognised automatically.
        out: the HTML file.
        title: the page title.
        rows_per_grid: rows of each synthetic sample grid.
        max_synthetic: synthetic samples read per set to pick grid rows from (seeded subset).

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: nothing recognisable at or below a path.
    """
    if not paths:
        raise ValueError("give at least one run, benchmark or synthetic set folder")
    paths = [Path(p) for p in paths]
    # The one file a report may write inside a folder it reads: its report.html, as `segsynth run` does.
    check_out_apart(out, paths, allowed=[p / REPORT_HTML for p in paths if p.is_dir()])
    found = discover(paths)
    report = _Report(paths, found, rows_per_grid, max_synthetic)
    return atomic_write_text(out, report.build(title))


__all__ = ["build_report"]
