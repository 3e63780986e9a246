"""The false-site layer: clumps that a group of volunteers marks together where the rest see nothing."""

from __future__ import annotations

import numpy as np
import pytest

from clumpfinder.crowd.sites import SiteSpec, false_sites

SPEC = SiteSpec(enabled=True, rate={"mean": 0.2, "count": 10}, miss={"mean": 0.3, "count": 10},
                susceptibility={"mean": 0.05, "count": 20}, drop_above=0.5, max_iterations=200, tolerance=1e-6)


def crowd(n_img=300, honest=45, per_img=15, colluders=5, hit=0.75, seed=0):
    """Every image: 15 of 45 honest volunteers and all 5 colluders; 1-2 real clumps that each
    viewer marks with probability ``hit``; one spot that every colluder marks and nobody else."""
    rng = np.random.default_rng(seed)
    clump_img, is_spot, members, views = [], [], [], []
    for i in range(n_img):
        viewers = list(rng.choice(honest, per_img, replace=False)) + list(range(honest, honest + colluders))
        views += [(i, v) for v in viewers]
        for _ in range(rng.integers(1, 3)):
            c = len(clump_img)
            clump_img.append(i)
            is_spot.append(False)
            members += [(c, v) for v in viewers if rng.uniform() < hit]
        c = len(clump_img)
        clump_img.append(i)
        is_spot.append(True)
        members += [(c, v) for v in range(honest, honest + colluders)]
    m, v = np.array(members).T, np.array(views).T
    return np.array(clump_img), np.array(is_spot), m, v, n_img, honest + colluders


def test_colluders_shared_spot_is_a_false_site_and_their_susceptibility_is_learnt():
    clump_img, is_spot, m, v, n_img, n_vol = crowd()
    out = false_sites(clump_img, m[0], m[1], v[0], v[1], n_img, n_vol, SPEC)
    assert out["converged"]
    assert (out["p_site"][is_spot] > 0.99).mean() > 0.98
    assert (out["p_site"][~is_spot] < 0.01).mean() > 0.98
    assert out["susceptibility"][45:].min() > 0.9 and out["susceptibility"][:45].max() < 0.05
    assert out["miss"][:45].mean() == pytest.approx(0.25, abs=0.02)  # honest volunteers miss 1 in 4
    assert np.abs(out["miss"][:45] - 0.25).max() < 0.1
    assert out["rate"] == pytest.approx(is_spot.mean(), abs=0.02)


def test_a_clump_most_viewers_mark_stays_real_whoever_marks_it():
    """Without a susceptible group the layer leaves real clumps alone, even those that only just
    over half of the viewers mark, and a spot that 2 of 20 mark at random is a false site."""
    rng = np.random.default_rng(1)
    n_img, n_vol = 400, 60
    clump_img, members, views, weak, lone = [], [], [], [], []
    for i in range(n_img):
        viewers = rng.choice(n_vol, 20, replace=False)
        views += [(i, w) for w in viewers]
        for hit, kind in ((0.8, "strong"), (0.55, "weak"), (0.1, "lone")):
            c = len(clump_img)
            clump_img.append(i)
            marked = [w for w in viewers if rng.uniform() < hit]
            members += [(c, w) for w in marked]
            weak.append(kind == "weak")
            lone.append(kind == "lone")
    m, v = np.array(members).T, np.array(views).T
    out = false_sites(np.array(clump_img), m[0], m[1], v[0], v[1], n_img, n_vol, SPEC)
    p = out["p_site"]
    weak, lone = np.array(weak), np.array(lone)
    assert (p[~weak & ~lone] < 0.01).all()
    assert (p[weak] < 0.5).mean() > 0.9
    assert (p[lone] > 0.5).mean() > 0.9


def test_no_clumps():
    out = false_sites(np.array([], int), np.array([], int), np.array([], int), np.array([0, 0]), np.array([0, 1]),
                      1, 2, SPEC)
    assert out["converged"] and len(out["p_site"]) == 0 and len(out["miss"]) == 2
