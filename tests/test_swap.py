"""SWAP against hand computation, retirement, modes and bad gold tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clumpfinder.tables import read_gold
from clumpfinder.crowd.swap import SwapSpec, run_swap
from clumpfinder.data.zooniverse import Question

BASE = dict(mode="supervised", prior=0.3, initial_pl=0.5, initial_pd=0.5, skepticism=2.0,
            detection_threshold=0.99, rejection_threshold=0.004, probability_floor=0.001, agent_clip=0.01,
            stop_at_retirement=False)


def cls(rows):
    """rows: (subject, user, said_yes) in time order."""
    return pd.DataFrame(
        {"classification_id": range(len(rows)), "subject_id": [r[0] for r in rows], "user": [r[1] for r in rows],
         "n_marks": [int(r[2]) for r in rows], "created_at": [f"2020-01-01 {k // 3600:02d}:{k // 60 % 60:02d}:{k % 60:02d} UTC" for k in range(len(rows))]}
    )


def test_supervised_updates_match_hand_computation():
    # A (gold, clumps): v1 yes; B: v1 yes, v2 no; C (gold, none): v1 no
    c = cls([("A", "v1", 1), ("B", "v1", 1), ("B", "v2", 0), ("C", "v1", 0)])
    c["subject_id"] = c["subject_id"].map({"A": 1, "B": 2, "C": 3})
    subj, vol = run_swap(c, SwapSpec(**BASE), gold=pd.Series({1: 1, 3: 0}))
    p = subj.set_index("subject_id")["swap_prob"]
    assert p[1] == pytest.approx(0.3)  # PL = PD = 0.5 carries no information
    # v1 learned PL = (0.5 * 4 + 1) / 5 = 0.6 on A before classifying B
    assert p[2] == pytest.approx(0.3 * 0.6 / (0.6 * 0.3 + 0.5 * 0.7))
    assert p[3] == pytest.approx(0.3 * 0.4 / (0.4 * 0.3 + 0.5 * 0.7))
    v = vol.set_index("user")
    assert v.loc["v1", "swap_pl"] == pytest.approx(0.6) and v.loc["v1", "swap_pd"] == pytest.approx(0.6)
    assert v.loc["v1", "swap_n_trained"] == 2 and v.loc["v2", "swap_n_trained"] == 0
    assert v.loc["v2", "swap_pl"] == 0.5 and v.loc["v2", "swap_pd"] == 0.5
    assert subj.set_index("subject_id")["gold"].to_dict() == {1: 1, 2: -1, 3: 0}


def test_unsupervised_learns_who_to_trust_without_gold():
    """Most subjects have clumps (where online soft updates invert); EM from the majority vote
    recovers honest volunteers, unmasks a contrarian and classifies the subjects."""
    rng = np.random.default_rng(4)
    truth = (rng.uniform(size=60) < 0.7).astype(int)
    rows = []
    for s, t in enumerate(truth):
        for v in range(6):
            says = t if rng.uniform() < 0.85 else 1 - t
            rows.append((s, f"v{v}", says))
        rows.append((s, "contrarian", 1 - t))
    subj, vol = run_swap(cls(rows), SwapSpec(**dict(BASE, mode="unsupervised")))
    v = vol.set_index("user")
    assert v.loc["contrarian", "swap_pl"] < 0.2 and v.loc["contrarian", "swap_pd"] < 0.2
    assert (v.drop("contrarian")["swap_pl"] > 0.7).all() and (v.drop("contrarian")["swap_pd"] > 0.6).all()
    assert ((subj["swap_prob"] > 0.5).astype(int).to_numpy() == truth).mean() >= 0.95


def test_retirement_and_stop_at_retirement():
    # ten trained volunteers (PL = PD = 0.9 after gold) say no to subject 99
    rows = []
    for k in range(10):
        rows += [(g, f"v{k}", g % 2) for g in range(1, 41)]  # gold: odd ids have clumps
    rows += [(99, f"v{k}", 0) for k in range(10)]
    gold = pd.Series({g: g % 2 for g in range(1, 41)})
    subj, _ = run_swap(cls(rows), SwapSpec(**BASE), gold)
    s = subj.set_index("subject_id").loc[99]
    assert s["swap_retired"] and s["swap_retired_as"] == "no"
    assert s["swap_n_used"] == 10 and 1 <= s["swap_retired_at"] < 10
    assert s["swap_prob"] < 0.004
    subj2, _ = run_swap(cls(rows), SwapSpec(**dict(BASE, stop_at_retirement=True)), gold)
    s2 = subj2.set_index("subject_id").loc[99]
    assert s2["swap_n_used"] == s["swap_retired_at"]  # later votes were not used
    assert s2["swap_retired_at"] == s["swap_retired_at"]


def test_row_order_does_not_matter():
    rows = [(1, "a", 1), (1, "b", 0), (2, "a", 0), (2, "c", 1), (1, "c", 1)]
    c = cls(rows)
    gold = pd.Series({1: 1})
    a, _ = run_swap(c, SwapSpec(**BASE), gold)
    b, _ = run_swap(c.sample(frac=1, random_state=3), SwapSpec(**BASE), gold)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_volunteer_codes_give_the_same_result_as_names(mode):
    """The consensus hands SWAP each volunteer's rank among the sorted names instead of the name
    (integers sort and group faster): subjects and skills come out the same, volunteer by volunteer."""
    rng = np.random.default_rng(1)
    rows = [(int(s), f"{name}{k}", int(rng.uniform() < 0.6)) for s in rng.integers(1, 30, 300)
            for name, k in [("id:", rng.integers(0, 12)), ("name:", rng.integers(0, 5))]]
    by_name = cls(rows)
    codes, names = pd.factorize(by_name["user"], sort=True)
    gold = pd.Series({s: s % 2 for s in range(1, 10)})
    subj_a, vol_a = run_swap(by_name, SwapSpec(**dict(BASE, mode=mode)), gold)
    subj_b, vol_b = run_swap(by_name.assign(user=codes), SwapSpec(**dict(BASE, mode=mode)), gold)
    pd.testing.assert_frame_equal(subj_a, subj_b)
    assert vol_a["user"].tolist() == names[vol_b["user"].to_numpy()].tolist()
    pd.testing.assert_frame_equal(vol_a.drop(columns="user"), vol_b.drop(columns="user"))


def test_supervised_without_gold_is_an_error():
    with pytest.raises(ValueError, match="no gold subjects"):
        run_swap(cls([(1, "a", 1)]), SwapSpec(**BASE), None)


def test_bad_spec_names_the_key():
    with pytest.raises(ValueError, match="consensus.swap.mode 'magic'"):
        SwapSpec.from_config(dict(BASE, mode="magic"))
    with pytest.raises(ValueError, match="rejection_threshold < prior < detection_threshold"):
        SwapSpec.from_config(dict(BASE, prior=0.999))


def test_bad_gold_table_names_file_and_line(tmp_path):
    p = tmp_path / "gold.csv"
    p.write_text("subject_id,has_clumps\n1,1\n2,yes\n")
    with pytest.raises(ValueError, match=r"gold.csv: line 3: has_clumps must be 0 or 1"):
        read_gold(p)
    p.write_text("subject_id,truth\n1,1\n")
    with pytest.raises(ValueError, match="lacks column.*has_clumps"):
        read_gold(p)
    p.write_text("subject_id,has_clumps\n5,1\n6,0\n")
    assert read_gold(p).to_dict() == {5: 1, 6: 0}


def test_gold_subject_listed_twice_is_reported(tmp_path):
    p = tmp_path / "gold.csv"
    p.write_text("subject_id,has_clumps\n5,1\n6,0\n5,1\n")
    with pytest.raises(ValueError, match="gold.csv: line 4: subject 5 is listed twice"):
        read_gold(p)


def with_answers(rows):
    """rows: (subject, user, answer) in time order; answer 1 yes, 0 no, -1 none. The marks say the
    opposite of every answer, so a run that reads the marks instead gives other posteriors."""
    c = cls([(s, u, a) for s, u, a in rows])
    c["question_answer"] = np.array([a for *_, a in rows], np.int8)
    c["n_marks"] = (c["question_answer"] != 1).astype(int)
    return c


QUESTION = Question("T1", 0)


def test_question_answers_drive_swap_as_hand_computed():
    # as test_supervised_updates_match_hand_computation, with the votes given as answers; v3 answers
    # nothing on B (no vote: skipped) and v1's unanswered classification of C before its "no" changes nothing
    c = with_answers([(1, "v1", 1), (2, "v1", 1), (2, "v3", -1), (2, "v2", 0), (3, "v1", -1), (3, "v1", 0)])
    subj, vol = run_swap(c, SwapSpec(**BASE, question=QUESTION), gold=pd.Series({1: 1, 3: 0}))
    s = subj.set_index("subject_id")
    assert s.loc[1, "swap_prob"] == pytest.approx(0.3)
    assert s.loc[2, "swap_prob"] == pytest.approx(0.3 * 0.6 / (0.6 * 0.3 + 0.5 * 0.7))
    assert s.loc[3, "swap_prob"] == pytest.approx(0.3 * 0.4 / (0.4 * 0.3 + 0.5 * 0.7))
    assert s["swap_n_used"].to_dict() == {1: 1, 2: 2, 3: 1}
    v = vol.set_index("user")
    assert v.loc["v1", "swap_pl"] == pytest.approx(0.6) and v.loc["v1", "swap_pd"] == pytest.approx(0.6)
    assert v.loc["v1", "swap_n_trained"] == 2
    # a volunteer who never answered keeps a row with the starting skills
    assert v.loc["v3", "swap_pl"] == 0.5 and v.loc["v3", "swap_n_trained"] == 0


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_question_run_equals_marks_run_where_they_agree(mode):
    """Answers on random data, some missing: SWAP on the answers gives what SWAP on marks gives
    when the marks say the same and the unanswered classifications are left out. The volunteer
    who sorts last never answers (the EM must still give every volunteer a row)."""
    rng = np.random.default_rng(2)
    rows = [(int(rng.integers(1, 25)), f"v{int(rng.integers(0, 8))}", int(rng.choice([1, 0, -1], p=[0.5, 0.35, 0.15])))
            for _ in range(400)]
    rows += [(s, "zz-never", -1) for s in range(1, 25)]
    gold = pd.Series({s: s % 2 for s in range(1, 8)})
    spec = dict(BASE, mode=mode)
    asked = with_answers(rows)
    subj_q, vol_q = run_swap(asked, SwapSpec(**spec, question=QUESTION), gold)
    answered = asked[asked["question_answer"] >= 0].assign(n_marks=lambda d: d["question_answer"].astype(int))
    subj_m, vol_m = run_swap(answered, SwapSpec(**spec), gold)
    pd.testing.assert_frame_equal(subj_q, subj_m)
    assert vol_q["user"].tolist() == vol_m["user"].tolist() + ["zz-never"]
    pd.testing.assert_frame_equal(vol_q.iloc[:-1], vol_m)
    assert vol_q.iloc[-1][["swap_pl", "swap_pd", "swap_n_trained"]].tolist() == [0.5, 0.5, 0.0]
    # and reading the marks of the classifications with the answers gives something else
    subj_wrong, _ = run_swap(asked, SwapSpec(**spec), gold)
    assert not np.allclose(subj_wrong["swap_prob"], subj_q["swap_prob"])


def test_question_without_the_answer_column_is_an_error():
    with pytest.raises(ValueError, match="question is set \\(task 'T1'\\) but the classifications have no "
                                         "question_answer"):
        run_swap(cls([(1, "a", 1)]), SwapSpec(**BASE, question=QUESTION), pd.Series({1: 1}))


def test_question_from_config():
    yes = {"task": "T1", "yes_answer": "Yes"}
    assert SwapSpec.from_config(dict(BASE, question=yes)).question == Question("T1", "Yes")
    assert SwapSpec.from_config(dict(BASE, question=None)).question is None
    assert SwapSpec.from_config(BASE).question is None  # callers without the key: marks vote
    for bad in ({"task": "T1"}, {"task": "", "yes_answer": 0}, {"task": "T1", "yes_answer": True},
                {"task": "T1", "yes_answer": 0, "no": 1}, {"task": "T1", True: 0}):
        with pytest.raises(ValueError, match="consensus.swap.question"):
            SwapSpec.from_config(dict(BASE, question=bad))
