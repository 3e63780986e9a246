"""The partnership replay: time order, retirement, the machine agent, effort curves and shares.

The small exports here are built so that the retirement order and the machine's effect can be
worked out by hand: SWAP agents with PL = PD = 0.9 that (with a huge skepticism) never move,
prior 0.3, rejection threshold 0.004. Each "no" multiplies the odds by 1/9: P = 0.3 -> 0.0455
-> 0.00526 -> 0.000587, so a subject nobody marks is rejected by its third "no" and not before.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from clumpfinder.crowd.consensus import ConsensusSpec
from clumpfinder.data.zooniverse import classification_row, read_export, write_export
from clumpfinder.partnership.effort import TruthScorer, effort, skills
from clumpfinder.partnership.machine import MachineAgent, held_out
from clumpfinder.partnership.replay import (MACHINE_USER, PartnershipSpec, Point, ReplayResult, arrival_times,
                                            replay, retirable)

WORKFLOW = {"id": 1, "name": "w", "version": "1.0"}
A, B, C = 11, 22, 33  # nobody marks A; everybody marks B's clump; C gets one scattered click from each


def _consensus(default_config) -> ConsensusSpec:
    cfg = copy.deepcopy(default_config["consensus"])
    cfg["swap"].update(mode="unsupervised", prior=0.3, initial_pl=0.9, initial_pd=0.9, skepticism=1e9,
                       detection_threshold=0.99, rejection_threshold=0.004)
    cfg["em"]["false_sites"]["enabled"] = False
    return ConsensusSpec.from_config(cfg)


def _spec(default_config, **override) -> PartnershipSpec:
    cfg = copy.deepcopy(default_config["partnership"])
    cfg.update(check_every=1, min_humans=3, score_every=1, finished={"max_risk": 10.0, "max_expected": 10.0})
    for key, value in override.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return PartnershipSpec.from_config(cfg)


def _row(cid: int, subject: int, user: int, second: int, marks, created_at: str | None = None) -> dict:
    return classification_row(
        classification_id=cid, user_name=f"u{user}", user_id=user + 1, user_ip="x", workflow=WORKFLOW,
        created_at=created_at if created_at is not None else f"2020-01-01 00:{second // 60:02d}:{second % 60:02d} UTC", started_at="a",
        finished_at="b", subject_id=subject, subject_meta={"#fwhm_pixels": 4.0}, width=100, height=100, marks=marks)


def _marks(subject: int, k: int) -> list:
    if subject == B:
        return [(30.0, 40.0, 0)]
    if subject == C:
        return [(10.0 + 15 * k, 80.0 - 12 * k, 0)]  # far apart: never three in one place
    return []


def _export(tmp_path, order=(A, B, C), per_subject: int = 5, extra: list | None = None):
    """Volunteers 0..per_subject-1 classify each subject; the subjects take turns in ``order``."""
    rows, cid, t = [], 1000, 0
    for k in range(per_subject):
        for s in order:
            rows.append(_row(cid, s, k, t, _marks(s, k)))
            cid, t = cid + 1, t + 1
    rows += extra or []
    path = tmp_path / "export.csv"
    write_export(rows, path)
    return read_export(path)


def test_arrival_times_read_zooniverse_and_iso_and_count_the_bad():
    cls = pd.DataFrame({
        "classification_id": [1, 2, 3, 4, 5, 6],
        "created_at": ["2020-01-01 00:00:05 UTC", "2020-01-01T00:00:07.250Z", "yesterday", None,
                       "2020-01-01 00:00:01 UTC", "2020-01-01 00:00:09+00:00"],
    })
    times, report = arrival_times(cls)
    assert times[0] == pd.Timestamp("2020-01-01 00:00:05", tz="UTC")
    assert times[1] == pd.Timestamp("2020-01-01 00:00:07.25", tz="UTC")
    assert times[5] == pd.Timestamp("2020-01-01 00:00:09", tz="UTC")
    assert times[[2, 3]].isna().all()
    assert report["unparseable_time"] == 2
    assert [e["classification_id"] for e in report["unparseable_examples"]] == [3, 4]
    # id 5 was made before ids 1 and 2 (Zooniverse numbers classifications as they arrive)
    assert report["out_of_order"] == 1
    assert report["first"].startswith("2020-01-01T00:00:01") and report["last"].startswith("2020-01-01T00:00:09")


def test_retirement_by_hand(tmp_path, default_config):
    """A retires on its third "no" (SWAP rejects it, no box), B on its third click on one spot
    (an EM clump needs 3 volunteers), C never (scattered clicks: no box, and SWAP hears "yes");
    the 2 later classifications of A and of B are not used."""
    parsed = _export(tmp_path)
    consensus = _consensus(default_config)
    spec = _spec(default_config)
    res = replay(parsed, consensus, spec, "retirement")
    sub = res.subjects.set_index("subject_id")
    assert sub.loc[A, "retired_as"] == "none" and sub.loc[A, "retired_after"] == 3
    assert sub.loc[B, "retired_as"] == "clumps" and sub.loc[B, "retired_after"] == 3
    assert not sub.loc[C, "retired"] and sub.loc[C, "n_used"] == 5
    assert sub["n_arrived"].tolist() == [5, 5, 5]
    assert res.report["human_classifications_used"] == 11 and res.report["classifications_not_used"] == 4
    # A's third classification is arrival 7 (A, B, C take turns), B's arrival 8: the checks after them
    decided = [(p.arrivals, p.subjects_decided) for p in res.points]
    assert (6, 0) in decided and (7, 1) in decided and (8, 2) in decided
    assert len(res.consensus.boxes) == 1 and int(res.consensus.boxes["subject_id"].iloc[0]) == B
    # fixed: nothing retires, every classification is used
    fixed = replay(parsed, consensus, spec, "fixed")
    assert fixed.report["human_classifications_used"] == 15 and fixed.report["subjects_retired"] == 0
    assert fixed.points[-1].subjects_decided == 3


def test_min_humans_and_check_interval_delay_retirement(tmp_path, default_config):
    parsed = _export(tmp_path)
    consensus = _consensus(default_config)
    res = replay(parsed, consensus, _spec(default_config, min_humans=4), "retirement")
    sub = res.subjects.set_index("subject_id")
    assert sub.loc[A, "retired_after"] == 4 and sub.loc[B, "retired_after"] == 4
    # checks every 6 arrivals: A and B have 4 classifications at the second check (arrival 12)
    res = replay(parsed, consensus, _spec(default_config, check_every=6), "retirement")
    sub = res.subjects.set_index("subject_id")
    assert sub.loc[A, "retired_after"] == 4 and sub.loc[B, "retired_after"] == 4
    assert res.report["human_classifications_used"] == 13


class ScriptedMachine:
    """A machine agent whose votes are known in advance: it marks nothing on ``quiet`` subjects
    (the way a detector that sees no clump votes) and sits out until ``start_round``."""

    def __init__(self, quiet, start_round=1):
        self.quiet, self.start_round, self.calls = quiet, start_round, []

    def __call__(self, consensus, retired, active, when, round_no):
        self.calls.append((round_no, sorted(int(s) for s in retired), sorted(int(s) for s in active)))
        if round_no < self.start_round:
            return None
        ids = [s for s in self.quiet if s in set(int(a) for a in active)]
        cls = pd.DataFrame({"classification_id": -np.arange(1, len(ids) + 1) - 100 * round_no, "subject_id": ids,
                            "user": MACHINE_USER, "logged_in": True, "n_marks": 0, "width": 100.0,
                            "height": 100.0, "fwhm_px": 4.0, "workflow_version": "machine", "created_at": when,
                            "question_answer": np.int8(-1)})
        clicks = pd.DataFrame({"classification_id": pd.Series([], dtype=np.int64), "subject_id": pd.Series([], dtype=np.int64),
                               "user": pd.Series([], dtype=object), "x": pd.Series([], dtype=float),
                               "y": pd.Series([], dtype=float), "tool": pd.Series([], dtype=np.int64)})
        return cls, clicks, {"classified": len(ids)}


def test_the_machine_saves_a_classification_by_hand(tmp_path, default_config):
    """With min_humans 2, A needs three "no" votes: three humans alone, or two humans and the
    machine's "no" (its PL = PD = 0.9 like the humans'). The machine's first round comes after the
    first used classification; it never retires a subject by itself (min_humans)."""
    parsed = _export(tmp_path)
    consensus = _consensus(default_config)
    spec = _spec(default_config, min_humans=2, machine={"every": 1})
    alone = replay(parsed, consensus, spec, "retirement")
    assert alone.subjects.set_index("subject_id").loc[A, "retired_after"] == 3
    agent = ScriptedMachine(quiet=[A])
    res = replay(parsed, consensus, spec, "machine", machine=agent)
    sub = res.subjects.set_index("subject_id")
    assert sub.loc[A, "retired_after"] == 2 and sub.loc[A, "retired_as"] == "none"
    assert sub.loc[B, "retired_after"] == 3  # the machine said nothing about B
    assert res.report["human_classifications_used"] == alone.report["human_classifications_used"] - 1
    # the machine's latest vote replaced its earlier ones: one machine classification of A
    machine_rows = res.consensus.volunteers.set_index("user").loc[MACHINE_USER]
    assert machine_rows["n_classifications"] == 1
    # it was asked every round, with the queue as it stood: A left the queue after its retirement
    assert agent.calls[0][2] == [A, B, C] and all(A not in active for *_, active in agent.calls[5:])
    # its vote counts once however many rounds repeat it: with min_humans 1, A still needs two
    # humans (two of their "no" and one of the machine's; the machine's votes of every round,
    # added up, would have rejected it after one)
    res = replay(parsed, consensus, _spec(default_config, min_humans=1, machine={"every": 1}), "machine",
                 machine=ScriptedMachine(quiet=[A]))
    assert res.subjects.set_index("subject_id").loc[A, "retired_after"] == 2


def test_bad_times_are_counted_not_fatal(tmp_path, default_config):
    extra = [_row(5000, A, 9, 0, [], created_at="not a time"), _row(5001, B, 9, 0, [], created_at="")]
    parsed = _export(tmp_path, extra=extra)
    res = replay(parsed, _consensus(default_config), _spec(default_config), "fixed")
    assert res.report["times"]["unparseable_time"] == 2
    assert res.report["classifications_replayed"] == 15


def test_replay_refuses_what_it_cannot_do(tmp_path, default_config):
    parsed = _export(tmp_path)
    consensus = _consensus(default_config)
    spec = _spec(default_config)
    with pytest.raises(ValueError, match="strategy 'machine' needs a machine agent"):
        replay(parsed, consensus, spec, "machine")
    cfg = copy.deepcopy(default_config["consensus"])
    cfg["method"] = "dbscan"
    with pytest.raises(ValueError, match="consensus.method must be 'em'"):
        replay(parsed, ConsensusSpec.from_config(cfg), spec, "retirement")
    with pytest.raises(ValueError, match="unknown strategy"):
        replay(parsed, consensus, spec, "oracle")
    bad = copy.deepcopy(default_config["partnership"])
    bad["machine"]["validation_fraction"] = 1.5
    with pytest.raises(ValueError, match="validation_fraction"):
        PartnershipSpec.from_config(bad)


def test_retirable_needs_a_box_or_a_rejection():
    subjects = pd.DataFrame({"subject_id": [1, 2, 3, 4], "swap_prob": [0.001, 0.5, 0.5, 0.001],
                             "n_boxes": [0, 1, 0, 1], "risk": [0.0, 0.2, 0.0, 0.9],
                             "expected_false_pos": [0.0, 0.1, 0.0, 0.1], "expected_inaccurate": [0.0, 0.05, 0.0, 0.1],
                             "expected_missed": [0.0, 0.0, 0.0, 0.1]})
    spec = type("S", (), {"swap": type("W", (), {"rejection_threshold": 0.004})()})()
    humans = pd.Series([3, 3, 3, 3], index=[1, 2, 3, 4])
    got = retirable(subjects, humans, spec, 3, {"max_risk": 0.5, "max_expected": 0.15})
    # 1: rejected, no box; 2: a finished box; 3: no box and SWAP undecided; 4: risk too high
    assert got.tolist() == [True, True, False, False]
    assert not retirable(subjects, humans - 1, spec, 3, {"max_risk": 0.5, "max_expected": 0.15}).any()


def _result(name, humans, f1_counts, decided):
    points = [Point(arrivals=h, human_classifications=h, subjects_seen=2, subjects_decided=d, machine_rounds=0,
                    time="t", score={"f1": 2 * tp.sum() / (tp.sum() + fp.sum() + n.sum()), "completeness": 0.0,
                                     "purity": 0.0, "tp": tp, "fp": fp, "n_gt": n})
              for h, (tp, fp, n), d in zip(humans, f1_counts, decided)]
    return ReplayResult(name, points, None, pd.DataFrame(),
                        [], {"retired_as": {"clumps": 0, "none": 0}})


def _three_strategies() -> dict[str, ReplayResult]:
    """Two subjects with one true clump each. Fixed: 10, then 20 classifications, F1 2/3 then 1;
    retirement the same F1 at 6 and 12; machine F1 2/3 at 5 and 8."""
    n = np.array([1, 1])
    half = (np.array([1, 0]), np.array([0, 0]), n)  # one of two found: F1 = 2/3
    full = (np.array([1, 1]), np.array([0, 0]), n)
    return {"fixed": _result("fixed", [10, 20], [half, full], [1, 2]),
            "retirement": _result("retirement", [6, 12], [half, full], [1, 2]),
            "machine": _result("machine", [5, 8], [half, half], [2, 2])}


def test_effort_shares_by_hand():
    """Retirement reaches the fixed strategy's F1 of 1 at 12 of its 20 classifications: share 0.6.
    The machine strategy, stopping at F1 2/3, never does (see _three_strategies)."""
    results = _three_strategies()
    curves, summary = effort(results, 2, 0.0, {"n": 50, "seed": 0, "level": 0.9})
    assert summary["fixed_human_classifications"] == 20
    assert summary["target_f1"] == pytest.approx(1.0)
    assert summary["human_share_retirement"] == pytest.approx(0.6)
    assert summary["human_share_machine"] is None
    assert summary["strategies"]["machine"]["reached_in_resamples"] < 1.0
    assert curves.loc[curves["strategy"] == "retirement", "share_of_fixed"].tolist() == [0.3, 0.6]
    assert curves["decided_share"].max() == 1.0
    machine = summary["strategies"]["machine"]
    assert machine["f1_minus_fixed"] == pytest.approx(2 / 3 - 1)
    assert machine["f1_minus_fixed_interval"][1] <= 0
    # with a tolerance of 1/3 the machine's F1 of 2/3 reaches it at its first point
    _, summary = effort(results, 2, 1 / 3 + 1e-9, {"n": 50, "seed": 0, "level": 0.9})
    assert summary["human_share_machine"] == pytest.approx(5 / 20)


def test_truth_scorer_scales_boxes_to_the_image():
    truth = {"images": [{"id": 1, "width": 50, "height": 50, "file_name": "1.png"}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 5, 5], "area": 25,
                              "iscrowd": 0}],
             "categories": [{"id": 1, "name": "clump"}, {"id": 2, "name": "odd_clump"}]}
    consensus = type("R", (), {})()
    consensus.subjects = pd.DataFrame({"subject_id": [1], "width": [100.0], "height": [100.0]})
    consensus.boxes = pd.DataFrame({"subject_id": [1, 1], "x1": [20.0, 60.0], "y1": [20.0, 60.0], "x2": [30.0, 70.0],
                                    "y2": [30.0, 70.0], "category": ["clump", "odd_clump"]})
    s = TruthScorer(truth, 0.5)(consensus)
    assert s["tp"].tolist() == [1] and s["fp"].tolist() == [1] and s["f1"] == pytest.approx(2 / 3)


def test_skills_put_the_machine_beside_the_volunteers():
    vol = pd.DataFrame({"user": ["a", "b", "c", MACHINE_USER], "n_classifications": [20, 30, 2, 500],
                        "swap_pl": [0.6, 0.8, 0.1, 0.9], "swap_pd": [0.7, 0.9, 0.1, 0.95], "p_fp": [0.1, 0.2, 0.9, 0.05],
                        "p_fn": [0.3, 0.4, 0.9, 0.2], "variance": [0.05, 0.07, 0.5, 0.02]})
    out = skills(vol)
    assert out["machine"]["swap_pl"] == 0.9 and out["machine"]["n_classifications"] == 500
    assert out["volunteers"] == 2 and out["volunteer_quartiles"]["p_fn"][1] == pytest.approx(0.35)


def test_machine_clicks_land_in_the_volunteers_frame():
    """A box found on a 50 px PNG of a subject clicked at 100 px, with a 40 px crop (offset 5):
    centre (10, 20) in the crop is (15, 25) on the PNG and (30, 50) where volunteers clicked."""
    manifest = pd.DataFrame({"subject_id": [7, 8], "png": ["7.png", "8.png"], "width": [50, 50], "height": [50, 50],
                             "psf_fwhm_pixels": [2.0, 2.0]})
    spec = PartnershipSpec.from_config(json.loads(json.dumps(_default_partnership()))).machine
    agent = MachineAgent(spec, None, None, None, None, None, manifest, "unused", gold=np.array([]), crop=40)
    frame = pd.DataFrame({"width": [100.0], "height": [100.0], "fwhm_px": [4.0]}, index=pd.Index([7], name="subject_id"))
    images = agent._images(np.array([7, 8]), frame)
    coco = {"images": [{"id": 7, "crop": [5, 5]}, {"id": 8, "crop": [5, 5]}]}
    results = [{"image_id": 7, "category_id": 2, "bbox": [8.0, 18.0, 4.0, 4.0], "score": 0.9}]
    cls, clicks = agent._classifications(images, coco, results, frame, "2020-01-01T00:00:00.000000Z")
    assert clicks[["x", "y", "tool"]].values.tolist() == [[30.0, 50.0, 1]]
    assert cls["n_marks"].tolist() == [1, 0] and (cls["user"] == MACHINE_USER).all()
    # subject 8 has no human classification: its frame is the PNG, its FWHM the manifest's
    assert cls["width"].tolist() == [100.0, 50.0] and cls["fwhm_px"].tolist() == [4.0, 2.0]
    assert (cls["classification_id"] < 0).all() and cls["classification_id"].is_unique


def _default_partnership():
    import yaml
    from pathlib import Path
    return yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())["partnership"]


def test_held_out_share_is_stable_per_subject():
    ids = np.arange(1000, 3000)
    a = held_out(ids, 0.2)
    assert 0.15 < a.mean() < 0.25
    assert (held_out(ids[::7], 0.2) == a[::7]).all()  # the same subject, the same side, in any round


def test_the_real_machine_trains_on_retired_subjects_and_classifies_the_queue(tiny_survey, tiny_export, tiny_config):
    """The detector agent on the tiny survey: trained on 45 'retired' subjects' consensus (gold
    ones left out), it classifies every subject still in the queue and every gold subject, once
    each, with clicks inside the volunteers' frame; it fine-tunes from its last weights next round."""
    agent, consensus, gold = _tiny_agent(tiny_survey, tiny_export, tiny_config, steps=60, eval_every=20)
    ids = np.sort(tiny_survey["manifest"]["subject_id"].to_numpy())
    retired, active = ids[:45], ids[45:]
    out = agent(consensus, retired, active, "2020-01-01T00:00:00.000000Z", 1)
    assert out is not None, "the machine sat the round out (no skill on its held-out subjects)"
    cls, clicks, info = out
    targets = np.union1d(active, gold.index.to_numpy())
    assert sorted(cls["subject_id"]) == sorted(targets.tolist()) and cls["classification_id"].is_unique
    assert info["trained_on"] + info["held_out"] == len(np.setdiff1d(retired, gold.index.to_numpy()))
    assert 0 < info["held_out_f1"] <= 1 and 0 < info["threshold"] < 1
    frame = consensus.subjects.set_index("subject_id")
    inside = clicks.merge(cls[["classification_id", "width", "height"]], on="classification_id")
    assert ((inside["x"] >= 0) & (inside["x"] <= inside["width"]) & (inside["y"] >= 0)
            & (inside["y"] <= inside["height"])).all()
    assert cls.set_index("subject_id")["n_marks"].sum() == len(clicks)
    assert set(cls["subject_id"]) & set(frame.index)  # subjects the volunteers saw take their frame
    first = {k: v.clone() for k, v in agent.weights.items()}
    agent(consensus, retired, active, "2020-01-02T00:00:00.000000Z", 2)
    assert any(not torch.equal(first[k], v) for k, v in agent.weights.items())  # trained on from round 1


def test_the_machine_counts_only_on_subjects_in_the_queue(tmp_path, default_config):
    """The machine classifies C from its first round on, but C's first human classification comes
    after every other (C is replayed last): until then no consensus holds the machine's view of C."""
    parsed = _export(tmp_path, order=(A, B), per_subject=5,
                     extra=[_row(2000 + k, C, k, 100 + k, _marks(C, k)) for k in range(3)])
    seen_c = []

    def scorer(consensus):
        n_c = int((consensus.subjects["subject_id"] == C).sum())
        seen_c.append(n_c)
        return {"f1": float("nan")}

    spec = _spec(default_config, min_humans=2, machine={"every": 1})
    res = replay(parsed, _consensus(default_config), spec, "machine", machine=ScriptedMachine(quiet=[A, B, C]),
                 scorer=scorer, all_subjects=np.array([A, B, C]))
    first_c = next(i for i, p in enumerate(res.points) if p.subjects_seen == 3)
    assert seen_c[:first_c] == [0] * first_c and seen_c[first_c] == 1
    assert MACHINE_USER in set(res.consensus.volunteers["user"])


def test_report_section_with_and_without_a_truth():
    from clumpfinder.report.summary import partnership_parts, summary_html

    results = _three_strategies()
    _, summary = effort(results, 2, 0.0, {"n": 50, "seed": 0, "level": 0.9})
    vol = pd.DataFrame({"user": ["a", MACHINE_USER], "n_classifications": [20, 8], "swap_pl": [0.6, 0.9],
                        "swap_pd": [0.7, 0.9], "p_fp": [0.1, 0.05], "p_fn": [0.3, 0.2], "variance": [0.05, 0.02]})
    summary.update(times={"first": "2020", "last": "2021", "unparseable_time": 2, "out_of_order": 1},
                   skills=skills(vol), scored=True, subjects=2, gold_subjects=0)
    text, table, skill_table = partnership_parts(summary)
    assert "with the machine: **never**" in text and "retirement alone: **60 %**" in text
    assert "2 rows without a readable time" in text and "1 out of order" in text
    assert table["share to reach the fixed F1"].tolist()[1].startswith("60 %")
    assert table["minus the fixed F1 (paired)"].tolist()[0] == ""
    assert skill_table["agent"].str.startswith("machine").any()
    assert "Humans and machine" in summary_html(pd.DataFrame(columns=["reference"]), 0.5, "t", 0.95, 10,
                                               partnership=summary)
    unscored = {**summary, "scored": False}
    text, table, _ = partnership_parts(unscored)
    assert "no truth" in text and "label F1" not in table.columns


def test_effort_figure_draws_every_strategy(tmp_path):
    from clumpfinder.report.figures import plot_partnership

    results = _three_strategies()
    curves, summary = effort(results, 2, 0.0, {"n": 50, "seed": 0, "level": 0.9})
    fig = plot_partnership(curves, summary, tmp_path / "p.png", tmp_path / "p.pdf")
    left, right = fig.axes
    assert len(left.get_lines()) >= 4 and len(right.get_lines()) == 3  # 3 curves + the target (+ share marks)
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "p.pdf").stat().st_size > 0
    # a real export: no truth, only the decided share
    fig = plot_partnership(curves.assign(f1=np.nan), summary, tmp_path / "q.png", tmp_path / "q.pdf")
    assert not fig.axes[0].get_lines() and len(fig.axes[1].get_lines()) == 3


def test_machine_rows_join_in_the_humans_frame_and_time():
    """A machine classification of a subject made before any human saw it (in the image's 50 px)
    counts once a human has, rescaled to the humans' 100 px frame and entering SWAP no earlier
    than that human; a subject no human saw yet is left out."""
    from clumpfinder.partnership.replay import _in_the_queue

    machine = pd.DataFrame({"classification_id": [-1, -2], "subject_id": [7, 8], "user": MACHINE_USER,
                            "width": [50.0, 50.0], "height": [50.0, 50.0], "fwhm_px": [2.0, 2.0],
                            "created_at": ["2020-01-01T00:00:00.000000Z"] * 2})
    clicks = pd.DataFrame({"classification_id": [-1, -2], "subject_id": [7, 8], "user": MACHINE_USER,
                           "x": [10.0, 10.0], "y": [20.0, 20.0], "tool": [0, 0]})
    humans = pd.DataFrame({"classification_id": [5, 6], "subject_id": [7, 7], "width": [100.0, 100.0],
                           "height": [100.0, 100.0], "created_at": ["2020-01-03T00:00:00.000000Z",
                                                                   "2020-01-02T00:00:00.000000Z"]})
    cls, marks = _in_the_queue(machine, clicks, humans)
    assert cls["subject_id"].tolist() == [7] and marks["classification_id"].tolist() == [-1]
    assert cls[["width", "height", "fwhm_px"]].values.tolist() == [[100.0, 100.0, 4.0]]
    assert marks[["x", "y"]].values.tolist() == [[20.0, 40.0]]
    assert cls["created_at"].tolist() == ["2020-01-02T00:00:00.000000Z"]
    later = machine.assign(created_at="2020-02-01T00:00:00.000000Z")
    assert _in_the_queue(later, clicks, humans)[0]["created_at"].tolist() == ["2020-02-01T00:00:00.000000Z"]


def test_the_machine_sits_out_a_round_without_held_out_boxes(tiny_survey, tiny_export, tiny_config):
    """Retired subjects without a single consensus box: no held-out F1 to choose weights or a
    threshold by, so the machine sits the round out (it does not vote at random)."""
    agent, consensus, _ = _tiny_agent(tiny_survey, tiny_export, tiny_config, steps=2, eval_every=1)
    consensus.boxes = consensus.boxes.iloc[:0]
    ids = np.sort(tiny_survey["manifest"]["subject_id"].to_numpy())
    assert agent(consensus, ids[:45], ids[45:], "2020-01-01T00:00:00.000000Z", 1) is None


def _tiny_agent(tiny_survey, tiny_export, tiny_config, steps: int, eval_every: int):
    """The real machine agent on the tiny survey (CPU, fp32) and the consensus of its export."""
    from clumpfinder.compute import ComputeSpec
    from clumpfinder.crowd.consensus import run_consensus
    from clumpfinder.detection.detector import BackboneSpec, DetectorSpec
    from clumpfinder.detection.train import Selection, TrainSpec
    from clumpfinder.partnership.replay import MachineSpec

    cfg = tiny_config
    gold = tiny_export["gold"]
    consensus = run_consensus(read_export(tiny_export["path"]), ConsensusSpec.from_config(cfg["consensus"]), gold)
    spec = MachineSpec.from_config({**cfg["partnership"]["machine"], "steps": steps, "eval_every": eval_every,
                                    "min_subjects": 6})
    training = TrainSpec.from_config({**cfg["training"], "seed": 0, "steps": steps, "eval_every": eval_every})
    agent = MachineAgent(spec, BackboneSpec(**cfg["backbones"]["resnet18_scratch"]),
                         DetectorSpec.from_config(cfg["detector"]), training, Selection(),
                         ComputeSpec(device="cpu", precision="fp32"), tiny_survey["manifest"],
                         str(tiny_survey["root"] / "png"), gold.index.to_numpy(), threads=1)
    return agent, consensus, gold
