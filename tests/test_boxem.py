"""EM box consensus on hand-built cases with known answers, and row-order invariance on an export."""

from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from clumpfinder.crowd.consensus import ConsensusSpec, run_consensus
from clumpfinder.data.zooniverse import ParsedExport, read_export
from test_consensus import parsed, spec_for


@pytest.fixture(scope="module")
def EM(default_config) -> ConsensusSpec:
    return spec_for(default_config, method="em")


def off_centre(rng):
    """A clump position away from the bulge (image centre)."""
    while True:
        x, y = rng.uniform(20, 80, 2)
        if np.hypot(x - 50, y - 50) > 10:
            return x, y


def many(images):
    """images: list of (n_volunteers, clicks) per subject; clicks as in ``parsed``."""
    parts = [parsed(clicks, n_volunteers=n, subject=k + 1) for k, (n, clicks) in enumerate(images)]
    offsets = np.cumsum([0] + [n for n, _ in images])  # classification ids unique across subjects
    cls = pd.concat([p.classifications.assign(classification_id=p.classifications["classification_id"] + o)
                     for p, o in zip(parts, offsets)], ignore_index=True)
    clicks = pd.concat([p.clicks.assign(classification_id=p.clicks["classification_id"] + o)
                        for p, o in zip(parts, offsets)], ignore_index=True)
    return ParsedExport(cls, clicks, {})


def test_three_agreeing_volunteers_make_one_clump(EM):
    r = run_consensus(parsed([(0, 30.0, 40.0, 0), (1, 31.0, 40.5, 0), (2, 29.5, 39.5, 0)]), EM)
    assert len(r.boxes) == 1
    b = r.boxes.iloc[0]
    assert b["x"] == pytest.approx(30.17, abs=0.05) and b["y"] == pytest.approx(40.0, abs=0.05)
    assert b["n_votes"] == 3 and b["category"] == "clump" and b["side"] == 8.0
    assert 0 <= b["false_pos_prob"] < 0.5 and 0 <= b["inaccurate_prob"] <= 1


def test_em_stops_at_a_fixed_point(EM):
    r = run_consensus(parsed([(0, 30.0, 40.0, 0), (1, 31.0, 40.5, 0), (2, 29.5, 39.5, 0)]), EM)
    em = r.report["em"]
    assert em["converged"] and em["reason"] == "fixed_point" and em["associations_changed"][-1] == 0
    assert em["result_iteration"] == em["iterations"] == len(em["cost"]) < EM.em.max_iterations


@pytest.mark.parametrize("costs, max_iterations, reason, kept, n_boxes", [
    ([10.0, 8.0, 9.0, 9.5], 10, "cost_stalled", 2, 1),  # two E steps dearer than the second: keep its clump
    ([10.0, 8.0, 9.0, 7.0, 8.0, 8.5], 10, "cost_stalled", 4, 1),  # one dearer step is not yet a stall
    ([10.0, 9.0, 8.0], 3, "max_iterations", 3, 0),  # still improving at the cap: keep the last
    ([1e4, 8e3, 9e3, 7999.99], 10, "cost_stalled", 4, 1),  # a cycle drifting down by < 1e-5 is no progress
])
def test_em_stops_when_the_association_cycles(EM, monkeypatch, costs, max_iterations, reason, kept, n_boxes):
    """The E and M steps optimise different objectives, so the association can cycle instead of
    settling: here every E step flips between one clump and none. The EM stops when two E steps
    in a row fail to lower the cost below its best, and keeps the cheapest association, with the
    skills it was found with."""
    from clumpfinder.crowd import boxem

    real, calls = boxem._associate, []

    def cycling(*args):
        fac, cost = real(*args)  # the first pass: one clump of the three boxes
        calls.append(fac)
        if len(calls) == 1:
            return fac, cost
        return (calls[0] if len(calls) % 2 else np.full_like(fac, -1)), np.array([costs[len(calls) - 2]])

    monkeypatch.setattr(boxem, "_associate", cycling)
    spec = dataclasses.replace(EM, em=dataclasses.replace(EM.em, max_iterations=max_iterations))
    r = run_consensus(parsed([(0, 30.0, 40.0, 0), (1, 31.0, 40.5, 0), (2, 29.5, 39.5, 0)]), spec)
    em = {k: v for k, v in r.report["em"].items() if k != "false_sites"}
    assert em == {"iterations": len(costs), "associations_changed": [3] * len(costs), "cost": costs,
                  "converged": False, "reason": reason, "result_iteration": kept}
    assert len(r.boxes) == n_boxes


def test_one_volunteers_two_clicks_never_merge(EM):
    # u0 marks the clump twice, 2.5 px apart (not a double tap: those are < 0.25 x 8 px)
    clicks = [(v, 30.0, 40.0, 0) for v in range(4)] + [(0, 32.5, 40.0, 0)]
    r = run_consensus(parsed(clicks), EM)
    assert len(r.boxes) == 1 and r.boxes.iloc[0]["n_votes"] == 4
    assert r.report["duplicate_taps_dropped"] == 0


def test_spammers_lone_clicks_are_false_positives(EM):
    rng = np.random.default_rng(0)
    images = []
    for _ in range(40):
        x, y = off_centre(rng)
        clicks = [(v, x + rng.normal(0, 0.4), y + rng.normal(0, 0.4), 0) for v in range(6)]
        clicks += [(7, *rng.uniform(5, 95, 2), 0) for _ in range(3)]  # u7 clicks anywhere
        images.append((8, clicks))
    r = run_consensus(many(images), EM)
    vol = r.volunteers.set_index("user")
    good = vol.loc[[f"u{v}" for v in range(6)]]
    assert vol.loc["u7", "p_fp"] > 0.15 and vol.loc["u7", "p_fp"] > 10 * good["p_fp"].max()
    assert vol.loc["u7", "p_fn"] > 0.5 > good["p_fn"].max()
    assert len(r.boxes) == 40 and (r.boxes["n_votes"] >= 6).all()
    # a lone spammer click is not taken for a clump the others missed
    assert r.subjects["expected_missed"].max() < 0.05
    assert (r.boxes["false_pos_prob"] < 1e-3).all()


def _few_of_many(n_marking: int):
    """30 subjects, each with one real clump that all ten volunteers mark; on subject 1,
    ``n_marking`` of the ten also mark a spot at (15, 85)."""
    rng = np.random.default_rng(1)
    images = []
    for k in range(30):
        x, y = off_centre(rng)
        clicks = [(v, x + rng.normal(0, 0.3), y + rng.normal(0, 0.3), 0) for v in range(10)]
        if k == 0:
            clicks += [(v, 15.0, 85.0, 0) for v in range(n_marking)]
        images.append((10, clicks))
    return many(images)


@pytest.mark.parametrize("n_marking, believed", [(3, False), (7, True)])
def test_clump_marked_by_few_of_many_reliable_volunteers_is_probably_false(EM, n_marking, believed):
    """Three of ten reliable volunteers mark a spot (enough votes to form a clump, min_votes = 3)
    while the seven others, who find the real clumps elsewhere, say nothing: the EM does not
    believe it (dropped, or kept as a probable false positive labelled 'odd'). Seven of ten: a clump."""
    assert EM.em.min_votes <= 3  # the spot has the votes to be a candidate: the EM, not the gate, decides
    r = run_consensus(_few_of_many(n_marking), EM)
    spot = r.boxes[(r.boxes["subject_id"] == 1) & (r.boxes["x"] < 20)]
    confident = spot[(spot["false_pos_prob"] < 0.01) & (spot["category"] == "clump")]
    assert len(confident) == (1 if believed else 0)
    assert ((spot["false_pos_prob"] > 0.7) & (spot["category"] == "odd_clump")).all() or believed
    assert len(r.boxes[r.boxes["x"] >= 20]) == 30  # the real clumps are all found either way


def _em_with(default_config, **em) -> ConsensusSpec:
    """The EM consensus of the default configuration with some ``consensus.em`` settings changed."""
    cfg = copy.deepcopy(default_config)
    cfg["consensus"]["em"].update(em)
    return spec_for(cfg, method="em")


def _agreeing(seed: int, n_subjects: int, n_volunteers: int, stray: float | None = None):
    """Subjects with one off-centre clump each that ``n_volunteers`` mark within ~0.3 px; with
    ``stray`` one more volunteer marks it ``stray`` px to the right."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_subjects):
        x, y = off_centre(rng)
        clicks = [(v, x + rng.normal(0, 0.3), y + rng.normal(0, 0.3), 0) for v in range(n_volunteers)]
        clicks += [(n_volunteers, x + stray, y, 0)] if stray is not None else []
        images.append((n_volunteers + (stray is not None), clicks))
    return many(images)


@pytest.mark.parametrize("min_votes, n_boxes", [(3, 0), (2, 20)])
def test_a_clump_needs_min_votes_volunteers(default_config, min_votes, n_boxes):
    """Two volunteers per subject agree on one clump in each of 20 subjects: below
    ``em.min_votes`` = 3 no box is made, at 2 every subject gets its box."""
    boxes = run_consensus(_agreeing(2, n_subjects=20, n_volunteers=2),
                          _em_with(default_config, min_votes=min_votes)).boxes
    assert len(boxes) == n_boxes


@pytest.mark.parametrize("area_fraction, joined", [(1e-3, False), (1.0, True)])
def test_where_false_boxes_fall_decides_whether_a_stray_box_joins(default_config, area_fraction, joined):
    """Nine volunteers mark each of 30 clumps tightly; a tenth puts its box 4.5 px (0.56 box
    sides) off. Whether that box is the tenth vote or a false positive depends on how likely a
    false box is to land on a clump at all (the E step's overlap term): false boxes spread over the
    whole image rarely do, so it joins; crowded into 0.1 % of the image they would, so it does not."""
    boxes = run_consensus(_agreeing(3, n_subjects=30, n_volunteers=9, stray=4.5),
                          _em_with(default_config, false_box_area_fraction=area_fraction)).boxes
    assert len(boxes) == 30 and set(boxes["n_votes"]) == ({10} if joined else {9})


def test_all_empty_subject_has_no_boxes_and_falling_swap(EM, default_config):
    # volunteers train on gold subjects (each with a clump), then all say "no" to subject 99
    images = [(6, [(v, 40.0, 40.0, 0) for v in range(6)]) for _ in range(10)] + [(6, [])] * 10
    p = many(images)
    p.classifications["created_at"] = [f"2020-01-01 00:{k // 60:02d}:{k % 60:02d} UTC" for k in range(len(p.classifications))]
    gold = pd.Series({k: int(k <= 10) for k in range(1, 20)})  # subject 20 is not gold
    cfg = dict(default_config["consensus"], method="em")
    spec = ConsensusSpec.from_config(cfg)
    r = run_consensus(p, spec, gold)
    s = r.subjects.set_index("subject_id").loc[20]
    assert s["n_boxes"] == 0 and s["risk"] == 0 and bool(s["finished"])
    assert s["swap_prob"] < spec.swap.prior / 10
    assert (r.boxes["subject_id"] <= 10).all()


def _shuffled_copy(src, dst, seed):
    with open(src, newline="") as fh:
        rows = list(csv.reader(fh))
    body = rows[1:]
    np.random.default_rng(seed).shuffle(body)
    with open(dst, "w", newline="") as fh:
        csv.writer(fh).writerows([rows[0]] + body)


@pytest.mark.parametrize("method", ["em", "dbscan"])
def test_results_do_not_depend_on_row_order(tiny_export, tiny_config, tmp_path, method):
    """The tiny export includes damaged rows (bad JSON, missing dimensions, clicks outside the
    image): they are counted, not fatal, and shuffling the rows changes nothing."""
    spec = ConsensusSpec.from_config(dict(tiny_config["consensus"], method=method))
    shuffled = tmp_path / "shuffled.csv"
    _shuffled_copy(tiny_export["path"], shuffled, 5)
    a_parsed = read_export(tiny_export["path"])
    b_parsed = read_export(shuffled, workers=2, chunk_bytes=50_000)  # and parsed in parallel chunks
    assert a_parsed.report["rows_skipped"] == b_parsed.report["rows_skipped"]
    assert sum(a_parsed.report["rows_skipped"].values()) > 0 and a_parsed.report["clicks_dropped"]
    a = run_consensus(a_parsed, spec, tiny_export["gold"])
    b = run_consensus(b_parsed, spec, tiny_export["gold"])
    key = ["subject_id", "x", "y"]
    pd.testing.assert_frame_equal(a.boxes.sort_values(key).reset_index(drop=True),
                                  b.boxes.sort_values(key).reset_index(drop=True))
    pd.testing.assert_frame_equal(a.subjects, b.subjects)
    pd.testing.assert_frame_equal(a.volunteers, b.volunteers)


def test_em_recovers_volunteer_skill_on_simulation(tiny_survey, tiny_config, tmp_path):
    """Estimated p_fp ranks spammers above careful volunteers (a tiny crowd with 15 % spammers)."""
    from clumpfinder.data.volunteers import CrowdSpec, gold_subjects, simulate_export

    crowd = CrowdSpec.from_config(dict(tiny_config["volunteers"], spammer_fraction=0.15))
    pop = simulate_export(crowd, tiny_survey["manifest"], tiny_survey["truth"], tmp_path / "export.csv")
    gold = gold_subjects(crowd, tiny_survey["manifest"], tiny_survey["truth"]).set_index("subject_id")["has_clumps"]
    spec = ConsensusSpec.from_config(dict(tiny_config["consensus"], method="em"))
    r = run_consensus(read_export(tmp_path / "export.csv"), spec, gold)
    pop = pop.assign(user=np.where(pop["logged_in"], "id:" + pop["user_id"].astype(str), "name:" + pop["user_name"]))
    est = r.volunteers.merge(pop[["user", "kind"]], on="user")
    est = est[est["n_classifications"] >= 5]
    assert (est["kind"] == "spammer").sum() >= 2  # the crowd has active spammers
    assert est.loc[est["kind"] == "spammer", "p_fp"].min() > est.loc[est["kind"] == "normal", "p_fp"].median()
    assert est["p_fp"].between(0, 1).all() and est["p_fn"].between(0, 1).all()


def test_no_clump_after_the_first_pass_is_not_an_error(EM):
    r = run_consensus(parsed([(0, 30.0, 40.0, 0)], n_volunteers=3), EM)
    assert r.boxes.empty and r.subjects.iloc[0]["n_boxes"] == 0
    assert r.subjects.iloc[0]["expected_missed"] > 0  # the lone click may be a clump the others missed


def _greedy_reference(n, nv, vol, cx, cy, side, dummy, conn_a, conn_b, open_cost, max_distance, min_votes):
    """The facility-location greedy of one image as first written: every candidate re-scored over
    every box in every round (the compiled version visits only the boxes that may join)."""
    def distance(dx, dy):
        ox, oy = side - abs(dx), side - abs(dy)
        if ox <= 0.0 or oy <= 0.0:
            return 1.0
        return 1.0 - ox * oy / (2.0 * side * side - ox * oy)

    def joining(j, c):
        d = distance(cx[j] - cx[c], cy[j] - cy[c])
        return math.inf if d >= max_distance else conn_b[j] * d * d + conn_a[j]

    cost = [[joining(j, c) for c in range(n)] for j in range(n)]
    cur, assign, is_open = list(dummy), [-1] * n, [False] * n

    def best(c):
        imp, box = [0.0] * nv, [-1] * nv
        for j in range(n):
            if cur[j] - cost[j][c] > imp[vol[j]]:
                imp[vol[j]], box[vol[j]] = cur[j] - cost[j][c], j
        return imp, box

    while True:
        g_best, c_best = 1e-9, -1
        for c in range(n):
            imp = best(c)[0] if not is_open[c] else []
            if sum(i > 0.0 for i in imp) < min_votes:
                continue
            total = 0.0
            for i in imp:  # in order, as the compiled sum
                total += i
            if total - open_cost > g_best:
                g_best, c_best = total - open_cost, c
        if c_best < 0:
            break
        is_open[c_best] = True
        for j in best(c_best)[1]:
            if j >= 0:
                cur[j], assign[j] = cost[j][c_best], c_best
    for c in range(n):
        members = [j for j in range(n) if is_open[c] and assign[j] == c]
        saving = -open_cost
        for j in members:
            saving += dummy[j] - cur[j]
        if is_open[c] and (saving <= 0.0 or len(members) < min_votes):
            for j in members:
                assign[j], cur[j] = -1, dummy[j]
    return assign, sum(cur) + open_cost * len(set(assign) - {-1})


@pytest.mark.parametrize("max_distance", [0.6, 1.0])
def test_compiled_association_matches_the_plain_greedy(max_distance):
    """Random images with clustered boxes and random costs: the compiled association (candidate
    lists, savings recomputed only when they can have changed) makes the very same choices."""
    from clumpfinder.crowd.boxem import _associate, _neighbours

    rng = np.random.default_rng(3)
    sizes = rng.integers(0, 40, 60)
    box_start = np.r_[0, np.cumsum(sizes)]
    n_views = rng.integers(3, 12, len(sizes))
    # boxes sorted by volunteer within an image, as _problem sorts them
    local_vol = np.concatenate([np.sort(rng.integers(0, v, n)) for n, v in zip(sizes, n_views)])
    centres = rng.uniform(10, 90, (len(sizes), 4, 2))
    pick = rng.integers(0, 4, box_start[-1])
    img = np.repeat(np.arange(len(sizes)), sizes)
    cx, cy = (centres[img, pick] + rng.normal(0, 2.0, (box_start[-1], 2))).T
    side = rng.uniform(6, 12, len(sizes))
    dummy, conn_a = rng.uniform(1, 5, box_start[-1]), rng.uniform(-2, 1, box_start[-1])
    conn_b, open_cost = rng.uniform(0.5, 20, box_start[-1]), rng.uniform(0, 12, len(sizes))
    nb_start, nb = _neighbours(box_start, cx, cy, side, 1.0)
    fac, cost = _associate(box_start, local_vol, cx, cy, side, nb_start, nb, dummy, conn_a, conn_b, open_cost,
                           max_distance, 3)
    opened = 0
    for i, (s, e) in enumerate(itertools.pairwise(box_start)):
        ref, ref_cost = _greedy_reference(e - s, n_views[i], local_vol[s:e], cx[s:e], cy[s:e], side[i], dummy[s:e],
                                          conn_a[s:e], conn_b[s:e], open_cost[i], max_distance, 3)
        assert fac[s:e].tolist() == [s + a if a >= 0 else -1 for a in ref], f"image {i}"
        assert cost[i] == pytest.approx(ref_cost, rel=1e-12)
        opened += len(set(ref) - {-1})
    assert opened > 30  # the case exercises opening (and closing) clumps
