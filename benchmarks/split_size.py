"""How many test galaxies does the comparison need, once its intervals hold the training seeds'
variance? A choice made on a development run (docs/protocol.md).

    snakemake --cores 2 --configfile config/development.yaml --directory dev
    python benchmarks/split_size.py --workdir dev --configfile config/development.yaml

Reads the run's evaluations (every backbone, size and training seed) and recomputes the summary's
comparisons (each backbone minus the baseline at each size, each backbone's largest minus
smallest size; F1 against each label set) on nested random subsets of its test galaxies
(``--fractions`` of them; the same draw for every model, so that the comparisons stay paired).
For each fraction: the median half-width of the intervals over training seeds and galaxies
(what the summary decides with) and over galaxies alone (the per-model interval), and each
comparison's verdict. If the seed part dominates, fewer test galaxies cost little; if the galaxy
part does, more would help. Writes ``--out`` (JSON) with command, date, commit and data seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from clumpfinder.config import Plan
from clumpfinder.labels.coco import pool_size
from clumpfinder.report.summary import compare, size_effect, sweep_runs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import command_line, git_commit, merged_config, run_data_seeds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def subset(metrics: dict, keep: set[int]) -> dict:
    """A metrics.json whose per-image records hold only the test galaxies ``keep``."""
    out = copy.deepcopy(metrics)
    for ref in out["references"].values():
        rec = ref["per_image"]
        idx = [i for i, image in enumerate(rec["image_id"]) if image in keep]
        for k in ("image_id", "tp", "fp", "n_gt"):
            rec[k] = [rec[k][i] for i in idx]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--configfile", action="append", default=[], help="the configuration files the run was made with")
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw of test galaxies")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "split_size_development.json")
    a = ap.parse_args()
    cfg = merged_config(a.configfile)
    res = a.workdir / "results"
    seeds = run_data_seeds(res, a.configfile)
    plan = Plan(cfg, str(res), yaml.safe_load((REPO / "config" / "schema.yaml").read_text()))
    boot = cfg["evaluation"]["bootstrap"]
    runs = sweep_runs(plan.backbones, plan.n_train, plan.seeds, plan.sweep_files("metrics.json"),
                      full=pool_size(pd.read_csv(res / "labels" / "splits.csv")))
    ids = runs[0][3]["references"]["consensus"]["per_image"]["image_id"]
    order = np.random.default_rng(a.seed).permutation(len(ids))  # nested subsets: the first k of one draw
    rows = []
    for fraction in sorted(a.fractions, reverse=True):
        keep = {ids[i] for i in order[:max(1, round(fraction * len(ids)))]}
        cut = [(b, n, s, subset(m, keep)) for b, n, s, m in runs]
        comparison = compare(cut, plan.baseline, boot)
        comparison = comparison[comparison["backbone"] != comparison["baseline"]]
        effect = size_effect(cut, boot)
        diffs = [{"comparison": f"{r['backbone']} - {r['baseline']}", "reference": r["reference"],
                  "n_train": int(r["n_train"]), "diff": r["f1_diff"],
                  "half_width": (r["f1_diff_high"] - r["f1_diff_low"]) / 2,
                  "galaxy_half_width": (r["f1_diff_galaxy_high"] - r["f1_diff_galaxy_low"]) / 2,
                  "verdict": r["f1_verdict"]} for _, r in comparison.iterrows()]
        diffs += [{"comparison": f"{r['backbone']}: n = {r['n_to']} - n = {r['n_from']}", "reference": r["reference"],
                   "n_train": None, "diff": r["f1_diff"], "half_width": (r["f1_diff_high"] - r["f1_diff_low"]) / 2,
                   "galaxy_half_width": (r["f1_diff_galaxy_high"] - r["f1_diff_galaxy_low"]) / 2,
                   "verdict": r["f1_verdict"]} for _, r in effect.iterrows()]
        row = {"fraction": fraction, "test_galaxies": len(keep),
               "median_half_width": round(float(np.median([d["half_width"] for d in diffs])), 4),
               "median_galaxy_half_width": round(float(np.median([d["galaxy_half_width"] for d in diffs])), 4),
               "decided": sum(d["verdict"] in ("higher", "lower") for d in diffs), "comparisons": diffs}
        print(json.dumps({k: v for k, v in row.items() if k != "comparisons"}), flush=True)
        rows.append(row)
    out = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
           "data_seeds": seeds, "workdir": str(a.workdir), "test_galaxies": len(ids),
           "training_seeds": plan.seeds, "split_fractions": cfg["labels"]["split_fractions"], "bootstrap": boot,
           "fractions": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
