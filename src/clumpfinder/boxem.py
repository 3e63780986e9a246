"""EM box consensus with volunteer skill, after Branson, Van Horn & Perona (2017) as used by
Clump Scout (Dickinson et al. 2022).

Every click is a square box (side = PSF FWHM x ``box_scale``). On each image the boxes are
associated with true clumps by solving a facility-location problem: boxes are "cities", candidate
clumps are placed at the boxes ("facilities"), and a dummy facility stands for "false positive".
Two boxes of one volunteer never join the same clump. With d = 1 - IoU between a box and a clump,
the costs are negative log-likelihoods:

* opening a clump: ``-sum_w ln p_fn,w`` over every volunteer who saw the image (all missed it);
* a box joining a clump: ``0.5 d^2 / s^2 + 0.5 ln s^2 + ln[p_fn / ((1 - p_fp)(1 - p_fn))] + 0.5 ln 2 pi``
  (turns that volunteer's miss into a hit at distance d);
* a box on the dummy: ``-ln p_fp``.

A clump needs boxes of at least ``min_votes`` volunteers in every pass (with few volunteers per
image, two chance coincidences of false clicks on the galaxy would otherwise pay for a clump).
The first pass has no skills yet: a clump costs ``init.open_fraction`` x (number of volunteers),
joining costs 0 when d < ``init.max_distance`` (else forbidden) and the dummy costs 1. The problem
is solved per image by greedy facility opening (open the candidate with the largest saving, move
each volunteer's best box to it, repeat; then close clumps that no longer pay for themselves).

The M step re-estimates, with Beta / inverse-chi-squared priors as pseudo-counts: per volunteer
p_fp (false boxes / boxes), p_fn (clumps missed / clumps on images seen) and s^2 (squared distance
of their boxes to the consensus); per image a difficulty s^2. A box's s^2 is the mean of its
volunteer's and its image's. The consensus box is the inverse-variance-weighted mean of its
members. E and M steps alternate until the association stops changing (or ``max_iterations``).

Per clump: P(false positive) from the marking (M) and non-marking (X) volunteers,
``prod_M p_fp prod_X (1 - p_fn) / [that + prod_M (1 - p_fp) prod_X p_fn]``, and
P(inaccurate) = erfc(accuracy x sqrt(0.5 sum_M 1/s^2)). Per image: expected false positives,
inaccurate boxes and missed clumps (unassociated boxes weighted by the chance that they are real),
a risk and a finished flag. Clusters on the galaxy centre (the bulge) are not clumps: they are
dropped, and their boxes count as false positives when skills are estimated.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
from scipy.special import erfc

log = logging.getLogger(__name__)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
LOG_2 = math.log(2.0)


@dataclass(frozen=True)
class EMSpec:
    """The ``consensus.em`` section of the configuration."""

    max_iterations: int
    min_votes: int
    false_box_area_fraction: float
    init: dict[str, float]
    prior: dict[str, float]
    accuracy: float
    odd_false_pos_threshold: float
    finished: dict[str, float]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "EMSpec":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__})


@numba.njit(cache=True)
def _iou_distance(dx: float, dy: float, side: float) -> float:  # pragma: no cover - compiled
    """1 - IoU of two squares of equal ``side`` whose centres differ by (dx, dy)."""
    ox = side - abs(dx)
    oy = side - abs(dy)
    if ox <= 0.0 or oy <= 0.0:
        return 1.0
    inter = ox * oy
    return 1.0 - inter / (2.0 * side * side - inter)


@numba.njit(parallel=True, cache=True)
def _associate(box_start, view_start, local_vol, cx, cy, side, dummy, conn_a, conn_b, open_cost,
               max_distance, min_votes):  # pragma: no cover - compiled
    """Greedy facility location per image; returns each box's clump (the index of the box the
    clump was opened at) or -1 for the dummy (false positive). A clump needs boxes of at least
    ``min_votes`` volunteers."""
    n_img = box_start.shape[0] - 1
    fac = np.full(cx.shape[0], -1, np.int64)
    for i in numba.prange(n_img):
        s, e = box_start[i], box_start[i + 1]
        n = e - s
        if n == 0:
            continue
        nv = view_start[i + 1] - view_start[i]
        cost = np.empty((n, n))
        for j in range(n):
            for c in range(n):
                d = _iou_distance(cx[s + j] - cx[s + c], cy[s + j] - cy[s + c], side[i])
                if d >= max_distance:
                    cost[j, c] = np.inf
                else:
                    cost[j, c] = conn_b[s + j] * d * d + conn_a[s + j]
        cur = dummy[s:e].copy()
        assign = np.full(n, -1, np.int64)
        is_open = np.zeros(n, np.bool_)
        best_imp = np.zeros(nv)
        best_box = np.full(nv, -1, np.int64)
        while True:
            g_best = 1e-9
            c_best = -1
            for c in range(n):
                if is_open[c]:
                    continue
                best_imp[:] = 0.0
                for j in range(n):
                    imp = cur[j] - cost[j, c]
                    v = local_vol[s + j]
                    if imp > best_imp[v]:
                        best_imp[v] = imp
                if (best_imp > 0.0).sum() < min_votes:
                    continue
                g = best_imp.sum() - open_cost[i]
                if g > g_best:
                    g_best = g
                    c_best = c
            if c_best < 0:
                break
            best_imp[:] = 0.0
            best_box[:] = -1
            for j in range(n):
                imp = cur[j] - cost[j, c_best]
                v = local_vol[s + j]
                if imp > best_imp[v]:
                    best_imp[v] = imp
                    best_box[v] = j
            is_open[c_best] = True
            for v in range(nv):
                j = best_box[v]
                if j >= 0:
                    cur[j] = cost[j, c_best]
                    assign[j] = c_best
        # a clump that lost members to later ones may no longer pay for itself
        for c in range(n):
            if not is_open[c]:
                continue
            saving = -open_cost[i]
            members = 0
            for j in range(n):
                if assign[j] == c:
                    saving += dummy[s + j] - cur[j]
                    members += 1
            if saving <= 0.0 or members < min_votes:
                is_open[c] = False
                for j in range(n):
                    if assign[j] == c:
                        assign[j] = -1
                        cur[j] = dummy[s + j]
        for j in range(n):
            if assign[j] >= 0:
                fac[s + j] = s + assign[j]
    return fac


@dataclass
class _Problem:
    """Boxes and views (who saw which image) as sorted arrays with per-image offsets."""

    subject_ids: np.ndarray  # per image
    width: np.ndarray
    height: np.ndarray
    side: np.ndarray
    centre_radius: np.ndarray
    users: np.ndarray  # per volunteer
    view_img: np.ndarray  # per (image, volunteer) view, sorted by image then volunteer
    view_vol: np.ndarray
    view_start: np.ndarray
    box_img: np.ndarray  # per box, sorted by image, volunteer, x, y
    box_vol: np.ndarray
    local_vol: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    tool: np.ndarray
    box_start: np.ndarray


def _problem(subjects: pd.DataFrame, classifications: pd.DataFrame, clicks: pd.DataFrame) -> _Problem:
    subjects = subjects.sort_values("subject_id")
    sids = subjects["subject_id"].to_numpy(np.int64)
    users = np.asarray(sorted(classifications["user"].unique()), dtype=object)
    vol_of = pd.Index(users)
    view_img = np.searchsorted(sids, classifications["subject_id"].to_numpy(np.int64))
    view_vol = vol_of.get_indexer(classifications["user"])
    order = np.lexsort((view_vol, view_img))
    view_img, view_vol = view_img[order], view_vol[order]
    view_start = np.searchsorted(view_img, np.arange(len(sids) + 1))
    box_img = np.searchsorted(sids, clicks["subject_id"].to_numpy(np.int64))
    box_vol = vol_of.get_indexer(clicks["user"])
    if (box_vol < 0).any() or (sids[np.minimum(box_img, len(sids) - 1)] != clicks["subject_id"].to_numpy()).any():
        raise ValueError("clicks refer to classifications that are not in the classification table")
    x, y = clicks["x"].to_numpy(float), clicks["y"].to_numpy(float)
    order = np.lexsort((y, x, box_vol, box_img))  # deterministic whatever the row order
    box_img, box_vol, x, y = box_img[order], box_vol[order], x[order], y[order]
    tool = clicks["tool"].to_numpy(np.int64)[order]
    # position of the box's volunteer among the image's viewers
    keys = view_img.astype(np.int64) * len(users) + view_vol
    local = np.searchsorted(keys, box_img.astype(np.int64) * len(users) + box_vol) - view_start[box_img]
    return _Problem(
        subject_ids=sids, width=subjects["width"].to_numpy(float), height=subjects["height"].to_numpy(float),
        side=subjects["box_side"].to_numpy(float), centre_radius=subjects["centre_radius"].to_numpy(float),
        users=users, view_img=view_img, view_vol=view_vol,
        view_start=view_start, box_img=box_img, box_vol=box_vol, local_vol=local.astype(np.int64), cx=x, cy=y,
        tool=tool, box_start=np.searchsorted(box_img, np.arange(len(sids) + 1)),
    )


def _centres(pb: _Problem, fac: np.ndarray, var_box: np.ndarray):
    """Facility ids per box (-1 = dummy) and inverse-variance-weighted consensus centres."""
    member = fac >= 0
    fid = np.full(len(fac), -1, np.int64)
    opened, fid[member] = np.unique(fac[member], return_inverse=True)
    w = 1.0 / var_box[member]
    wsum = np.bincount(fid[member], w, len(opened))
    fx = np.bincount(fid[member], w * pb.cx[member], len(opened)) / wsum
    fy = np.bincount(fid[member], w * pb.cy[member], len(opened)) / wsum
    return fid, pb.box_img[opened], fx, fy


def _distance_to(pb: _Problem, fid: np.ndarray, f_img: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """1 - IoU of each member box with its consensus box (NaN for unassociated boxes)."""
    d = np.full(len(fid), np.nan)
    m = fid >= 0
    side = pb.side[f_img[fid[m]]]
    ox = np.clip(side - np.abs(pb.cx[m] - fx[fid[m]]), 0, None)
    oy = np.clip(side - np.abs(pb.cy[m] - fy[fid[m]]), 0, None)
    inter = ox * oy
    d[m] = 1.0 - inter / (2 * side**2 - inter)
    return d


def aggregate(
    subjects: pd.DataFrame, classifications: pd.DataFrame, clicks: pd.DataFrame, spec: EMSpec,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Run the EM consensus.

    ``subjects``: subject_id, width, height, box_side, centre_radius (bulge, pixels);
    ``classifications``: subject_id, user (one row per volunteer and subject); ``clicks``:
    subject_id, user, x, y, tool.

    Returns (clumps, per image, per volunteer, info). Clumps have subject_id, x, y, side, the
    box corners, category, n_votes (multiplicity), odd_fraction, false_pos_prob,
    inaccurate_prob.
    """
    pb = _problem(subjects, classifications, clicks)
    pr = spec.prior
    n_img, n_vol = len(pb.subject_ids), len(pb.users)
    views_per_img = np.diff(pb.view_start)
    # first pass: no skills yet
    fac = _associate(
        pb.box_start, pb.view_start, pb.local_vol, pb.cx, pb.cy, pb.side, np.ones(len(pb.cx)),
        np.zeros(len(pb.cx)), np.zeros(len(pb.cx)),
        spec.init["open_fraction"] * views_per_img, spec.init["max_distance"], spec.min_votes,
    )
    p_fp = np.full(n_vol, pr["false_pos"])
    p_fn = np.full(n_vol, pr["false_neg"])
    var_vol = np.full(n_vol, pr["variance"])
    var_img = np.full(n_img, pr["image_variance"])
    r_centre = pb.centre_radius
    # a false box lands anywhere on the part of the image where false boxes fall: it overlaps a
    # given clump's box (distance d < 1) with probability ~ (2 side)^2 / (area fraction x width x height)
    area = spec.false_box_area_fraction * pb.width * pb.height
    log_overlap = np.log(np.minimum(1.0, 4.0 * pb.side**2 / area))
    history = []
    iteration = 0
    for iteration in range(1, spec.max_iterations + 1):
        # M step: skills from the current association
        var_box = 0.5 * (var_vol[pb.box_vol] + var_img[pb.box_img])
        fid, f_img, fx, fy = _centres(pb, fac, var_box)
        centre = np.hypot(fx - pb.width[f_img] / 2, fy - pb.height[f_img] / 2) < r_centre[f_img]
        real = fid >= 0
        real[real] = ~centre[fid[real]]
        d = _distance_to(pb, fid, f_img, fx, fy)
        n_boxes = np.bincount(pb.box_vol, minlength=n_vol)
        n_real = np.bincount(pb.box_vol, real.astype(float), n_vol)
        p_fp = (pr["false_pos"] * pr["false_pos_count"] + n_boxes - n_real) / (pr["false_pos_count"] + n_boxes)
        clumps_per_img = np.bincount(f_img[~centre], minlength=n_img)
        chances = np.bincount(pb.view_vol, clumps_per_img[pb.view_img], n_vol)
        p_fn = (pr["false_neg"] * pr["false_neg_count"] + chances - n_real) / (pr["false_neg_count"] + chances)
        d2 = np.where(real, d, 0.0) ** 2
        var_vol = (pr["variance"] * pr["variance_count"] + np.bincount(pb.box_vol, d2, n_vol)) / (
            pr["variance_count"] + n_real)
        var_img = (pr["image_variance"] * pr["image_variance_count"] + np.bincount(pb.box_img, d2, n_img)) / (
            pr["image_variance_count"] + np.bincount(pb.box_img, real.astype(float), n_img))
        # E step: re-associate with the new costs
        var_box = 0.5 * (var_vol[pb.box_vol] + var_img[pb.box_img])
        fp_b, fn_b = p_fp[pb.box_vol], p_fn[pb.box_vol]
        conn_a = (0.5 * np.log(var_box) + np.log(fn_b / ((1 - fp_b) * (1 - fn_b))) + HALF_LOG_2PI - LOG_2
                  + log_overlap[pb.box_img])
        open_cost = -np.bincount(pb.view_img, np.log(p_fn[pb.view_vol]), n_img)
        new = _associate(pb.box_start, pb.view_start, pb.local_vol, pb.cx, pb.cy, pb.side, -np.log(fp_b),
                         conn_a, 0.5 / var_box, open_cost, 1.0, spec.min_votes)
        changed = int((new != fac).sum())
        history.append(changed)
        fac = new
        log.info("EM iteration %d: %d box associations changed", iteration, changed)
        if changed == 0:
            break
    clumps, images = _summaries(pb, fac, p_fp, p_fn, var_vol, var_img, spec, r_centre)
    vol = pd.DataFrame({
        "user": pb.users, "n_subjects": np.bincount(pb.view_vol, minlength=n_vol),
        "n_boxes": np.bincount(pb.box_vol, minlength=n_vol), "p_fp": p_fp, "p_fn": p_fn, "variance": var_vol,
    })
    info = {"iterations": iteration, "associations_changed": history, "converged": bool(history and history[-1] == 0)}
    return clumps, images, vol, info


def _summaries(pb: _Problem, fac, p_fp, p_fn, var_vol, var_img, spec: EMSpec, r_centre):
    n_img = len(pb.subject_ids)
    var_box = 0.5 * (var_vol[pb.box_vol] + var_img[pb.box_img])
    fid, f_img, fx, fy = _centres(pb, fac, var_box)
    n_fac = len(f_img)
    member = fid >= 0
    # log-likelihood terms of every viewer of an image, and of the members of each clump
    ln_fp, ln_tp = np.log(p_fp), np.log1p(-p_fp)
    ln_fn, ln_hit = np.log(p_fn), np.log1p(-p_fn)
    img_hit = np.bincount(pb.view_img, ln_hit[pb.view_vol], n_img)  # sum over viewers of ln(1 - p_fn)
    img_fn = np.bincount(pb.view_img, ln_fn[pb.view_vol], n_img)
    v = pb.box_vol[member]
    m_fp = np.bincount(fid[member], ln_fp[v], n_fac)
    m_tp = np.bincount(fid[member], ln_tp[v], n_fac)
    m_hit = np.bincount(fid[member], ln_hit[v], n_fac)
    m_fn = np.bincount(fid[member], ln_fn[v], n_fac)
    # X = viewers who did not mark the clump
    a = m_fp + (img_hit[f_img] - m_hit)  # clump is false: members' boxes false, the rest rightly silent
    b = m_tp + (img_fn[f_img] - m_fn)  # clump is real: members hit it, the rest missed it
    p_false = 1.0 / (1.0 + np.exp(np.clip(b - a, -700, 700)))
    inv_var = np.bincount(fid[member], 1.0 / var_box[member], n_fac)
    p_inacc = erfc(spec.accuracy * np.sqrt(0.5 * inv_var))
    mult = np.bincount(fid[member], minlength=n_fac)
    odd = np.bincount(fid[member], pb.tool[member].astype(float), n_fac) / np.maximum(mult, 1)
    centre = np.hypot(fx - pb.width[f_img] / 2, fy - pb.height[f_img] / 2) < r_centre[f_img]
    # an unassociated box is a missed clump with the probability that a one-volunteer clump is real
    lone = ~member & (np.hypot(pb.cx - pb.width[pb.box_img] / 2, pb.cy - pb.height[pb.box_img] / 2)
                      >= r_centre[pb.box_img])
    vb = pb.box_vol[lone]
    ib = pb.box_img[lone]
    a1 = ln_fp[vb] + img_hit[ib] - ln_hit[vb]
    b1 = ln_tp[vb] + img_fn[ib] - ln_fn[vb]
    p_real_lone = 1.0 / (1.0 + np.exp(np.clip(a1 - b1, -700, 700)))
    keep = ~centre
    exp_fp = np.bincount(f_img[keep], p_false[keep], n_img)
    exp_inacc = np.bincount(f_img[keep], p_inacc[keep], n_img)
    exp_fn = np.bincount(ib, p_real_lone, n_img)
    risk = np.bincount(f_img[keep], (p_false + p_inacc * (2.0 - p_false))[keep], n_img) + exp_fn
    fin = spec.finished
    images = pd.DataFrame({
        "subject_id": pb.subject_ids,
        "n_volunteers": np.diff(pb.view_start),
        "n_clumps": np.bincount(f_img[keep], minlength=n_img),
        "n_centre_dropped": np.bincount(f_img[centre], minlength=n_img),
        "expected_false_pos": exp_fp, "expected_inaccurate": exp_inacc, "expected_missed": exp_fn,
        "risk": risk,
    })
    images["finished"] = (
        (images["risk"] < fin["max_risk"]) & (exp_fp < fin["max_expected"]) & (exp_fn < fin["max_expected"])
        & (exp_inacc < fin["max_expected"])
    )
    side = pb.side[f_img]
    w, h = pb.width[f_img], pb.height[f_img]
    clumps = pd.DataFrame({
        "subject_id": pb.subject_ids[f_img], "x": fx, "y": fy, "side": side,
        "x1": np.maximum(0.0, fx - side / 2), "y1": np.maximum(0.0, fy - side / 2),
        "x2": np.minimum(w, fx + side / 2), "y2": np.minimum(h, fy + side / 2),
        "category": np.where((odd > 0.5) | (p_false > spec.odd_false_pos_threshold), "odd_clump", "clump"),
        "n_votes": mult, "odd_fraction": odd, "false_pos_prob": p_false, "inaccurate_prob": p_inacc,
        "width": w, "height": h,
    })[keep].reset_index(drop=True)
    return clumps, images
