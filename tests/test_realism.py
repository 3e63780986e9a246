"""Real-label statistics: the safe reader of Popp et al.'s pickles, the statistics and KS distances."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pytest

from clumpfinder.data.realism import (
    LEVELS,
    ks_to_reference,
    label_statistics,
    popp_boxes,
    read_pickled_frame,
    reference_statistics,
)


class Exploit:
    """A pickle that would run a shell command when loaded by pickle.load."""

    def __reduce__(self):
        return os.system, ("touch /tmp/clumpfinder-pwned",)


def test_pickled_frame_loads_and_code_is_refused(tmp_path):
    df = pd.DataFrame({"image_id": [1, 1, 2], "label": [1, 2, 1], "x1": [1.0, 2.0, 3.0]})
    good = tmp_path / "good.pkl"
    df.to_pickle(good)
    pd.testing.assert_frame_equal(read_pickled_frame(good), df)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match=r"bad.pkl: .*refused to load posix.system"):
        read_pickled_frame(bad)
    assert not os.path.exists("/tmp/clumpfinder-pwned")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="list.pkl: holds a list, not a pandas DataFrame"):
        read_pickled_frame(tmp_path / "list.pkl")
    (tmp_path / "cut.pkl").write_bytes(good.read_bytes()[:50])
    with pytest.raises(ValueError, match="cut.pkl: cannot be read"):
        read_pickled_frame(tmp_path / "cut.pkl")
    with pytest.raises(ValueError, match="missing.pkl: cannot be read"):
        read_pickled_frame(tmp_path / "missing.pkl")


def test_popp_table_columns_are_checked():
    df = pd.DataFrame({"image_id": [7], "label": [2], "x1": [0.0], "x2": [10.0], "y1": [0.0], "y2": [10.0]})
    boxes = popp_boxes([df], ["train.pkl"])
    assert boxes.to_dict("records") == [{"subject_id": 7, "x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0, "odd": True}]
    with pytest.raises(ValueError, match="valid.pkl: lacks column\\(s\\) y2"):
        popp_boxes([df, df.drop(columns="y2")], ["train.pkl", "valid.pkl"])


def test_label_statistics_by_hand():
    # galaxy 1: two boxes 30 px apart; galaxy 2: one odd box at the centre; image side 100 px
    boxes = pd.DataFrame({"subject_id": [1, 1, 2], "x1": [10.0, 40.0, 45.0], "y1": [45.0, 45.0, 45.0],
                          "x2": [20.0, 50.0, 55.0], "y2": [55.0, 55.0, 55.0], "odd": [False, False, True]})
    s = label_statistics(boxes, 100)
    assert s["galaxies"] == 2 and s["boxes"] == 3 and s["boxes_per_galaxy"].tolist() == [2, 1]
    assert s["odd_share"] == pytest.approx(1 / 3) and s["odd_galaxy_share"] == pytest.approx(0.5)
    np.testing.assert_allclose(s["box_side"], [0.1, 0.1, 0.1])
    np.testing.assert_allclose(s["centre_distance"], [0.35, 0.05, 0.0])
    np.testing.assert_allclose(s["nearest_box"], [0.3, 0.3])
    with pytest.raises(ValueError, match="no boxes"):
        label_statistics(boxes.iloc[:0], 100)


def test_ks_is_zero_for_the_same_distribution_and_large_for_another():
    rng = np.random.default_rng(0)

    def table(n, shift):
        k = rng.integers(1, 4, n)
        sid = np.repeat(np.arange(n), k)
        cx = rng.uniform(20, 80, len(sid)) + shift
        return pd.DataFrame({"subject_id": sid, "x1": cx - 5, "x2": cx + 5, "y1": 45.0, "y2": 55.0,
                             "odd": rng.uniform(size=len(sid)) < 0.3})

    ref = reference_statistics(label_statistics(table(4000, 0.0), 100))
    assert len(ref["centre_distance"]) == len(LEVELS) and abs(sum(ref["boxes_per_galaxy"]["pmf"].values()) - 1) < 1e-6
    same = ks_to_reference(label_statistics(table(4000, 0.0), 100), ref)
    assert max(same.values()) < 0.05
    other = ks_to_reference(label_statistics(table(4000, 15.0), 100), ref)
    assert other["centre_distance"] > 0.15 and other["boxes_per_galaxy"] < 0.05
