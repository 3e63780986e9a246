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
each volunteer's best box to it, repeat; then close clumps that no longer pay for themselves),
compiled, visiting for each candidate only the boxes that overlap it (found once per run).

The M step re-estimates, with Beta / inverse-chi-squared priors as pseudo-counts: per volunteer
p_fp (false boxes / boxes), p_fn (clumps missed / clumps on images seen) and s^2 (squared distance
of their boxes to the consensus); per image a difficulty s^2. A box's s^2 is the mean of its
volunteer's and its image's. The consensus box is the inverse-variance-weighted mean of its
members. E and M steps alternate until the association stops changing, or, as Clump Scout
iterated "until the likelihood stops improving", until two E steps in a row fail to lower the
total cost of the association (the negative log-likelihood the E step minimises) below its best
by more than ``COST_TOLERANCE`` (a relative 1e-5: two associations that cycle differ by less);
the cheapest association is kept, with the skills it was found with. ``max_iterations`` caps the
loop, and the report gives the reason it stopped and the cost of every iteration.

The association need not reach a fixed point: the M step measures a box's distance to the
weighted consensus centre and leaves out bulge clusters, the E step measures it to the box a clump
is opened at, so the two steps optimise different objectives and can settle into a cycle: on two
simulated exports (2,000 and 85,286 subjects) 0.6 % of the images kept flipping between
associations they had had before, over 30 and 40 iterations, while the cost stayed within 0.15 %
of its best; on a third the association reached a fixed point after one rise of the cost.

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

from clumpfinder.io import known_fields
from clumpfinder.crowd.sites import SiteSpec, false_sites

log = logging.getLogger(__name__)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
LOG_2 = math.log(2.0)
#: the EM stops when this many E steps in a row fail to lower the cost below its best (one rise
#: can be followed by a fixed point; a cycle never lowers it again)
STALL_ITERATIONS = 2
#: an E step lowers the cost only if it lowers it by more than this fraction of the best (a
#: two-association cycle whose cost drifts down by ~5e-7 per turn does not count as progress)
COST_TOLERANCE = 1e-5


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
    false_sites: SiteSpec

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "EMSpec":
        kw = known_fields(cls, cfg, "consensus.em")
        kw["false_sites"] = SiteSpec.from_config(cfg["false_sites"])
        return cls(**kw)


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
def _neighbour_lists(box_start, cx, cy, side, max_distance, start, out):  # pragma: no cover - compiled
    """Per box c, the boxes j of its image with d(j, c) < ``max_distance`` (image-local indices,
    increasing), written to ``out[start[c]:start[c + 1]]``; with ``out`` empty, only counts them
    into ``start[c + 1]``. d is symmetric, so each pair is measured once."""
    for i in numba.prange(box_start.shape[0] - 1):
        s, e = box_start[i], box_start[i + 1]
        pos = start[s:e].copy()
        for c in range(s, e):
            for j in range(c, e):
                if _iou_distance(cx[j] - cx[c], cy[j] - cy[c], side[i]) >= max_distance:
                    continue
                if out.shape[0] == 0:
                    start[c + 1] += 1
                    if j > c:
                        start[j + 1] += 1
                else:
                    out[pos[c - s]] = j - s
                    pos[c - s] += 1
                    if j > c:  # lists fill in increasing order: c < j arrives before j's own entries
                        out[pos[j - s]] = c - s
                        pos[j - s] += 1


def _neighbours(box_start: np.ndarray, cx: np.ndarray, cy: np.ndarray, side: np.ndarray,
                max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists (start, local index) of the boxes that may join a clump opened at each box.

    The boxes do not move between EM iterations, so the lists are found once: every other box
    would join at infinite cost and the greedy search need not visit it. On a Clump Scout export
    about 30 % of the pairs in an image overlap at all.
    """
    start = np.zeros(len(cx) + 1, np.int64)
    _neighbour_lists(box_start, cx, cy, side, max_distance, start, np.empty(0, np.int32))
    np.cumsum(start, out=start)
    out = np.empty(start[-1], np.int32)
    _neighbour_lists(box_start, cx, cy, side, max_distance, start, out)
    return start, out


@numba.njit(cache=True)
def _saving(c, start, box, cost, cur, vol):  # pragma: no cover - compiled
    """(sum over volunteers of their best box's improvement if clump c opens, number of such
    volunteers). The boxes that may join come in increasing j, so a volunteer's boxes are
    consecutive and volunteers increase (boxes are sorted by volunteer): one pass sums them in
    the order of a sum over all volunteers."""
    total = 0.0
    count = 0
    best = 0.0
    v_cur = -1
    for k in range(start[c], start[c + 1]):
        v = vol[box[k]]
        if v != v_cur:
            if best > 0.0:
                total += best
                count += 1
            best = 0.0
            v_cur = v
        best = max(best, cur[box[k]] - cost[k])  # not NaN: keeps best, as a strict > would
    if best > 0.0:
        total += best
        count += 1
    return total, count


@numba.njit(cache=True)
def _greedy(vol, cost, start, box, dummy, open_cost, min_votes):  # pragma: no cover - compiled
    """Greedy facility location on one image (arrays local to it; ``cost[k]``: box ``box[k]``
    joining the clump at the box whose list holds k); returns (each box's clump, i.e. the local
    index of the box it was opened at, or -1; the total cost).

    A candidate's saving depends only on the current cost of the boxes that may join it, so it
    is recomputed only after one of them moved (``stale``); and as boxes only ever move to
    cheaper clumps, savings only shrink: a candidate that cannot win now never will (``dead``).
    The choices are those of re-scoring every candidate in every round, in a fraction of the time.
    """
    n = dummy.shape[0]
    cur = dummy.copy()
    assign = np.full(n, -1, np.int64)
    is_open = np.zeros(n, np.bool_)
    dead = np.zeros(n, np.bool_)
    stale = np.ones(n, np.bool_)
    gain = np.zeros(n)
    while True:
        g_best = 1e-9
        c_best = -1
        for c in range(n):
            if is_open[c] or dead[c]:
                continue
            if stale[c]:
                total, voters = _saving(c, start, box, cost, cur, vol)
                gain[c] = total - open_cost
                dead[c] = voters < min_votes or not gain[c] > 1e-9
                stale[c] = False
            if not dead[c] and gain[c] > g_best:
                g_best = gain[c]
                c_best = c
        if c_best < 0:
            break
        is_open[c_best] = True
        # each volunteer's best box moves to the new clump (volunteers in turn, as in _saving)
        best = 0.0
        k_best = -1
        v_cur = -1
        for k in range(start[c_best], start[c_best + 1] + 1):
            v = vol[box[k]] if k < start[c_best + 1] else -1
            if v != v_cur:
                if k_best >= 0:
                    j = box[k_best]
                    cur[j] = cost[k_best]
                    assign[j] = c_best
                    for k2 in range(start[j], start[j + 1]):
                        stale[box[k2]] = True
                best = 0.0
                k_best = -1
                v_cur = v
            if k < start[c_best + 1] and cur[box[k]] - cost[k] > best:
                best = cur[box[k]] - cost[k]
                k_best = k
    # a clump that lost members to later ones may no longer pay for itself
    total = 0.0
    for c in range(n):
        if not is_open[c]:
            continue
        saving = -open_cost
        members = 0
        for k in range(start[c], start[c + 1]):
            if assign[box[k]] == c:
                saving += dummy[box[k]] - cur[box[k]]
                members += 1
        if saving <= 0.0 or members < min_votes:
            for k in range(start[c], start[c + 1]):
                j = box[k]
                if assign[j] == c:
                    assign[j] = -1
                    cur[j] = dummy[j]
        else:
            total += open_cost
    for j in range(n):
        total += cur[j]
    return assign, total


@numba.njit(parallel=True, cache=True)
def _associate(box_start, local_vol, cx, cy, side, nb_start, nb, dummy, conn_a, conn_b, open_cost, max_distance,
               min_votes):  # pragma: no cover - compiled
    """Greedy facility location per image; returns (each box's clump, i.e. the index of the box
    the clump was opened at, or -1 for the dummy (false positive); each image's total cost, the
    negative log-likelihood the E step minimises). A clump needs boxes of at least ``min_votes``
    volunteers; ``nb_start``/``nb``: :func:`_neighbours` for at least ``max_distance``."""
    n_img = box_start.shape[0] - 1
    fac = np.full(cx.shape[0], -1, np.int64)
    img_cost = np.zeros(n_img)
    for i in numba.prange(n_img):
        s, e = box_start[i], box_start[i + 1]
        if e == s:
            continue
        # the pairs closer than max_distance (the others would join at infinite cost), with their cost
        start = np.zeros(e - s + 1, np.int64)
        box = np.empty(nb_start[e] - nb_start[s], np.int64)
        cost = np.empty(box.shape[0])
        k = 0
        for c in range(e - s):
            for j in nb[nb_start[s + c]:nb_start[s + c + 1]]:
                d = _iou_distance(cx[s + j] - cx[s + c], cy[s + j] - cy[s + c], side[i])
                if not d >= max_distance:
                    box[k] = j
                    cost[k] = conn_b[s + j] * d * d + conn_a[s + j]
                    k += 1
            start[c + 1] = k
        assign, img_cost[i] = _greedy(local_vol[s:e], cost, start, box, dummy[s:e], open_cost[i], min_votes)
        for j in range(e - s):
            if assign[j] >= 0:
                fac[s + j] = s + assign[j]
    return fac, img_cost


def _by_image_and_volunteer(img: np.ndarray, vol: np.ndarray, n_img: int, n_vol: int) -> np.ndarray:
    """Positions sorted by image, then volunteer, ties in input order (a stable argsort of
    img x n_vol + vol): two counting sorts, linear where a comparison sort of 3.5 M boxes took
    most of a second."""
    return _counting_sort(_counting_sort(np.arange(len(img)), vol, n_vol), img, n_img)


@numba.njit(cache=True)
def _counting_sort(order, key, n_keys):  # pragma: no cover - compiled
    """``order`` stably sorted by ``key[order]`` (integers in [0, n_keys))."""
    start = np.zeros(n_keys + 1, np.int64)
    for i in order:
        start[key[i] + 1] += 1
    start = np.cumsum(start)
    out = np.empty_like(order)
    for i in order:
        out[start[key[i]]] = i
        start[key[i]] += 1
    return out


@numba.njit(cache=True)
def _sort_runs(order, key, x, y):  # pragma: no cover - compiled
    """Sort each run of equal ``key[order]`` by (x, y), keeping the order of ties: an insertion
    sort, as a run is one volunteer's boxes on one image (coordinates are finite)."""
    start = 0
    for i in range(1, order.shape[0] + 1):
        if i < order.shape[0] and key[order[i]] == key[order[start]]:
            continue
        for a in range(start + 1, i):
            o = order[a]
            b = a - 1
            while b >= start and (x[order[b]] > x[o] or (x[order[b]] == x[o] and y[order[b]] > y[o])):
                order[b + 1] = order[b]
                b -= 1
            order[b + 1] = o
        start = i
    return order


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

    def on_bulge(self, x: np.ndarray, y: np.ndarray, img: np.ndarray) -> np.ndarray:
        """Which positions (x, y) in images ``img`` lie within the image's bulge radius of its centre."""
        return np.hypot(x - self.width[img] / 2, y - self.height[img] / 2) < self.centre_radius[img]


def _problem(subjects: pd.DataFrame, classifications: pd.DataFrame, clicks: pd.DataFrame) -> _Problem:
    subjects = subjects.sort_values("subject_id")
    sids = subjects["subject_id"].to_numpy(np.int64)
    view_vol, users = pd.factorize(classifications["user"], sort=True)
    img_of = pd.Index(sids)
    view_img = img_of.get_indexer(classifications["subject_id"].to_numpy(np.int64))
    if (view_img < 0).any() or (view_vol < 0).any():
        raise ValueError("classifications refer to subjects missing from the subject table, or to no volunteer")
    order = _by_image_and_volunteer(view_img, view_vol, len(sids), len(users))
    view_img, view_vol = view_img[order], view_vol[order]
    view_start = np.searchsorted(view_img, np.arange(len(sids) + 1))
    box_img = img_of.get_indexer(clicks["subject_id"].to_numpy(np.int64))
    box_vol = pd.Index(users).get_indexer(clicks["user"])
    if (box_vol < 0).any() or (box_img < 0).any():
        raise ValueError("clicks refer to classifications that are not in the classification table")
    x, y = clicks["x"].to_numpy(float), clicks["y"].to_numpy(float)
    # by image, volunteer, x, y (as np.lexsort, in a fraction of its time): deterministic whatever the row order
    order = _sort_runs(_by_image_and_volunteer(box_img, box_vol, len(sids), len(users)),
                       box_img.astype(np.int64) * len(users) + box_vol, x, y)
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
    fid, opened, fx, fy = _weighted_centres(fac, var_box, pb.cx, pb.cy)
    return fid, pb.box_img[opened], fx, fy


@numba.njit(cache=True)
def _weighted_centres(fac, var_box, cx, cy):  # pragma: no cover - compiled
    """(clump id per box or -1, the boxes the clumps were opened at, their inverse-variance-
    weighted centres): one pass that sums in box order, as np.bincount does (the numpy version
    took a third of a second per EM iteration on Clump Scout)."""
    n = fac.shape[0]
    before = np.zeros(n + 1, np.int64)  # before[b]: clumps opened at boxes < b
    for j in range(n):
        if fac[j] >= 0:
            before[fac[j] + 1] = 1
    before = np.cumsum(before)
    opened = np.flatnonzero(before[1:] > before[:-1])
    fid = np.full(n, -1, np.int64)
    wsum = np.zeros(opened.shape[0])
    sx = np.zeros(opened.shape[0])
    sy = np.zeros(opened.shape[0])
    for j in range(n):
        if fac[j] >= 0:
            f = before[fac[j]]
            fid[j] = f
            w = 1.0 / var_box[j]
            wsum[f] += w
            sx[f] += w * cx[j]
            sy[f] += w * cy[j]
    return fid, opened, sx / wsum, sy / wsum


def _distance_to(pb: _Problem, fid: np.ndarray, f_img: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """1 - IoU of each member box with its consensus box (NaN for unassociated boxes)."""
    return _member_distance(fid, pb.side[f_img], fx, fy, pb.cx, pb.cy)


@numba.njit(cache=True)
def _member_distance(fid, f_side, fx, fy, cx, cy):  # pragma: no cover - compiled
    """_distance_to in one pass (the masked numpy version made a dozen copies of 3.5 M boxes)."""
    d = np.full(fid.shape[0], np.nan)
    for j in range(fid.shape[0]):
        f = fid[j]
        if f >= 0:
            ox = max(f_side[f] - abs(cx[j] - fx[f]), 0.0)
            oy = max(f_side[f] - abs(cy[j] - fy[f]), 0.0)
            inter = ox * oy
            d[j] = 1.0 - inter / (2 * (f_side[f] * f_side[f]) - inter)
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
    inaccurate_prob. Info: per E step the box associations changed and the cost; converged (a
    fixed point), reason (fixed_point, cost_stalled or max_iterations) and result_iteration
    (the E step whose association, with its skills, the results come from).
    """
    pb = _problem(subjects, classifications, clicks)
    pr = spec.prior
    n_img, n_vol = len(pb.subject_ids), len(pb.users)
    views_per_img = np.diff(pb.view_start)
    # first pass: no skills yet
    nb_start, nb = _neighbours(pb.box_start, pb.cx, pb.cy, pb.side, max(spec.init["max_distance"], 1.0))
    fac, _ = _associate(
        pb.box_start, pb.local_vol, pb.cx, pb.cy, pb.side, nb_start, nb, np.ones(len(pb.cx)),
        np.zeros(len(pb.cx)), np.zeros(len(pb.cx)),
        spec.init["open_fraction"] * views_per_img, spec.init["max_distance"], spec.min_votes,
    )
    p_fp = np.full(n_vol, pr["false_pos"])
    p_fn = np.full(n_vol, pr["false_neg"])
    var_vol = np.full(n_vol, pr["variance"])
    var_img = np.full(n_img, pr["image_variance"])
    # a false box lands anywhere on the part of the image where false boxes fall: it overlaps a
    # given clump's box (distance d < 1) with probability ~ (2 side)^2 / (area fraction x width x height)
    area = spec.false_box_area_fraction * pb.width * pb.height
    log_overlap = np.log(np.minimum(1.0, 4.0 * pb.side**2 / area))
    history: list[int] = []
    costs: list[float] = []
    reason, kept, last_gain = "max_iterations", 0, 0
    best = None  # the cheapest association so far, with the skills it was found with
    for iteration in range(1, spec.max_iterations + 1):
        # M step: skills from the current association
        var_box = 0.5 * (var_vol[pb.box_vol] + var_img[pb.box_img])
        fid, f_img, fx, fy = _centres(pb, fac, var_box)
        centre = pb.on_bulge(fx, fy, f_img)
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
        new, img_cost = _associate(pb.box_start, pb.local_vol, pb.cx, pb.cy, pb.side, nb_start, nb, -np.log(fp_b),
                                   conn_a, 0.5 / var_box, open_cost, 1.0, spec.min_votes)
        changed = int((new != fac).sum())
        history.append(changed)
        costs.append(float(img_cost.sum()))
        log.info("EM iteration %d: %d box associations changed, cost %.2f", iteration, changed, costs[-1])
        fac = new
        if changed == 0:
            reason, kept = "fixed_point", iteration
            break
        if best is None or costs[-1] < costs[best[0] - 1]:
            if best is None or costs[-1] < costs[best[0] - 1] - COST_TOLERANCE * abs(costs[best[0] - 1]):
                last_gain = iteration
            best = (iteration, fac, p_fp, p_fn, var_vol, var_img)
        if iteration - last_gain >= STALL_ITERATIONS:
            reason = "cost_stalled"
            break
    if reason != "fixed_point" and best is not None:
        kept, fac, p_fp, p_fn, var_vol, var_img = best
    clumps, images, sites = _summaries(pb, fac, p_fp, p_fn, var_vol, var_img, spec)
    vol = pd.DataFrame({
        "user": pb.users, "n_subjects": np.bincount(pb.view_vol, minlength=n_vol),
        "n_boxes": np.bincount(pb.box_vol, minlength=n_vol), "p_fp": p_fp, "p_fn": p_fn, "variance": var_vol,
        "susceptibility": sites["susceptibility"] if sites else np.nan,
    })
    info = {"iterations": len(history), "associations_changed": history, "cost": [round(c, 3) for c in costs],
            "converged": reason == "fixed_point", "reason": reason, "result_iteration": kept}
    if sites:
        info["false_sites"] = {"iterations": sites["iterations"], "converged": sites["converged"],
                               "rate": round(sites["rate"], 4), "dropped": sites["dropped"]}
    return clumps, images, vol, info


def _summaries(pb: _Problem, fac, p_fp, p_fn, var_vol, var_img, spec: EMSpec):
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
    centre = pb.on_bulge(fx, fy, f_img)
    # an unassociated box is a missed clump with the probability that a one-volunteer clump is real
    lone = ~member & ~pb.on_bulge(pb.cx, pb.cy, pb.box_img)
    vb = pb.box_vol[lone]
    ib = pb.box_img[lone]
    a1 = ln_fp[vb] + img_hit[ib] - ln_hit[vb]
    b1 = ln_tp[vb] + img_fn[ib] - ln_fn[vb]
    p_real_lone = 1.0 / (1.0 + np.exp(np.clip(a1 - b1, -700, 700)))
    keep = ~centre
    sites: dict[str, Any] = {}
    if spec.false_sites.enabled:
        # correlated errors: is each (non-bulge) clump real, or a spot several volunteers err on together?
        index = np.cumsum(keep) - 1
        m = member.copy()
        m[member] = keep[fid[member]]
        sites = false_sites(f_img[keep], index[fid[m]], pb.box_vol[m], pb.view_img, pb.view_vol, n_img,
                            len(pb.users), spec.false_sites)
        p_site = np.zeros(n_fac)
        p_site[keep] = sites["p_site"]
        p_false = 1.0 - (1.0 - p_false) * (1.0 - p_site)  # false by either error
        dropped = keep & (p_site > spec.false_sites.drop_above)
        sites["dropped"] = int(dropped.sum())
        n_sites = np.bincount(f_img[dropped], minlength=n_img)
        keep = keep & ~dropped
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
        "n_false_sites_dropped": n_sites if sites else 0,
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
    return clumps, images, sites
