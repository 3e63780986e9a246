"""The headline comparison with several training seeds: the paired ΔF1 and the seed-to-seed spread.

    snakemake --cores 2 --directory DIR --configfile seeds.yaml -- results/eval/<b>/n30/seed<s>/metrics.json ...
    python benchmarks/seed_spread.py --workdir DIR --n 30 --seeds 0 1 2

where ``seeds.yaml`` sets ``sweep: {seeds: [0, 1, 2]}``: the extra seeds' models of an existing run
(e.g. the default's, from benchmarks/workflow_timing.py) are trained and evaluated without touching
its other outputs. This script reads every backbone's evaluations at the given size and seeds and
runs the summary's own paired comparison (``clumpfinder.report.summary.compare``: means over seeds,
bootstrap over the same test galaxies, seed standard deviation). It only reports: nothing is
chosen from it. Writes ``--out`` (JSON) with command, date and commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from clumpfinder.io import read_json  # noqa: E402
from clumpfinder.report.summary import compare  # noqa: E402
from provenance import git_commit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--n", type=int, nargs="+", default=[30])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--baseline", default="resnet18_scratch")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "seed_spread.json")
    a = ap.parse_args()
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    boot = cfg["evaluation"]["bootstrap"]
    ev = a.workdir / "results" / "eval"
    cells = []
    for backbone in sorted(p.name for p in ev.iterdir() if p.is_dir() and p.name not in ("classical", "consensus_ceiling")):
        for n in a.n:
            for seed in a.seeds:
                path = ev / backbone / f"n{n}" / f"seed{seed}" / "metrics.json"
                if not path.exists():
                    sys.exit(f"{path} is missing: train and evaluate that seed first (see the docstring)")
                cells.append((backbone, n, seed, read_json(path)))
    comp = compare(cells, a.baseline, boot)
    per_seed = [{"backbone": b, "n_train": n, "seed": s, **{f"{ref}_f1": m["references"][ref]["merged"]["f1"]
                                                            for ref in m["references"]}} for b, n, s, m in cells]
    cols = ["reference", "n_train", "backbone", "n_seeds", "n_test_images", "f1", "f1_low", "f1_high", "f1_seed_sd",
            "f1_diff", "f1_diff_low", "f1_diff_high", "completeness", "purity"]
    out = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "commit": git_commit(), "workdir": str(a.workdir), "seeds": a.seeds, "baseline": a.baseline,
           "comparison": comp[cols].round(4).to_dict("records"), "per_seed": per_seed}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(comp[cols].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
