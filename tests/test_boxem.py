"""EM box consensus on hand-built cases with known answers, and row-order invariance on an export."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from clumpfinder.consensus import ConsensusSpec, run_consensus
from clumpfinder.zooniverse import ParsedExport, read_export
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


def test_clump_marked_by_few_of_many_reliable_volunteers_is_probably_false(EM):
    """Two of ten volunteers mark a spot; the eight others, who find the real clumps elsewhere,
    say nothing: P(false positive) is high, and the clump becomes 'odd' if it is kept at all."""
    rng = np.random.default_rng(1)
    images = []
    for k in range(30):
        x, y = off_centre(rng)
        clicks = [(v, x + rng.normal(0, 0.3), y + rng.normal(0, 0.3), 0) for v in range(10)]
        if k == 0:
            clicks += [(v, 15.0, 85.0, 0) for v in (0, 1)]
        images.append((10, clicks))
    r = run_consensus(many(images), EM)
    odd_spot = r.boxes[(r.boxes["subject_id"] == 1) & (r.boxes["x"] < 20)]
    assert odd_spot.empty or (odd_spot["false_pos_prob"] > 0.7).all() and (odd_spot["category"] == "odd_clump").all()


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


def test_em_recovers_volunteer_skill_on_simulation(tiny_export, tiny_config):
    """Estimated p_fp ranks spammers above careful volunteers."""
    spec = ConsensusSpec.from_config(dict(tiny_config["consensus"], method="em"))
    r = run_consensus(read_export(tiny_export["path"]), spec, tiny_export["gold"])
    pop = tiny_export["population"]
    pop = pop.assign(user=np.where(pop["logged_in"], "id:" + pop["user_id"].astype(str), "name:" + pop["user_name"]))
    est = r.volunteers.merge(pop[["user", "kind"]], on="user")
    est = est[est["n_classifications"] >= 5]
    assert (est["kind"] == "spammer").any()  # the tiny crowd has active spammers
    assert est.loc[est["kind"] == "spammer", "p_fp"].min() > est.loc[est["kind"] == "normal", "p_fp"].median()
    assert est["p_fp"].between(0, 1).all() and est["p_fn"].between(0, 1).all()


def test_no_clump_after_the_first_pass_is_not_an_error(EM):
    r = run_consensus(parsed([(0, 30.0, 40.0, 0)], n_volunteers=3), EM)
    assert r.boxes.empty and r.subjects.iloc[0]["n_boxes"] == 0
    assert r.subjects.iloc[0]["expected_missed"] > 0  # the lone click may be a clump the others missed
