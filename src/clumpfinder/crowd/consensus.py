"""Volunteer consensus: clicks -> boxes -> one box per clump, plus SWAP per subject.

Clicks become square boxes centred on the click whose side is the subject's PSF FWHM (image
pixels) times ``box_scale``, as Clump Scout did. Three ways to turn them into clumps (``method``):

* ``em`` (default): the Bayesian EM aggregation with volunteer skill (:mod:`clumpfinder.crowd.boxem`);
* ``dbscan``: per subject, DBSCAN on the clicks (radius in units of the FWHM, a minimum number of
  distinct volunteers that scales with how many classified the subject); the box is centred on the
  mean click;
* ``hdbscan``: per subject, HDBSCAN (``min_cluster_size``, ``min_samples``, excess-of-mass
  selection) with probability-weighted centres, as Zooniverse's ``point_reducer_hdbscan``.

The two clustering baselines weigh every click the same. For all three, clusters on the galaxy
centre (the bulge) are dropped and the class is the majority tool (for ``em`` also "odd" when
P(false positive) is high). Independently, SWAP (:mod:`clumpfinder.crowd.swap`) gives each subject a
posterior probability of having clumps and each volunteer a PL/PD; its vote is "marked anything",
or the answer to a yes/no question task (``swap.question``), in which case classifications without
an answer are no SWAP vote (counted in the report as ``classifications_without_answer``) but their
clicks still go to the boxes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
import sklearn
from sklearn.cluster import DBSCAN, HDBSCAN

from clumpfinder.io import known_fields
from clumpfinder.crowd.boxem import EMSpec, aggregate
from clumpfinder.data.subjects import injected_subjects
from clumpfinder.crowd.swap import SwapSpec, run_swap
from clumpfinder.data.zooniverse import ParsedExport, read_export

log = logging.getLogger(__name__)

METHODS = ("em", "dbscan", "hdbscan")
BOX_COLUMNS = ["subject_id", "x", "y", "side", "x1", "y1", "x2", "y2", "category", "n_votes",
               "n_classifications", "odd_fraction", "false_pos_prob", "inaccurate_prob", "width", "height"]
SUBJECT_COLUMNS = ["subject_id", "width", "height", "fwhm_px", "box_side", "n_classifications",
                   "n_clicks", "n_boxes", "n_centre_dropped", "n_false_sites_dropped", "swap_prob", "swap_n_used", "swap_retired",
                   "swap_retired_as", "swap_retired_at", "gold", "expected_false_pos", "expected_inaccurate",
                   "expected_missed", "risk", "finished"]
VOLUNTEER_COLUMNS = ["user", "n_classifications", "n_clicks", "swap_pl", "swap_pd", "swap_n_trained",
                     "p_fp", "p_fn", "variance", "susceptibility"]


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
        # the export's filters are read by zooniverse.read_export
        kw = known_fields(cls, cfg, "consensus", elsewhere=("task", "workflow_id", "min_workflow_version",
                                                            "shape_centres"))
        if kw["method"] not in METHODS:
            raise ValueError(f"consensus.method {kw['method']!r} is not one of {', '.join(METHODS)}")
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
    radius = clicks["subject_id"].map(side).to_numpy(float) * fraction
    cid = clicks["classification_id"].to_numpy()
    order = np.argsort(cid, kind="stable")
    starts = np.flatnonzero(np.r_[True, cid[order][1:] != cid[order][:-1], True])
    keep = _tap_keep(order, starts, clicks["x"].to_numpy(float), clicks["y"].to_numpy(float), radius)
    return clicks[keep].reset_index(drop=True), int((~keep).sum())


@numba.njit(cache=True)
def _tap_keep(order, starts, x, y, radius):  # pragma: no cover - compiled
    """Which clicks to keep: ``order[starts[g]:starts[g + 1]]`` are the clicks of one
    classification in click order; a click goes when an earlier kept click is closer than its
    ``radius`` (coordinates are finite: the parser drops other clicks). Compiled: a Clump Scout
    export has 1.7 M classifications to walk."""
    keep = np.ones(x.shape[0], np.bool_)
    for g in range(starts.shape[0] - 1):
        for a in range(starts[g] + 1, starts[g + 1]):
            i = order[a]
            for b in range(starts[g], a):
                j = order[b]
                if keep[j] and np.hypot(x[j] - x[i], y[j] - y[i]) < radius[i]:
                    keep[i] = False
                    break
    return keep


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


def _user_codes(cls: pd.DataFrame, clicks: pd.DataFrame) -> tuple[pd.Index, pd.DataFrame, pd.DataFrame]:
    """(sorted volunteer names, the two tables with each name replaced by its position there).

    The codes sort, group and merge as the names do, in a fraction of the time: a Clump Scout
    export has 1.7 M classifications and 3.5 M clicks, and every pass over them as strings took
    seconds. A click whose volunteer has no classification gets a code of its own past the
    others (the EM consensus rejects it, as it did the name).
    """
    codes, names = pd.factorize(cls["user"], sort=True)
    names = pd.Index(names)
    click_codes = names.get_indexer(clicks["user"])
    unknown = click_codes < 0
    if unknown.any():
        click_codes[unknown] = len(names) + pd.factorize(clicks["user"].to_numpy()[unknown], sort=True)[0]
    return names, cls.assign(user=codes), clicks.assign(user=click_codes)


def read_consensus_export(path, cfg: dict[str, Any], spec: ConsensusSpec, workers: int = 1) -> ParsedExport:
    """The export read with the ``consensus`` section's filters (task, workflow, shapes, question)."""
    return read_export(path, task=cfg["task"], workflow_id=cfg["workflow_id"],
                       min_workflow_version=cfg["min_workflow_version"], shape_centres=cfg["shape_centres"],
                       question=spec.swap.question, workers=workers)


def run_consensus(parsed: ParsedExport, spec: ConsensusSpec, gold: pd.Series | None = None) -> ConsensusResult:
    """Consensus boxes, subject and volunteer tables, and a report.

    ``gold``: subjects of known truth for supervised SWAP (1 = has clumps, 0 = none), indexed by
    subject_id; subjects not in the export are ignored.
    """
    if parsed.classifications.empty:
        raise ValueError("the export has no usable classifications; see the parse report for why rows were skipped")
    names, cls, clicks = _user_codes(parsed.classifications, parsed.clicks)
    subjects = subject_geometry(cls, spec)
    side = subjects.set_index("subject_id")["box_side"]
    clicks, n_taps = drop_duplicate_taps(clicks, side, spec.duplicate_tap_fraction)
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
        volunteers = volunteers.merge(skills[["user", "p_fp", "p_fn", "variance", "susceptibility"]], on="user",
                                      how="left")
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
    volunteers["user"] = names.take(volunteers["user"].to_numpy())
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
            "vote": "marked anything" if spec.swap.question is None else
                    f"question {spec.swap.question.task}: answer {spec.swap.question.yes!r}",
            **({} if spec.swap.question is None else
               {"classifications_without_answer": int((cls["question_answer"] < 0).sum())}),
            "retired_yes": int((subjects["swap_retired_as"] == "yes").sum()),
            "retired_no": int((subjects["swap_retired_as"] == "no").sum()),
            "classifications_used": int(subjects["swap_n_used"].sum()),
            "classifications": len(cls),
        },
        **extra,
    }
    return ConsensusResult(boxes.reset_index(drop=True), subjects, volunteers, report)


def gold_with_injected(gold: pd.Series | None,
                       subject_list: pd.DataFrame | None) -> tuple[pd.Series | None, dict[str, int]]:
    """SWAP's gold subjects: ``gold`` (``data.gold``, by subject_id) plus the injected-clump
    subjects of a real ``subject_list`` (origin 'sim', :func:`~clumpfinder.data.subjects.injected_subjects`)
    as has_clumps = 1. A subject in both keeps its ``data.gold`` value (the user's word wins).

    Injected subjects only ever say "has clumps", so in supervised SWAP they train PL, not PD;
    their clumps span a range of brightness (Adams et al. injected them to measure completeness),
    and one too faint to see makes a volunteer who saw nothing look worse than they are.
    Unsupervised SWAP learns from every subject and only records the gold flag.
    """
    counts = {"from_file": 0 if gold is None else len(gold), "injected": 0, "injected_also_in_file": 0}
    if subject_list is None:
        return gold, counts
    ids, _ = injected_subjects(subject_list)
    if not len(ids):
        return gold, counts
    given = pd.Series(dtype=np.int64) if gold is None else gold
    known = np.isin(ids, given.index.to_numpy())
    counts.update(injected=int((~known).sum()), injected_also_in_file=int(known.sum()))
    added = pd.Series(np.ones(int((~known).sum()), np.int64), index=ids[~known])
    return pd.concat([given.astype(np.int64), added]), counts
