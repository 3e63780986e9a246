"""How good are the consensus labels? Compare results/consensus/boxes.csv with the simulated truth.

    python benchmarks/consensus_vs_truth.py [--results results]

A consensus box matches a true object when its centre lies within ``--radius`` PSF FWHM of it
(one box per object, nearest first). Reports label purity (boxes on a real object), completeness
per clump flux-fraction bin and for odd objects, and the median centre error. Writes
benchmarks/results/consensus_vs_truth.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[1]
BINS = [0.0, 0.03, 0.05, 0.08, 1.0]


def match(boxes: pd.DataFrame, truth: pd.DataFrame, fwhm: pd.Series, radius: float) -> pd.DataFrame:
    """Truth rows with the matched box's centre error (NaN when unmatched)."""
    out = truth.copy()
    out["error_fwhm"] = np.nan
    out["matched"] = False
    by_sub = dict(tuple(boxes.groupby("subject_id")))
    for sid, t in truth.groupby("subject_id"):
        b = by_sub.get(sid)
        if b is None:
            continue
        d = np.hypot(t["x"].to_numpy()[:, None] - b["x"].to_numpy()[None], t["y"].to_numpy()[:, None] - b["y"].to_numpy()[None])
        d = d / fwhm[sid]
        rows, cols = linear_sum_assignment(np.where(d < radius, d, 1e6))
        ok = d[rows, cols] < radius
        idx = t.index[rows[ok]]
        out.loc[idx, "matched"] = True
        out.loc[idx, "error_fwhm"] = d[rows[ok], cols[ok]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--radius", type=float, default=0.5, help="match radius in PSF FWHM")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "consensus_vs_truth.json")
    a = ap.parse_args()
    man = pd.read_csv(a.results / "survey" / "manifest.csv").set_index("subject_id")
    truth = pd.read_csv(a.results / "survey" / "truth.csv")
    boxes = pd.read_csv(a.results / "consensus" / "boxes.csv")
    m = match(boxes, truth, man["psf_fwhm_pixels"], a.radius)
    clumps = m[m["kind"] == "clump"]
    per_bin = {}
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = clumps[(clumps["flux_fraction_g"] >= lo) & (clumps["flux_fraction_g"] < hi)]
        per_bin[f"{lo:g}-{hi:g}"] = {"n": len(sel), "completeness": round(float(sel["matched"].mean()), 4)}
    above = clumps[clumps["flux_fraction_g"] >= 0.03]
    result = {
        "results": str(a.results), "radius_fwhm": a.radius, "boxes": len(boxes),
        "label_purity": round(float(m["matched"].sum() / len(boxes)), 4) if len(boxes) else None,
        "completeness_clumps_ge_3pct": round(float(above["matched"].mean()), 4),
        "completeness_by_flux_fraction": per_bin,
        "completeness_odd": round(float(m.loc[m["kind"] == "odd", "matched"].mean()), 4),
        "median_centre_error_fwhm": round(float(m["error_fwhm"].median()), 4),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
