"""Latent mode vs pixel space on one dataset: training and sampling time, and what the sets measure.

Both models use the same denoiser recipe (the ``tiny`` recipe by default) on the same data; the
latent one denoises the latents of a ``train-autoencoder`` run (given, or trained here with
the ``autoencoder-tiny`` recipe). Each generates the same number of samples, and
``segsynth evaluate-synth`` scores both sets with one segmentation network trained on the real data
(layout fidelity vs the real-image ceiling, FID/KID vs real-vs-real, diversity). Every stage is the
real CLI, timed side by side in one run.

Run: ``.venv/bin/python benchmarks/latent_vs_pixel.py --data DATA/histo-he --work /tmp/lvp``
(about 10 minutes on 2 CPU cores with an existing ``--autoencoder``); writes
``benchmarks/results/latent_vs_pixel.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import write_json
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
#: The console script of the environment running this benchmark.
SEGSYNTH = [str(Path(sys.executable).parent / "segsynth")]


def timed(args: list[str], log: Path) -> float:
    """Run one segsynth command, its output to ``log``; seconds it took."""
    tick = time.perf_counter()
    with log.open("w") as handle:
        subprocess.run([*SEGSYNTH, *args], check=True, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.perf_counter() - tick


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (e.g. segsynth data builtin histo-he)")
    parser.add_argument("--work", type=Path, required=True, help="empty folder for runs, sets and logs")
    parser.add_argument("--config", type=Path, default=ROOT / "segsynth" / "recipes" / "tiny.yaml")
    parser.add_argument("--autoencoder", type=Path, default=None, help="train-autoencoder folder (default: train one)")
    parser.add_argument("-n", type=int, default=48, help="samples per set")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latent_vs_pixel.json")
    args = parser.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=False)
    seconds: dict[str, float] = {}
    ae = args.autoencoder
    if ae is None:
        ae = work / "ae"
        seconds["train-autoencoder"] = timed(["train-autoencoder", str(args.data), "-c", str(ROOT / "segsynth" / "recipes" / "autoencoder-tiny.yaml"),
                                              "--out", str(ae)], work / "ae.log")
    rows = {}
    for mode, extra in (("pixel", []), ("latent", ["--autoencoder", str(ae)])):
        run, synth = work / f"{mode}-run", work / f"{mode}-synth"
        train_s = timed(["train-diffusion", str(args.data), "-c", str(args.config), "--out", str(run), *extra],
                        work / f"{mode}-train.log")
        gen_s = timed(["generate", str(run), "-n", str(args.n), "--out", str(synth)], work / f"{mode}-generate.log")
        seg = [] if mode == "pixel" else ["--seg-run", str(work / "pixel-eval" / "seg_real")]
        timed(["evaluate-synth", str(synth), "--real", str(args.data), "--out", str(work / f"{mode}-eval"), *seg],
              work / f"{mode}-eval.log")
        metrics = json.loads((work / f"{mode}-eval" / "metrics.json").read_text())
        rows[mode] = {"train_s": train_s, "generate_s": gen_s, "metrics": metrics}

    console = Console(width=120)
    table = Table(title=f"latent (f{json.loads((Path(ae) / 'reconstruction.json').read_text())['factor']}) vs pixel "
                        f"space, {args.data.name}, {args.config.name}, {args.n} samples")
    for col in ("measure", "pixel", "latent"):
        table.add_column(col, justify="right")
    table.add_row("train-diffusion s", *(f"{rows[m]['train_s']:.0f}" for m in rows))
    table.add_row("generate s", *(f"{rows[m]['generate_s']:.0f}" for m in rows))
    for label, pick in (
        ("layout Dice, mean fg (real ceiling)",
         lambda m: (m["layout_fidelity"]["synthetic"]["summary"]["dice"]["mean_fg"]["mean"],
                    m["layout_fidelity"]["real_held_out"]["summary"]["dice"]["mean_fg"]["mean"])),
        ("FID seg encoder (real vs real)",
         lambda m: (m["distribution"]["seg_encoder"]["synthetic_vs_real"]["fid"],
                    m["distribution"]["seg_encoder"]["real_vs_real"]["fid"])),
        ("KID seg encoder (real vs real)",
         lambda m: (m["distribution"]["seg_encoder"]["synthetic_vs_real"]["kid_mean"],
                    m["distribution"]["seg_encoder"]["real_vs_real"]["kid_mean"])),
        ("diversity pixel RMSE (real)",
         lambda m: (m["diversity"]["synthetic_same_layout"]["pixel_rmse"],
                    m["diversity"]["real_different_images"]["pixel_rmse"])),
    ):
        table.add_row(label, *("{:.3g} ({:.3g})".format(*pick(rows[m]["metrics"])) for m in rows))
    console.print(table)
    write_json(args.out, {"benchmark": "latent_vs_pixel", "data": str(args.data), "config": str(args.config),
                          "autoencoder": str(ae), "n": args.n, "seconds": seconds, "rows": rows})
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
