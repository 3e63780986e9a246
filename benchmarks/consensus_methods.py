"""Consensus accuracy against the simulated truth: em vs dbscan vs hdbscan across crowd regimes.

    python benchmarks/consensus_methods.py [--results results] [--out benchmarks/results/consensus_methods.json]

Re-simulates the volunteers of the survey in ``results/survey`` for 5, 10 and 20 volunteers per
subject and 0, 10 and 30 % spammers (everything else as in config/config.yaml), and scores:

* ``em``: the workflow's EM consensus (config defaults);
* ``dbscan_panoptes`` / ``hdbscan_panoptes``: Zooniverse's point reducers with their default
  parameters (DBSCAN eps 5 px, min_samples 3; HDBSCAN min_cluster_size 5, min_samples 3,
  excess of mass), per tool as the reducers do, implemented with scikit-learn: the
  ``panoptes-aggregation`` package installs cleanly only in its own environment (it pins numpy 2.2,
  pandas 2.3, scikit-learn 1.6), so its clustering calls are reproduced here with the same library;
* ``dbscan_tuned``: the workflow's own dbscan method (radius 0.5 FWHM, >= max(3, 20 %) volunteers).

Clump-level scores: a consensus box matches a true object within 0.5 PSF FWHM (one-to-one);
completeness over clumps >= 3 % of the galaxy flux plus odd objects, purity over all boxes (a box
on a fainter real clump counts as right), F1, median centre error. Volunteer skill recovery: the
Spearman rank correlation of EM's p_fn and p_fp with each volunteer's empirical rates against the
truth (volunteers with >= 10 classifications). SWAP: classifications used with retirement
(``swap_live``: supervised on the gold subjects as configured; ``swap_unsupervised_live``: agents
from Dawid-Skene EM over the whole export, i.e. with hindsight) vs all classifications
(``swap_fixed``), with the accuracy of each on "has clumps" and that of the plain majority vote.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import spearmanr
from sklearn.cluster import DBSCAN, HDBSCAN

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from clumpfinder.consensus import ConsensusSpec, drop_duplicate_taps, run_consensus, subject_geometry  # noqa: E402
from clumpfinder.volunteers import CrowdSpec, gold_subjects, simulate_export  # noqa: E402
from clumpfinder.zooniverse import read_export  # noqa: E402
from consensus_vs_truth import match  # noqa: E402


def panoptes_like(parsed, spec: ConsensusSpec, kind: str) -> pd.DataFrame:
    """Per subject and per tool clustering with the panoptes reducers' default parameters."""
    subjects = subject_geometry(parsed.classifications, spec)
    side = subjects.set_index("subject_id")["box_side"]
    clicks, _ = drop_duplicate_taps(parsed.clicks, side, spec.duplicate_tap_fraction)
    geo = subjects.set_index("subject_id")
    rows = []
    for (sid, tool), g in clicks.groupby(["subject_id", "tool"]):
        xy = g[["x", "y"]].to_numpy()
        if kind == "dbscan":
            if len(xy) < 3:
                continue
            labels = DBSCAN(eps=5.0, min_samples=3).fit_predict(xy)
            prob = np.ones(len(xy))
        else:
            if len(xy) < 5:
                continue
            m = HDBSCAN(min_cluster_size=5, min_samples=3, cluster_selection_method="eom", copy=True).fit(xy)
            labels, prob = m.labels_, m.probabilities_
        w, h = geo.loc[sid, "width"], geo.loc[sid, "height"]
        for lab in set(labels) - {-1}:
            sel = labels == lab
            wts = prob[sel] if prob[sel].sum() > 0 else None
            cx, cy = np.average(xy[sel], axis=0, weights=wts)
            if math.hypot(cx - w / 2, cy - h / 2) < geo.loc[sid, "centre_radius"]:
                continue  # the bulge, dropped as for every method
            rows.append({"subject_id": sid, "x": cx, "y": cy, "tool": tool})
    return pd.DataFrame(rows, columns=["subject_id", "x", "y", "tool"])


def score(boxes: pd.DataFrame, truth: pd.DataFrame, fwhm: pd.Series) -> dict:
    m = match(boxes, truth, fwhm, 0.5)
    target = m[(m["kind"] == "odd") | (m["flux_fraction_g"] >= 0.03)]
    comp = float(target["matched"].mean())
    pur = float(m["matched"].sum() / len(boxes)) if len(boxes) else float("nan")
    return {"boxes": len(boxes), "completeness": round(comp, 4), "purity": round(pur, 4),
            "f1": round(2 * comp * pur / (comp + pur), 4) if comp + pur > 0 else 0.0,
            "median_centre_error_fwhm": round(float(m["error_fwhm"].median()), 4)}


def true_skill(parsed, truth: pd.DataFrame, fwhm: pd.Series) -> pd.DataFrame:
    """Each volunteer's empirical false-positive and false-negative rates against the truth."""
    target = truth[(truth["kind"] == "odd") | (truth["flux_fraction_g"] >= 0.03)]
    by_sub = {sid: g[["x", "y"]].to_numpy() for sid, g in target.groupby("subject_id")}
    allobj = {sid: g[["x", "y"]].to_numpy() for sid, g in truth.groupby("subject_id")}
    fp, n, hit = {}, {}, {}
    for (sid, user), g in parsed.clicks.groupby(["subject_id", "user"]):
        xy = g[["x", "y"]].to_numpy()
        objs = allobj.get(sid)
        r = fwhm[sid]
        if objs is None:
            near = np.zeros(len(xy), bool)
        else:
            near = (np.hypot(*(xy[:, None, :] - objs[None]).transpose(2, 0, 1)) < r).any(axis=1)
        fp[user] = fp.get(user, 0) + int((~near).sum())
        n[user] = n.get(user, 0) + len(xy)
        t = by_sub.get(sid)
        if t is not None:
            hit[user] = hit.get(user, 0) + int((np.hypot(*(t[:, None, :] - xy[None]).transpose(2, 0, 1)) < r).any(axis=1).sum())
    cls = parsed.classifications
    chances = cls["subject_id"].map({k: len(v) for k, v in by_sub.items()}).fillna(0).groupby(cls["user"]).sum()
    out = pd.DataFrame({"user": chances.index, "chances": chances.to_numpy()})
    out["n_cls"] = out["user"].map(cls.groupby("user").size())
    out["true_p_fp"] = out["user"].map(fp).fillna(0) / out["user"].map(n).replace(0, np.nan)
    out["true_p_fn"] = 1 - out["user"].map(hit).fillna(0) / out["chances"].replace(0, np.nan)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=REPO / "results")
    ap.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    ap.add_argument("--per-subject", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--spammers", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "consensus_methods.json")
    a = ap.parse_args()
    cfg = yaml.safe_load(a.config.read_text())
    manifest = pd.read_csv(a.results / "survey" / "manifest.csv")
    truth = pd.read_csv(a.results / "survey" / "truth.csv")
    fwhm = manifest.set_index("subject_id")["psf_fwhm_pixels"]
    target = (truth["kind"] == "odd") | (truth["flux_fraction_g"] >= 0.03)
    has = manifest["subject_id"].isin(truth.loc[target, "subject_id"]).astype(int).to_numpy()
    has = pd.Series(has, index=manifest["subject_id"])
    results = []
    for k in a.per_subject:
        for spam in a.spammers:
            vcfg = dict(copy.deepcopy(cfg["volunteers"]), classifications_per_subject=k, spammer_fraction=spam)
            crowd = CrowdSpec.from_config(vcfg)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "export.csv"
                simulate_export(crowd, manifest, truth, path)
                parsed = read_export(path)
            gold = gold_subjects(crowd, manifest, truth).set_index("subject_id")["has_clumps"]
            row = {"per_subject": k, "spammer_fraction": spam, "methods": {}}
            for method in ("em", "dbscan"):
                spec = ConsensusSpec.from_config(dict(cfg["consensus"], method=method))
                t0 = time.perf_counter()
                res = run_consensus(parsed, spec, gold)
                name = "em" if method == "em" else "dbscan_tuned"
                row["methods"][name] = score(res.boxes, truth, fwhm) | {"seconds": round(time.perf_counter() - t0, 2)}
                if method == "em":
                    skill = true_skill(parsed, truth, fwhm).merge(res.volunteers, on="user")
                    skill = skill[skill["n_cls"] >= 10].dropna(subset=["true_p_fp", "true_p_fn"])
                    row["skill_recovery"] = {
                        "volunteers": len(skill),
                        "spearman_p_fn": round(float(spearmanr(skill["p_fn"], skill["true_p_fn"])[0]), 3),
                        "spearman_p_fp": round(float(spearmanr(skill["p_fp"], skill["true_p_fp"])[0]), 3),
                    }
                    s = res.subjects.set_index("subject_id")
                    row["swap_fixed"] = {"accuracy": round(float(((s["swap_prob"] > 0.5).astype(int) == has[s.index]).mean()), 4),
                                         "classifications_per_subject": round(float(s["swap_n_used"].mean()), 2)}
            for kind in ("dbscan", "hdbscan"):
                t0 = time.perf_counter()
                boxes = panoptes_like(parsed, spec, kind)
                row["methods"][f"{kind}_panoptes"] = score(boxes, truth, fwhm) | {"seconds": round(time.perf_counter() - t0, 2)}
            # SWAP as a live system: classifications after retirement are never made
            live = ConsensusSpec.from_config(dict(cfg["consensus"], method="dbscan",
                                                  swap=dict(cfg["consensus"]["swap"], stop_at_retirement=True)))
            s = run_consensus(parsed, live, gold).subjects.set_index("subject_id")
            majority = (parsed.classifications.assign(yes=parsed.classifications["n_marks"] > 0)
                        .groupby("subject_id")["yes"].mean() > 0.5).astype(int)
            row["swap_live"] = {
                "accuracy": round(float(((s["swap_prob"] > 0.5).astype(int) == has[s.index]).mean()), 4),
                "classifications_per_subject": round(float(s["swap_n_used"].mean()), 2),
                "retired_fraction": round(float(s["swap_retired"].mean()), 4),
                "accuracy_retired": round(float(((s["swap_prob"] > 0.5).astype(int) == has[s.index])[s["swap_retired"]].mean()), 4),
            }
            unsup = ConsensusSpec.from_config(dict(cfg["consensus"], method="dbscan", swap=dict(
                cfg["consensus"]["swap"], mode="unsupervised", stop_at_retirement=True)))
            s = run_consensus(parsed, unsup).subjects.set_index("subject_id")
            row["swap_unsupervised_live"] = {
                "accuracy": round(float(((s["swap_prob"] > 0.5).astype(int) == has[s.index]).mean()), 4),
                "classifications_per_subject": round(float(s["swap_n_used"].mean()), 2),
                "retired_fraction": round(float(s["swap_retired"].mean()), 4),
            }
            row["majority_vote_accuracy"] = round(float((majority == has[majority.index]).mean()), 4)
            print(json.dumps(row), flush=True)
            results.append(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"results": str(a.results), "regimes": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
