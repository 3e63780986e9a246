"""Volunteer consensus: clicks -> boxes -> one box per clump, plus SWAP per subject.

Clicks become square boxes centred on the click whose side is the subject's PSF FWHM (image
pixels) times ``box_scale``, as Clump Scout did. Three ways to turn them into clumps (``method``):

* ``em`` (default): the Bayesian EM aggregation with volunteer skill (:mod:`clumpfinder.boxem`);
* ``dbscan``: per subject, DBSCAN on the clicks (radius in units of the FWHM, a minimum number of
  distinct volunteers that scales with how many classified the subject); the box is centred on the
  mean click;
* ``hdbscan``: per subject, HDBSCAN (``min_cluster_size``, ``min_samples``, excess-of-mass
  selection) with probability-weighted centres, as Zooniverse's ``point_reducer_hdbscan``.

The two clustering baselines weigh every click the same. For all three, clusters on the galaxy
centre (the bulge) are dropped and the class is the majority tool (for ``em`` also "odd" when
P(false positive) is high). Independently, SWAP (:mod:`clumpfinder.swap`) gives each subject a
posterior probability of having clumps and each volunteer a PL/PD.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.cluster import DBSCAN, HDBSCAN

from clumpfinder.boxem import EMSpec, aggregate
from clumpfinder.swap import SwapSpec, run_swap
from clumpfinder.zooniverse import ParsedExport

log = logging.getLogger(__name__)

METHODS = ("em", "dbscan", "hdbscan")
BOX_COLUMNS = ["subject_id", "x", "y", "side", "x1", "y1", "x2", "y2", "category", "n_votes",
               "n_classifications", "odd_fraction", "false_pos_prob", "inaccurate_prob", "width", "height"]
SUBJECT_COLUMNS = ["subject_id", "width", "height", "fwhm_px", "box_side", "n_classifications",
                   "n_clicks", "n_boxes", "n_centre_dropped", "swap_prob", "swap_n_used", "swap_retired",
                   "swap_retired_as", "swap_retired_at", "gold", "expected_false_pos", "expected_inaccurate",
                   "expected_missed", "risk", "finished"]
VOLUNTEER_COLUMNS = ["user", "n_classifications", "n_clicks", "swap_pl", "swap_pd", "swap_n_trained",
                     "p_fp", "p_fn", "variance"]


@dataclass(frozen=True)
class ConsensusSpec:
    """The ``consensus`` section of the configuration."""

    method: str
    box_scale: float
    fallback_box_fraction: float
    duplicate_tap_fraction: float
    centre_radius_fwhm: float
    dbscan: dict[str, float]
    hdbscan: dict[str, float]
    em: EMSpec
    swap: SwapSpec

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "ConsensusSpec":
        if cfg["method"] not in METHODS:
            raise ValueError(f"consensus.method {cfg['method']!r} is not one of {', '.join(METHODS)}")
        kw = {k: cfg[k] for k in cls.__dataclass_fields__}
        kw["em"] = EMSpec.from_config(cfg["em"])
        kw["swap"] = SwapSpec.from_config(cfg["swap"])
        return cls(**kw)


@dataclass
class ConsensusResult:
    """Consensus boxes, per-subject and per-volunteer tables, and a report."""

    boxes: pd.DataFrame
    subjects: pd.DataFrame
    volunteers: pd.DataFrame
    report: dict[str, Any]


def subject_geometry(classifications: pd.DataFrame, spec: ConsensusSpec) -> pd.DataFrame:
    """Per subject: image size, FWHM, box side, bulge radius (``centre_radius``, pixels),
    number of classifications."""
    g = classifications.groupby("subject_id")
    subj = pd.DataFrame(
        {
            "width": g["width"].median(),
            "height": g["height"].median(),
            "fwhm_px": g["fwhm_px"].median(),  # NaN when no row carried it
            "n_classifications": g.size(),
        }
    )
    side = subj["fwhm_px"] * spec.box_scale
    fallback = subj["width"] * spec.fallback_box_fraction
    subj["box_side"] = side.where(side.notna(), fallback)
    # consensus clumps closer than this to the image centre are the bulge, for every method
    subj["centre_radius"] = spec.centre_radius_fwhm * subj["box_side"] / spec.box_scale
    return subj.reset_index()


def drop_duplicate_taps(clicks: pd.DataFrame, side: pd.Series, fraction: float) -> tuple[pd.DataFrame, int]:
    """Drop a click closer than ``fraction`` x box side to an earlier click of the same
    classification (a double tap on a phone); returns (kept clicks, number dropped)."""
    if clicks.empty or fraction <= 0:
        return clicks, 0
    keep = np.ones(len(clicks), dtype=bool)
    radius = clicks["subject_id"].map(side).to_numpy() * fraction
    xy = clicks[["x", "y"]].to_numpy()
    cid = clicks["classification_id"].to_numpy()
    order = np.argsort(cid, kind="stable")
    starts = np.flatnonzero(np.r_[True, cid[order][1:] != cid[order][:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        idx = order[s:e]
        for a in range(1, len(idx)):
            d = np.hypot(*(xy[idx[:a]][keep[idx[:a]]] - xy[idx[a]]).T)
            if d.size and d.min() < radius[idx[a]]:
                keep[idx[a]] = False
    return clicks[keep].reset_index(drop=True), int((~keep).sum())


def dbscan_subject(xy: np.ndarray, users: np.ndarray, eps: float, min_votes: int) -> np.ndarray:
    """Cluster labels (-1 = noise) requiring ``min_votes`` distinct volunteers per cluster."""
    if len(xy) < min_votes:
        return np.full(len(xy), -1)
    # inputs are already validated arrays: skip sklearn's per-call checks (most of the time on
    # subjects with a few dozen clicks)
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        labels = DBSCAN(eps=eps, min_samples=min_votes, algorithm="brute").fit_predict(xy)
    for lab in np.unique(labels[labels >= 0]):
        members = labels == lab
        if len(np.unique(users[members])) < min_votes:
            labels[members] = -1
    return labels


def hdbscan_subject(xy: np.ndarray, min_cluster_size: int, min_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """HDBSCAN labels (-1 = noise) and membership probabilities."""
    if len(xy) < max(min_cluster_size, 2):
        return np.full(len(xy), -1), np.zeros(len(xy))
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        model = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min(min_samples, len(xy)),
                        cluster_selection_method="eom", copy=True).fit(xy)
    return model.labels_, model.probabilities_


def _cluster(clicks: pd.DataFrame, subjects: pd.DataFrame, spec: ConsensusSpec) -> tuple[pd.DataFrame, dict[int, int]]:
    """Boxes from per-subject clustering (``dbscan`` or ``hdbscan``); returns (boxes, centre drops)."""
    geo = subjects.set_index("subject_id")
    width, height = geo["width"].to_dict(), geo["height"].to_dict()
    box_side, n_cls = geo["box_side"].to_dict(), geo["n_classifications"].to_dict()
    centre_radius = geo["centre_radius"].to_dict()
    clicks = clicks.sort_values("subject_id", kind="stable")
    sid_all = clicks["subject_id"].to_numpy()
    xy_all = clicks[["x", "y"]].to_numpy()
    users_all = clicks["user"].to_numpy()
    tools_all = clicks["tool"].to_numpy()
    starts = np.flatnonzero(np.r_[True, sid_all[1:] != sid_all[:-1]]) if len(sid_all) else np.array([], int)
    ends = np.r_[starts[1:], len(sid_all)]
    boxes: list[dict[str, Any]] = []
    n_centre: dict[int, int] = {}
    for s0, s1 in zip(starts, ends):
        sid = int(sid_all[s0])
        w, h, side, n_c = width[sid], height[sid], box_side[sid], n_cls[sid]
        xy, users, tools = xy_all[s0:s1], users_all[s0:s1], tools_all[s0:s1]
        if spec.method == "dbscan":
            min_votes = max(int(spec.dbscan["min_votes"]), math.ceil(spec.dbscan["min_vote_fraction"] * n_c))
            labels = dbscan_subject(xy, users, spec.dbscan["eps_fwhm"] * side / spec.box_scale, min_votes)
            weight = np.ones(len(xy))
        else:
            labels, weight = hdbscan_subject(xy, int(spec.hdbscan["min_cluster_size"]),
                                             int(spec.hdbscan["min_samples"]))
        for lab in np.unique(labels[labels >= 0]):
            m = labels == lab
            wm = weight[m] if weight[m].sum() > 0 else np.ones(int(m.sum()))
            cx, cy = np.average(xy[m], axis=0, weights=wm)
            if math.hypot(cx - w / 2, cy - h / 2) < centre_radius[sid]:
                n_centre[sid] = n_centre.get(sid, 0) + 1
                continue
            odd = float(tools[m].mean())
            boxes.append(
                {
                    "subject_id": sid, "x": cx, "y": cy, "side": side,
                    "x1": max(0.0, cx - side / 2), "y1": max(0.0, cy - side / 2),
                    "x2": min(w, cx + side / 2), "y2": min(h, cy + side / 2),
                    "category": "odd_clump" if odd > 0.5 else "clump",
                    "n_votes": int(len(np.unique(users[m]))), "odd_fraction": odd,
                    "false_pos_prob": np.nan, "inaccurate_prob": np.nan, "width": w, "height": h,
                }
            )
    return pd.DataFrame(boxes, columns=[c for c in BOX_COLUMNS if c != "n_classifications"]), n_centre


def run_consensus(parsed: ParsedExport, spec: ConsensusSpec, gold: pd.Series | None = None) -> ConsensusResult:
    """Consensus boxes, subject and volunteer tables, and a report.

    ``gold``: subjects of known truth for supervised SWAP (1 = has clumps, 0 = none), indexed by
    subject_id; subjects not in the export are ignored.
    """
    cls = parsed.classifications
    if cls.empty:
        raise ValueError("the export has no usable classifications; see the parse report for why rows were skipped")
    subjects = subject_geometry(cls, spec)
    side = subjects.set_index("subject_id")["box_side"]
    clicks, n_taps = drop_duplicate_taps(parsed.clicks, side, spec.duplicate_tap_fraction)
    swap_subjects, swap_volunteers = run_swap(cls, spec.swap, gold)
    subjects = subjects.merge(swap_subjects, on="subject_id", how="left")
    per_user = cls.groupby("user").size()
    volunteers = pd.DataFrame({"user": per_user.index, "n_classifications": per_user.to_numpy()})
    volunteers["n_clicks"] = volunteers["user"].map(clicks.groupby("user").size()).fillna(0).astype(int)
    volunteers = volunteers.merge(swap_volunteers, on="user", how="left")
    extra: dict[str, Any] = {}
    if spec.method == "em":
        boxes, images, skills, info = aggregate(subjects, cls, clicks, spec.em)
        subjects = subjects.merge(images.drop(columns=["n_volunteers", "n_clumps"]), on="subject_id", how="left")
        volunteers = volunteers.merge(skills[["user", "p_fp", "p_fn", "variance"]], on="user", how="left")
        extra = {"em": info, "subjects_finished": int(subjects["finished"].sum())}
    else:
        boxes, n_centre = _cluster(clicks, subjects, spec)
        subjects["n_centre_dropped"] = subjects["subject_id"].map(n_centre).fillna(0).astype(int)
    boxes["n_classifications"] = boxes["subject_id"].map(subjects.set_index("subject_id")["n_classifications"])
    boxes = boxes[BOX_COLUMNS]
    subjects["n_clicks"] = subjects["subject_id"].map(clicks.groupby("subject_id").size()).fillna(0).astype(int)
    subjects["n_boxes"] = subjects["subject_id"].map(boxes.groupby("subject_id").size()).fillna(0).astype(int)
    subjects = subjects.reindex(columns=SUBJECT_COLUMNS)
    volunteers = volunteers.reindex(columns=VOLUNTEER_COLUMNS)
    n_gold = int((subjects["gold"] >= 0).sum())
    report = {
        "method": spec.method,
        "subjects": len(subjects),
        "subjects_with_boxes": int((subjects["n_boxes"] > 0).sum()),
        "boxes": len(boxes),
        "boxes_by_category": boxes["category"].value_counts().to_dict(),
        "duplicate_taps_dropped": n_taps,
        "centre_clusters_dropped": int(subjects["n_centre_dropped"].sum()),
        "subjects_without_fwhm": int(subjects["fwhm_px"].isna().sum()),
        "volunteers": len(volunteers),
        "swap": {
            "mode": spec.swap.mode, "gold_subjects": n_gold,
            "retired_yes": int((subjects["swap_retired_as"] == "yes").sum()),
            "retired_no": int((subjects["swap_retired_as"] == "no").sum()),
            "classifications_used": int(subjects["swap_n_used"].sum()),
            "classifications": len(cls),
        },
        **extra,
    }
    return ConsensusResult(boxes.reset_index(drop=True), subjects, volunteers, report)


def read_gold(path) -> pd.Series:
    """Gold subjects (CSV with subject_id, has_clumps in {0, 1}) as a Series by subject_id."""
    gold = pd.read_csv(path)
    missing = {"subject_id", "has_clumps"} - set(gold.columns)
    if missing:
        raise ValueError(f"{path}: gold subject table lacks column(s) {', '.join(sorted(missing))}")
    repeated = gold["subject_id"].duplicated()
    if repeated.any():
        row = int(repeated.to_numpy().argmax()) + 2
        raise ValueError(f"{path}: line {row}: subject {gold['subject_id'][repeated].iloc[0]} is listed twice")
    value = pd.to_numeric(gold["has_clumps"], errors="coerce")
    bad = ~value.isin([0, 1])
    if bad.any():
        row = int(bad.to_numpy().argmax()) + 2
        raise ValueError(f"{path}: line {row}: has_clumps must be 0 or 1, got {gold['has_clumps'][bad].iloc[0]!r}")
    return pd.Series(value.to_numpy(int), index=gold["subject_id"].to_numpy(np.int64))
