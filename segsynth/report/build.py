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

from collections.abc import Sequence
from pathlib import Path

from segsynth.artifacts.detect import discover
from segsynth.artifacts.names import DATASET_JSON, METRICS_JSON, REPORT_HTML, RESULTS_JSON, TRAIN_LOG
from segsynth.benchmark.summary import LEGEND
from segsynth.data.format import load_spec
from segsynth.io.atomic import atomic_write_text
from segsynth.io.guard import check_out_apart
from segsynth.report import benchmark_sections, fidelity_section, run_sections
from segsynth.report.context import ReportContext
from segsynth.report.html import page, paragraph, path_text, table, tag

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


class _Report(ReportContext):
    """The page: the context, filled section by section in a fixed order (the parts of runs, sets,
    benchmarks and evaluations come from :mod:`~segsynth.report.run_sections`,
    :mod:`~segsynth.report.benchmark_sections` and :mod:`~segsynth.report.fidelity_section`)."""

    def overview(self) -> None:
        rows = [(KIND_LABELS[f.kind], path_text(self.rel(f.path))) for f in self.found]
        self.sections["overview"].add(
            paragraph("Folders recognised in the given paths (kind decided from the files each stage writes)."),
            table(["kind", "folder"], rows, text_columns=(1,)),
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
            self.guarded("configs", run, lambda run=run: run_sections.run_plan(self, run))
        for bench in self.of("benchmark"):
            self.guarded("answer", bench, lambda bench=bench: benchmark_sections.answer(self, bench))
        for run in self.of("run"):
            self.guarded("answer", run, lambda run=run: benchmark_sections.final(self, run))
        if self.sections["answer"].parts:
            self.sections["answer"].add(paragraph(LEGEND))
        for run in self.of("diffusion_run"):
            self.guarded("samples", run, lambda run=run: run_sections.diffusion_run(self, run))
        for run in self.of("controlnet_run"):
            self.guarded("samples", run, lambda run=run: run_sections.diffusion_run(self, run, "ControlNet run"))
        for run in self.of("autoencoder_run"):
            self.guarded("curves", run, lambda run=run: run_sections.autoencoder_run(self, run))
        for root in self.of("synthetic_set"):
            self.guarded("samples", root, lambda root=root: run_sections.synthetic_set(self, root))
        self.guarded("curves", Path("segmentation runs"), lambda: run_sections.seg_runs(self, self.of("seg_run")))
        for bench in self.of("benchmark"):
            self.guarded("benchmark", bench, lambda bench=bench: benchmark_sections.benchmark(self, bench))
        for folder in self.of("evaluation"):
            self.guarded("fidelity", folder, lambda folder=folder: fidelity_section.evaluation(self, folder))
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
