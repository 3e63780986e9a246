"""Consensus accuracy against the simulated truth: em vs dbscan vs hdbscan across crowd regimes.

    python benchmarks/consensus_methods.py --seeds development   # choose consensus settings here
    python benchmarks/consensus_methods.py --seeds reporting     # report, after every choice is made

Draws the survey of config/config.yaml (``reporting``) or of config/development.yaml on top
(``development``) without rendering images, simulates its volunteers in several regimes and scores
each consensus against the truth. Regimes: 5, 10 and 20 volunteers per subject with 0, 10 and 30 %
spammers, and a Clump-Scout-like crowd (20 per subject, 10 % spammers) in which 25 % of the
volunteers collude, all marking one shared false spot per subject. Every regime has the
simulator's correlated errors: knots and near-threshold clumps that stand out are marked by many
volunteers at once, bluish stars are called clumps by most.

Methods:

* ``em``: the workflow's EM consensus (config defaults), and ``em_*`` variants given with
  ``--em-variant NAME KEY=VALUE ...`` (keys of ``consensus.em``);
* ``dbscan_panoptes`` / ``hdbscan_panoptes``: Zooniverse's point reducers with their default
  parameters (DBSCAN eps 5 px, min_samples 3; HDBSCAN min_cluster_size 5, min_samples 3, excess
  of mass), per tool as the reducers do, with scikit-learn (the ``panoptes-aggregation`` package
  pins numpy 2.2, pandas 2.3, scikit-learn 1.6 and installs only in its own environment);
* ``dbscan_tuned``: the workflow's own dbscan method (radius 0.5 FWHM, >= max(3, 20 %) volunteers).

Scores, as the detector is scored against the truth (evaluation.truth_min_flux_fraction and
truth_ignore_min_flux_fraction): a consensus box matches an object within 0.5 PSF FWHM (one to
one, nearest first). Completeness over the clumps to find (star-forming regions >= 3 % of the
galaxy's g flux, and odd objects); purity over the boxes, where a box on a region of 1.5-3 % is
neither right nor wrong and a box on a fainter knot or on nothing is false; F1; the share of boxes
on knots below 1.5 %; the median centre error. Volunteer skill recovery: the Spearman rank
correlation of EM's p_fn and p_fp with each volunteer's empirical rates against the truth
(volunteers with >= 10 classifications). SWAP: classifications used with retirement vs all, and
accuracy on "has clumps". Writes benchmarks/results/consensus_methods_<seeds>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
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

from clumpfinder.crowd.consensus import ConsensusSpec, drop_duplicate_taps, run_consensus, subject_geometry  # noqa: E402
from clumpfinder.data.kinds import FIELD, STAR_FORMING  # noqa: E402
from clumpfinder.data.simulate import SurveySpec, simulate_catalogue  # noqa: E402
from clumpfinder.data.volunteers import CrowdSpec, gold_subjects, simulate_export  # noqa: E402
from clumpfinder.data.zooniverse import read_export  # noqa: E402
from consensus_vs_truth import match  # noqa: E402
from label_realism import merge, setting  # noqa: E402
from provenance import command_line, data_seeds, git_commit  # noqa: E402

#: (name, volunteers per subject, spammer share, colluder share)
REGIMES = [(f"{k}/{int(s * 100)}%", k, s, 0.0) for k in (5, 10, 20) for s in (0.0, 0.1, 0.3)]
REGIMES.append(("20/10% + 25% colluders", 20, 0.1, 0.25))


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


def roles(truth: pd.DataFrame, evaluation: dict) -> pd.Series:
    """What each true object is for the scores: 'target', 'ignored' (a near-threshold region or a
    field source beside the galaxy) or 'false' (a faint knot), as the evaluation's truth boxes."""
    f = truth["flux_fraction_g"]
    sf = truth["kind"].isin(STAR_FORMING)
    return pd.Series(np.select([truth["kind"] == FIELD, ~sf | (f >= evaluation["truth_min_flux_fraction"]),
                                f >= evaluation["truth_ignore_min_flux_fraction"]], ["ignored", "target", "ignored"],
                               "false"),
                     index=truth.index)


def score(boxes: pd.DataFrame, truth: pd.DataFrame, fwhm: pd.Series, evaluation: dict) -> dict:
    m = match(boxes, truth.assign(role=roles(truth, evaluation)), fwhm, 0.5)
    target = m[m["role"] == "target"]
    comp = float(target["matched"].mean())
    hits = m.loc[m["matched"], "role"].value_counts()
    tp, ignored = int(hits.get("target", 0)), int(hits.get("ignored", 0))
    counted = len(boxes) - ignored
    pur = tp / counted if counted else float("nan")
    return {"boxes": len(boxes), "completeness": round(comp, 4), "purity": round(pur, 4),
            "f1": round(2 * comp * pur / (comp + pur), 4) if comp + pur > 0 else 0.0,
            "boxes_on_knots": round(int(hits.get("false", 0)) / len(boxes), 4) if len(boxes) else None,
            "median_centre_error_fwhm": round(float(m["error_fwhm"].median()), 4)}


def true_skill(parsed, truth: pd.DataFrame, fwhm: pd.Series, evaluation: dict) -> pd.DataFrame:
    """Each volunteer's empirical false-positive and false-negative rates against the truth."""
    r = roles(truth, evaluation)
    target = truth[r == "target"]
    real = truth[r != "false"]  # a click near a near-threshold region is not counted false
    by_sub = {sid: g[["x", "y"]].to_numpy() for sid, g in target.groupby("subject_id")}
    allobj = {sid: g[["x", "y"]].to_numpy() for sid, g in real.groupby("subject_id")}
    fp, n, hit = {}, {}, {}
    for (sid, user), g in parsed.clicks.groupby(["subject_id", "user"]):
        xy = g[["x", "y"]].to_numpy()
        objs = allobj.get(sid)
        rad = fwhm[sid]
        if objs is None:
            near = np.zeros(len(xy), bool)
        else:
            near = (np.hypot(*(xy[:, None, :] - objs[None]).transpose(2, 0, 1)) < rad).any(axis=1)
        fp[user] = fp.get(user, 0) + int((~near).sum())
        n[user] = n.get(user, 0) + len(xy)
        t = by_sub.get(sid)
        if t is not None:
            hit[user] = hit.get(user, 0) + int((np.hypot(*(t[:, None, :] - xy[None]).transpose(2, 0, 1)) < rad)
                                               .any(axis=1).sum())
    cls = parsed.classifications
    chances = cls["subject_id"].map({k: len(v) for k, v in by_sub.items()}).fillna(0).groupby(cls["user"]).sum()
    out = pd.DataFrame({"user": chances.index, "chances": chances.to_numpy()})
    out["n_cls"] = out["user"].map(cls.groupby("user").size())
    out["true_p_fp"] = out["user"].map(fp).fillna(0) / out["user"].map(n).replace(0, np.nan)
    out["true_p_fn"] = 1 - out["user"].map(hit).fillna(0) / out["chances"].replace(0, np.nan)
    return out


def has_clumps(manifest: pd.DataFrame, truth: pd.DataFrame, evaluation: dict) -> pd.Series:
    target = truth[roles(truth, evaluation) == "target"]
    return pd.Series(manifest["subject_id"].isin(target["subject_id"]).astype(int).to_numpy(),
                     index=manifest["subject_id"])


def run_regime(cfg: dict, manifest: pd.DataFrame, truth: pd.DataFrame, regime: tuple, variants: dict,
               workdir: Path) -> dict:
    name, k, spam, collude = regime
    vcfg = merge(cfg["volunteers"], {"classifications_per_subject": k, "spammer_fraction": spam,
                                     "colluder_fraction": collude})
    crowd = CrowdSpec.from_config(vcfg)
    path = workdir / "export.csv"
    simulate_export(crowd, manifest, truth, path)
    parsed = read_export(path)
    gold = gold_subjects(crowd, manifest, truth).set_index("subject_id")["has_clumps"]
    fwhm = manifest.set_index("subject_id")["psf_fwhm_pixels"]
    ev = cfg["evaluation"]
    has = has_clumps(manifest, truth, ev)
    row = {"regime": name, "per_subject": k, "spammer_fraction": spam, "colluder_fraction": collude, "methods": {}}
    methods = {"em": cfg["consensus"], "dbscan_tuned": dict(cfg["consensus"], method="dbscan")}
    methods.update({f"em_{v}": merge(cfg["consensus"], {"em": over}) for v, over in variants.items()})
    for mname, ccfg in methods.items():
        spec = ConsensusSpec.from_config(ccfg)
        t0 = time.perf_counter()
        res = run_consensus(parsed, spec, gold)
        row["methods"][mname] = score(res.boxes, truth, fwhm, ev) | {"seconds": round(time.perf_counter() - t0, 2)}
        if mname == "em":
            skill = true_skill(parsed, truth, fwhm, ev).merge(res.volunteers, on="user")
            skill = skill[skill["n_cls"] >= 10].dropna(subset=["true_p_fp", "true_p_fn"])
            row["skill_recovery"] = {
                "volunteers": len(skill),
                "spearman_p_fn": round(float(spearmanr(skill["p_fn"], skill["true_p_fn"])[0]), 3),
                "spearman_p_fp": round(float(spearmanr(skill["p_fp"], skill["true_p_fp"])[0]), 3),
            }
            row["em_report"] = res.report.get("em")
            s = res.subjects.set_index("subject_id")
            row["swap_fixed"] = {"accuracy": round(float(((s["swap_prob"] > 0.5).astype(int) == has[s.index]).mean()), 4),
                                 "classifications_per_subject": round(float(s["swap_n_used"].mean()), 2)}
    for kind in ("dbscan", "hdbscan"):
        t0 = time.perf_counter()
        boxes = panoptes_like(parsed, spec, kind)
        row["methods"][f"{kind}_panoptes"] = score(boxes, truth, fwhm, ev) | {"seconds": round(time.perf_counter() - t0, 2)}
    # SWAP as a live system: classifications after retirement are never made
    live = ConsensusSpec.from_config(merge(cfg["consensus"], {"method": "dbscan", "swap": {"stop_at_retirement": True}}))
    s = run_consensus(parsed, live, gold).subjects.set_index("subject_id")
    right = (s["swap_prob"] > 0.5).astype(int) == has[s.index]
    row["swap_live"] = {"accuracy": round(float(right.mean()), 4),
                        "classifications_per_subject": round(float(s["swap_n_used"].mean()), 2),
                        "retired_fraction": round(float(s["swap_retired"].mean()), 4),
                        "accuracy_retired": round(float(right[s["swap_retired"]].mean()), 4)}
    majority = (parsed.classifications.assign(yes=parsed.classifications["n_marks"] > 0)
                .groupby("subject_id")["yes"].mean() > 0.5).astype(int)
    row["majority_vote_accuracy"] = round(float((majority == has[majority.index]).mean()), 4)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", choices=["development", "reporting"], required=True)
    ap.add_argument("--regimes", nargs="+", default=None, help="regime names to run (default: all)")
    ap.add_argument("--em-variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                    help="an EM variant: a name and consensus.em settings, e.g. strict min_votes=4")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for every method, e.g. volunteers.c50.sigma_dex=0.3")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if a.seeds == "development":
        cfg = merge(cfg, yaml.safe_load((REPO / "config" / "development.yaml").read_text()))
    for s in a.settings:
        cfg = merge(cfg, setting(s))
    variants = {}
    for name, *kv in a.em_variant:
        over: dict = {}
        for item in kv:
            over = merge(over, setting(item))
        variants[name] = over
    manifest, truth = simulate_catalogue(SurveySpec.from_config(cfg["simulate"]))
    regimes = [r for r in REGIMES if a.regimes is None or r[0] in a.regimes]
    out = {"command": command_line(),
           "date": dt.date.today().isoformat(), "commit": git_commit(), "data_seeds": data_seeds(cfg), "seeds": a.seeds,
           "simulate_seed": cfg["simulate"]["seed"], "volunteers_seed": cfg["volunteers"]["seed"],
           "subjects": len(manifest), "em_variants": variants, "regimes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for regime in regimes:
            row = run_regime(cfg, manifest, truth, regime, variants, Path(tmp))
            print(json.dumps({"regime": row["regime"], **{m: v["f1"] for m, v in row["methods"].items()}}), flush=True)
            out["regimes"].append(row)
    path = a.out or REPO / "benchmarks" / "results" / f"consensus_methods_{a.seeds}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
