"""Correlated false positives: is a consensus clump real, or a spot that fools several volunteers at once?

The EM box consensus (:mod:`clumpfinder.crowd.boxem`) treats each volunteer's false boxes as
independent: five volunteers marking the same empty spot is then astronomically unlikely, so any
spot that several of them mark becomes a clump with a tiny P(false positive). Real crowds err
together: a knot below the giant-clump definition that stands out, a bright patch of a spiral arm,
a foreground star taken for a clump, or a group of volunteers who mark the same thing everywhere.
This layer looks at the clumps the association found and asks, for each, whether it is a real
clump or a *false site*, learning from the whole crowd as Dawid & Skene (1979) do for labels:

* per volunteer, ``miss`` = P(does not mark it | a real clump on an image they saw) and
  ``susceptibility`` = P(marks it | a false site on an image they saw);
* the share of clumps that are false sites, ``rate``.

E step, for a clump with markers M and silent viewers X (who saw the image but did not mark it):

    log-odds(real) = ln[(1 - rate) / rate] + sum_M ln[(1 - miss) / susceptibility]
                     + sum_X ln[miss / (1 - susceptibility)]

M step: each rate is a weighted count (by P(real) or P(false site)) with a Beta prior of
pseudo-counts. The start is the share of viewers who marked the clump (a majority vote), which
lets a group that marks what the others never mark show up as susceptible: the colluders of the
benchmark, or the few volunteers who mark faint knots. A clump seen by most of a competent crowd
stays real however few of its markers are skilled; a spot marked by the same small group on every
image becomes a false site, and that group's susceptibility is learned.

What this cannot do: a knot that most volunteers notice looks like a clump to all of them, and
nothing in the clicks tells it apart (only photometry can, as Adams et al. 2022 cut on flux).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clumpfinder.io import known_fields


@dataclass(frozen=True)
class SiteSpec:
    """The ``consensus.em.false_sites`` section of the configuration."""

    enabled: bool
    rate: dict[str, float]
    miss: dict[str, float]
    susceptibility: dict[str, float]
    drop_above: float
    max_iterations: int
    tolerance: float

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "SiteSpec":
        return cls(**known_fields(cls, cfg, "consensus.em.false_sites"))


def _beta(count: np.ndarray, total: np.ndarray, prior: dict[str, float]) -> np.ndarray:
    """(prior mean x prior count + count) / (prior count + total), kept inside (0, 1)."""
    p = (prior["mean"] * prior["count"] + count) / (prior["count"] + total)
    return np.clip(p, 1e-6, 1 - 1e-6)


def false_sites(clump_img: np.ndarray, member_clump: np.ndarray, member_vol: np.ndarray, view_img: np.ndarray,
                view_vol: np.ndarray, n_img: int, n_vol: int, spec: SiteSpec) -> dict[str, Any]:
    """P(false site) of every clump and the crowd's rates.

    ``clump_img``: the image of each clump; ``member_clump``, ``member_vol``: one pair per
    (clump, volunteer who marked it), each pair once; ``view_img``, ``view_vol``: one pair per
    (image, volunteer who saw it), each pair once. Returns ``p_site`` per clump, ``miss`` and
    ``susceptibility`` per volunteer, the ``rate``, the number of iterations and whether the
    largest change of a clump's probability fell below ``tolerance``."""
    n_clumps = len(clump_img)
    viewers = np.bincount(view_img, minlength=n_img).astype(float)
    marked = np.bincount(member_clump, minlength=n_clumps).astype(float)
    p_real = marked / np.maximum(viewers[clump_img], 1.0)  # the majority-vote start
    out: dict[str, Any] = {"iterations": 0, "converged": n_clumps == 0}
    miss = np.full(n_vol, spec.miss["mean"])
    sus = np.full(n_vol, spec.susceptibility["mean"])
    rate = spec.rate["mean"]
    for iteration in range(1, spec.max_iterations + 1):
        # M step: every volunteer's rates from the clumps on the images they saw
        real_per_img = np.bincount(clump_img, p_real, n_img)
        site_per_img = np.bincount(clump_img, 1.0 - p_real, n_img)
        real_seen = np.bincount(view_vol, real_per_img[view_img], n_vol)
        site_seen = np.bincount(view_vol, site_per_img[view_img], n_vol)
        real_marked = np.bincount(member_vol, p_real[member_clump], n_vol)
        site_marked = np.bincount(member_vol, 1.0 - p_real[member_clump], n_vol)
        miss = _beta(real_seen - real_marked, real_seen, spec.miss)
        sus = _beta(site_marked, site_seen, spec.susceptibility)
        rate = float(_beta(np.array(n_clumps - p_real.sum()), np.array(float(n_clumps)), spec.rate))
        # E step
        mark = np.log1p(-miss) - np.log(sus)  # a marker's vote for "real"
        silent = np.log(miss) - np.log1p(-sus)  # a silent viewer's vote for "real"
        silent_img = np.bincount(view_img, silent[view_vol], n_img)
        logit = (np.log1p(-rate) - np.log(rate) + np.bincount(member_clump, mark[member_vol], n_clumps)
                 + silent_img[clump_img] - np.bincount(member_clump, silent[member_vol], n_clumps))
        new = 1.0 / (1.0 + np.exp(-np.clip(logit, -700, 700)))
        change = float(np.max(np.abs(new - p_real))) if n_clumps else 0.0
        p_real = new
        out["iterations"] = iteration
        if change < spec.tolerance:
            out["converged"] = True
            break
    out.update(p_site=1.0 - p_real, miss=miss, susceptibility=sus, rate=rate)
    return out
