"""The clump catalogue of a finished run: accuracy against the simulated truth, and speed.

    python benchmarks/catalogue.py --results DIR --split test   # the reporting figures (issue 19)
    python benchmarks/catalogue.py --results DIR --split val    # where the settings were chosen
    python benchmarks/catalogue.py --results DIR --split all    # speed on every galaxy of the survey

``DIR`` is the ``results/`` folder of a run of the default configuration (config/config.yaml: the
reporting seeds). The script does what the workflow's catalogue rules do, with the same code:
the cell of the sweep with the highest validation F1 is exported with its validation-chosen score
threshold (``clumpfinder.clumps.model``), the catalogue of the split's galaxies is made from their
FITS files (``clumpfinder.clumps.cli.catalogue_files``: reading, colour composite, detector,
post-processing, photometry, tables) and validated against the truth
(``clumpfinder.clumps.validate``). Speed: galaxies per minute of the catalogue loop (reading,
detection, post-processing, photometry) with the given torch threads, and of the whole call
(model loading and the tables written too). Results go to benchmarks/results/catalogue_<split>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from provenance import command_line, git_commit, merged_config, run_data_seeds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, required=True, help="results/ of a default run")
    ap.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configfile", action="append", default=[], help="the configuration files the run was made with")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from clumpfinder.clumps.cli import catalogue_files
    from clumpfinder.clumps.model import best_cell, export_detector
    from clumpfinder.clumps.sources import FitsOptions, survey
    from clumpfinder.clumps.validate import validate
    from clumpfinder.config import Plan

    torch.set_num_threads(args.threads)
    cfg = merged_config(args.configfile)
    seeds = run_data_seeds(args.results, args.configfile)
    plan = Plan(cfg, str(args.results), yaml.safe_load((REPO / "config" / "schema.yaml").read_text()))
    res = args.results
    metrics = {tuple(c): json.loads((res / "eval" / c[0] / f"n{c[1]}" / f"seed{c[2]}" / "metrics.json").read_text())
               for c in plan.cells()}
    cell = best_cell(metrics)
    m = metrics[cell]
    manifest = pd.read_csv(res / "survey" / "manifest.csv")
    if args.split != "all":
        splits = pd.read_csv(res / "labels" / "splits.csv")
        manifest = manifest[manifest["subject_id"].isin(splits.loc[splits["split"] == args.split, "subject_id"])]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "detector.pt"
        export_detector(res / "models" / cell[0] / f"n{cell[1]}" / f"seed{cell[2]}" / "model.pt", model,
                        {"crop": cfg["labels"]["crop"], "png": cfg["simulate"]["png"]},
                        {"backbone": cell[0], "n_train": cell[1], "seed": int(cell[2]), "score": m["score"]})
        t0 = time.perf_counter()
        cat = catalogue_files(lambda prep: survey(manifest, FitsOptions(png=prep["png"]), res / "survey" / "fits"),
                              model, Path(tmp) / "clumps.fits", device="cpu", measure=cfg["catalogue"]["measure"],
                              total=len(manifest), progress_bar=False)
        wall = time.perf_counter() - t0
    n = len(manifest)
    out = {
        "command": command_line(), "date": dt.date.today().isoformat(), "commit": git_commit(),
        "data_seeds": seeds, "cpus": os.cpu_count(),
        "torch_threads": args.threads, "split": args.split, "galaxies": n,
        "detector": {"backbone": cell[0], "n_train": cell[1], "seed": cell[2], "score": m["score"],
                     "val_f1": round(m["threshold"]["val_at_score"]["f1"], 4),
                     "chosen_by": "highest F1 on the validation split"},
        "measure": cfg["catalogue"]["measure"],
        "failures": len(cat.failures), "clumps": len(cat.clumps),
        "speed": {"loop_seconds": round(cat.seconds, 2), "galaxies_per_minute": round(60 * n / cat.seconds, 1),
                  "wall_seconds": round(wall, 2), "galaxies_per_minute_wall": round(60 * n / wall, 1)},
    }
    if (res / "survey" / "truth.csv").is_file():
        out["validation"] = validate(cat.clumps, cat.galaxies, pd.read_csv(res / "survey" / "truth.csv"),
                                     match_fwhm=cfg["catalogue"]["match_fwhm"])
    path = args.out or REPO / "benchmarks" / "results" / f"catalogue_{args.split}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
