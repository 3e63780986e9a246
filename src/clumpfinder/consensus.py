"""Volunteer consensus: clicks -> boxes -> one box per clump.

Baseline method (``dbscan``): clicks become square boxes centred on the click whose side is the
subject's PSF FWHM (image pixels) times ``box_scale``, as Clump Scout did; clicks of each subject
are clustered with DBSCAN (radius in units of the FWHM, a minimum number of distinct volunteers
that scales with how many classified the subject); a cluster's box is centred on the mean click;
clusters on the galaxy centre (the bulge) are dropped; the class is the majority tool.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.cluster import DBSCAN

from clumpfinder.zooniverse import ParsedExport

log = logging.getLogger(__name__)

BOX_COLUMNS = ["subject_id", "x", "y", "side", "x1", "y1", "x2", "y2", "category", "n_votes",
               "n_classifications", "odd_fraction", "width", "height"]
SUBJECT_COLUMNS = ["subject_id", "width", "height", "fwhm_px", "box_side", "n_classifications",
                   "n_clicks", "n_boxes", "n_centre_dropped"]


@dataclass(frozen=True)
class ConsensusSpec:
    """The ``consensus`` section of the configuration."""

    method: str
    box_scale: float
    fallback_box_fraction: float
    duplicate_tap_fraction: float
    centre_radius_fraction: float
    dbscan: dict[str, float]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "ConsensusSpec":
        spec = cls(**{k: cfg[k] for k in cls.__dataclass_fields__})
        if spec.method != "dbscan":
            raise ValueError(f"consensus.method {spec.method!r} is not implemented; use 'dbscan'")
        return spec


def subject_geometry(classifications: pd.DataFrame, spec: ConsensusSpec) -> pd.DataFrame:
    """Per subject: image size, FWHM and box side, number of classifications."""
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


def run_consensus(parsed: ParsedExport, spec: ConsensusSpec) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Consensus boxes, per-subject table and a report."""
    subjects = subject_geometry(parsed.classifications, spec)
    side = subjects.set_index("subject_id")["box_side"]
    clicks, n_taps = drop_duplicate_taps(parsed.clicks, side, spec.duplicate_tap_fraction)
    geo = subjects.set_index("subject_id")
    boxes: list[dict[str, Any]] = []
    n_centre: dict[int, int] = {}
    clicks = clicks.sort_values("subject_id", kind="stable")
    sid_all = clicks["subject_id"].to_numpy()
    xy_all = clicks[["x", "y"]].to_numpy()
    users_all = clicks["user"].to_numpy()
    tools_all = clicks["tool"].to_numpy()
    starts = np.flatnonzero(np.r_[True, sid_all[1:] != sid_all[:-1]]) if len(sid_all) else np.array([], int)
    ends = np.r_[starts[1:], len(sid_all)]
    width, height = geo["width"].to_dict(), geo["height"].to_dict()
    box_side, n_cls = geo["box_side"].to_dict(), geo["n_classifications"].to_dict()
    for s0, s1 in zip(starts, ends):
        sid = int(sid_all[s0])
        w, h, side, n_c = width[sid], height[sid], box_side[sid], n_cls[sid]
        fwhm = side / spec.box_scale
        min_votes = max(int(spec.dbscan["min_votes"]), math.ceil(spec.dbscan["min_vote_fraction"] * n_c))
        xy, users, tools = xy_all[s0:s1], users_all[s0:s1], tools_all[s0:s1]
        labels = dbscan_subject(xy, users, spec.dbscan["eps_fwhm"] * fwhm, min_votes)
        r_centre = spec.centre_radius_fraction * max(w, h)
        for lab in np.unique(labels[labels >= 0]):
            m = labels == lab
            cx, cy = xy[m].mean(axis=0)
            if math.hypot(cx - w / 2, cy - h / 2) < r_centre:
                n_centre[sid] = n_centre.get(sid, 0) + 1
                continue
            odd = float(tools[m].mean())
            boxes.append(
                {
                    "subject_id": sid, "x": cx, "y": cy, "side": side,
                    "x1": max(0.0, cx - side / 2), "y1": max(0.0, cy - side / 2),
                    "x2": min(w, cx + side / 2), "y2": min(h, cy + side / 2),
                    "category": "odd_clump" if odd > 0.5 else "clump",
                    "n_votes": int(len(np.unique(users[m]))), "n_classifications": int(n_c),
                    "odd_fraction": odd, "width": w, "height": h,
                }
            )
    n_clicks = clicks.groupby("subject_id").size()
    box_df = pd.DataFrame(boxes, columns=BOX_COLUMNS)
    subjects["n_clicks"] = subjects["subject_id"].map(n_clicks).fillna(0).astype(int)
    subjects["n_boxes"] = subjects["subject_id"].map(box_df.groupby("subject_id").size()).fillna(0).astype(int)
    subjects["n_centre_dropped"] = subjects["subject_id"].map(n_centre).fillna(0).astype(int)
    report = {
        "method": spec.method,
        "subjects": len(subjects),
        "subjects_with_boxes": int((subjects["n_boxes"] > 0).sum()),
        "boxes": len(box_df),
        "boxes_by_category": box_df["category"].value_counts().to_dict(),
        "duplicate_taps_dropped": n_taps,
        "centre_clusters_dropped": int(sum(n_centre.values())),
        "subjects_without_fwhm": int(subjects["fwhm_px"].isna().sum()),
    }
    return box_df, subjects[SUBJECT_COLUMNS], report
