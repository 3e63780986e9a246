"""Consensus on hand-built click sets with known answers."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from clumpfinder.crowd.consensus import ConsensusSpec, drop_duplicate_taps
from clumpfinder.crowd.consensus import run_consensus as _run
from clumpfinder.data.zooniverse import ParsedExport


def spec_for(default_config, method="dbscan", **over):
    cfg = copy.deepcopy(default_config["consensus"])
    cfg.update(method=method, fallback_box_fraction=0.1, **over)
    cfg["swap"]["mode"] = "unsupervised"
    return ConsensusSpec.from_config(cfg)


@pytest.fixture(scope="module")
def SPEC(default_config):
    return spec_for(default_config)


def run_consensus(p, spec, gold=None):
    r = _run(p, spec, gold)
    return r.boxes, r.subjects, r.report


def parsed(clicks, n_volunteers=5, subject=1, width=100, height=100, fwhm=4.0):
    """clicks: list of (volunteer, x, y, tool); every volunteer classified the subject once."""
    cls = pd.DataFrame(
        {"classification_id": range(n_volunteers), "subject_id": subject, "user": [f"u{i}" for i in range(n_volunteers)],
         "logged_in": True, "n_marks": 0, "width": width, "height": height, "fwhm_px": fwhm,
         "workflow_version": "1", "created_at": ""}
    )
    c = pd.DataFrame(
        [(v, subject, f"u{v}", x, y, t) for v, x, y, t in clicks],
        columns=["classification_id", "subject_id", "user", "x", "y", "tool"],
    )
    cls["n_marks"] = cls["classification_id"].map(c.groupby("classification_id").size()).fillna(0).astype(int)
    return ParsedExport(cls, c, {})


def test_three_agreeing_volunteers_make_one_box(SPEC):
    p = parsed([(0, 30.0, 40.0, 0), (1, 31.0, 40.5, 0), (2, 29.5, 39.5, 0)])
    boxes, subjects, report = run_consensus(p, SPEC)
    assert len(boxes) == 1
    b = boxes.iloc[0]
    assert b["x"] == pytest.approx(30.1667, abs=1e-3) and b["y"] == pytest.approx(40.0)
    assert b["side"] == 8.0 and b["x2"] - b["x1"] == pytest.approx(8.0)
    assert b["category"] == "clump" and b["n_votes"] == 3
    assert subjects.iloc[0]["n_boxes"] == 1 and subjects.iloc[0]["n_classifications"] == 5


def test_lone_and_scattered_clicks_make_no_box(SPEC):
    p = parsed([(0, 10.0, 10.0, 0), (1, 80.0, 20.0, 0), (2, 20.0, 80.0, 1)])
    boxes, subjects, _ = run_consensus(p, SPEC)
    assert boxes.empty and subjects.iloc[0]["n_boxes"] == 0


def test_one_volunteer_clicking_three_times_is_not_a_consensus(SPEC):
    p = parsed([(0, 30.0, 40.0, 0), (0, 31.5, 40.0, 0), (0, 30.0, 41.5, 0)])
    boxes, _, _ = run_consensus(p, SPEC)
    assert boxes.empty


def test_centre_marks_are_dropped(SPEC):
    p = parsed([(v, 50.2, 49.8, 0) for v in range(4)] + [(v, 20.0, 25.0, 0) for v in range(4)])
    boxes, subjects, report = run_consensus(p, SPEC)
    assert len(boxes) == 1 and boxes.iloc[0]["x"] == pytest.approx(20.0)
    assert report["centre_clusters_dropped"] == 1 and subjects.iloc[0]["n_centre_dropped"] == 1


def test_majority_tool_sets_class(SPEC):
    p = parsed([(0, 30.0, 40.0, 1), (1, 30.0, 40.0, 1), (2, 30.0, 40.0, 0), (3, 70.0, 70.0, 0),
                (4, 70.0, 70.0, 0), (0, 70.0, 70.0, 1)])
    boxes, _, _ = run_consensus(p, SPEC)
    cat = boxes.set_index(boxes["x"].round())["category"]
    assert cat[30.0] == "odd_clump" and cat[70.0] == "clump"
    assert boxes.set_index(boxes["x"].round()).loc[30.0, "odd_fraction"] == pytest.approx(2 / 3)


def test_min_votes_scale_with_classifications(SPEC):
    """3 of 20 volunteers agreeing is below a 20 % vote fraction (4 needed)."""
    p = parsed([(v, 30.0, 40.0, 0) for v in range(3)], n_volunteers=20)
    assert run_consensus(p, SPEC)[0].empty
    p = parsed([(v, 30.0, 40.0, 0) for v in range(4)], n_volunteers=20)
    assert len(run_consensus(p, SPEC)[0]) == 1


def test_duplicate_taps_dropped_before_clustering(SPEC):
    # volunteer 0 double-taps (0.5 px apart): only one counts
    p = parsed([(0, 30.0, 40.0, 0), (0, 30.5, 40.0, 0), (1, 30.0, 40.0, 0), (2, 30.0, 40.0, 0)])
    side = pd.Series({1: 8.0})
    kept, n = drop_duplicate_taps(p.clicks, side, 0.25)
    assert n == 1 and len(kept) == 3
    boxes, _, report = run_consensus(p, SPEC)
    assert report["duplicate_taps_dropped"] == 1 and boxes.iloc[0]["n_votes"] == 3
    # two marks of one volunteer 3 px apart are both kept (two clumps, not a double tap)
    kept, n = drop_duplicate_taps(parsed([(0, 30.0, 40.0, 0), (0, 33.0, 40.0, 0)]).clicks, side, 0.25)
    assert n == 0 and len(kept) == 2


def test_duplicate_taps_match_a_click_by_click_walk():
    """The compiled walk drops exactly the clicks that comparing each click with the earlier
    kept clicks of its classification drops, in any row order."""
    import numpy as np

    rng = np.random.default_rng(2)
    n = 3000
    clicks = pd.DataFrame({"classification_id": rng.integers(0, 800, n), "subject_id": rng.integers(1, 4, n),
                           "user": "u", "x": rng.normal(50, 2, n), "y": rng.normal(50, 2, n), "tool": 0})
    side = pd.Series({1: 4.0, 2: 8.0, 3: 12.0})
    keep = np.ones(n, bool)
    for cid in np.unique(clicks["classification_id"]):
        idx = np.flatnonzero(clicks["classification_id"].to_numpy() == cid)
        for a, i in enumerate(idx):
            earlier = idx[:a][keep[idx[:a]]]
            d = np.hypot(clicks["x"].to_numpy()[earlier] - clicks.at[i, "x"], clicks["y"].to_numpy()[earlier] - clicks.at[i, "y"])
            keep[i] = not (d < 0.25 * side[clicks.at[i, "subject_id"]]).any()
    kept, n_dropped = drop_duplicate_taps(clicks, side, 0.25)
    assert 100 < n_dropped == (~keep).sum() < n - 100
    pd.testing.assert_frame_equal(kept, clicks[keep].reset_index(drop=True))


def test_clicks_of_volunteers_without_classification(SPEC, default_config):
    """Volunteers are coded as integers inside the consensus; a click whose volunteer classified
    nothing still counts as a volunteer of its own (dbscan) or is refused (em), as by name."""
    p = parsed([(v, 30.0, 40.0, 0) for v in range(2)])
    p.clicks.loc[len(p.clicks)] = [9, 1, "stranger", 30.0, 40.0, 0]
    boxes, _, _ = run_consensus(p, SPEC)
    assert len(boxes) == 1 and boxes.iloc[0]["n_votes"] == 3
    with pytest.raises(ValueError, match="clicks refer to classifications"):
        run_consensus(p, spec_for(default_config, method="em"))


def test_fallback_box_side_without_fwhm(SPEC):
    p = parsed([(v, 30.0, 40.0, 0) for v in range(3)], fwhm=float("nan"), width=120, height=120)
    boxes, subjects, report = run_consensus(p, SPEC)
    assert boxes.iloc[0]["side"] == pytest.approx(12.0)  # 0.1 x 120 px
    assert report["subjects_without_fwhm"] == 1


def test_boxes_clipped_to_image(SPEC):
    p = parsed([(v, 1.0, 98.0, 0) for v in range(3)])
    b = run_consensus(p, SPEC)[0].iloc[0]
    assert b["x1"] == 0.0 and b["y2"] == 100.0


def test_unknown_method_is_rejected(default_config):
    cfg = dict(default_config["consensus"], method="kmeans")
    with pytest.raises(ValueError, match="consensus.method 'kmeans' is not one of em, dbscan, hdbscan"):
        ConsensusSpec.from_config(cfg)


@pytest.mark.parametrize("method", ["em", "dbscan", "hdbscan"])
def test_consensus_recovers_bright_simulated_clumps(tiny_export, tiny_survey, tiny_config, method):
    """On the simulated survey, clumps that stand out (local contrast >= 3) are nearly all found,
    and boxes sit on real objects. The tiny survey has 8 volunteers per subject, about two thirds
    of whom mark a bright clump: HDBSCAN's clusters are sized to that (3 of 8, as 5 of 20 by default).
    HDBSCAN weighs no volunteer, so three centre-clickers on one subject (8 of the tiny crowd's 60)
    make a box on the galaxy's centre: its boxes are held to 80 % on objects, the weighted ones to 90 %."""
    import numpy as np

    from clumpfinder.data.zooniverse import read_export

    cfg = dict(tiny_config["consensus"], method=method, hdbscan={"min_cluster_size": 3, "min_samples": 3})
    boxes, _, _ = run_consensus(read_export(tiny_export["path"]), ConsensusSpec.from_config(cfg), tiny_export["gold"])
    man = tiny_survey["manifest"].set_index("subject_id")
    truth = tiny_survey["truth"]
    bright = truth[(truth["kind"] == "clump") & (truth["contrast_g"] >= 3)]
    found = 0
    for _, o in bright.iterrows():
        b = boxes[boxes["subject_id"] == o["subject_id"]]
        if len(b) and np.hypot(b["x"] - o["x"], b["y"] - o["y"]).min() < 0.5 * man.loc[o["subject_id"], "psf_fwhm_pixels"]:
            found += 1
    assert found / len(bright) >= 0.8
    on_object = 0
    for _, b in boxes.iterrows():
        t = truth[truth["subject_id"] == b["subject_id"]]
        on_object += len(t) > 0 and np.hypot(t["x"] - b["x"], t["y"] - b["y"]).min() < man.loc[b["subject_id"], "psf_fwhm_pixels"]
    assert on_object / len(boxes) >= (0.8 if method == "hdbscan" else 0.9)


def test_injected_subjects_join_the_gold(tmp_path):
    """Real exports: subjects with injected clumps (origin 'sim') are gold 'has clumps' for SWAP;
    data.gold keeps its word on a subject in both; a simulated export (all 'sim') adds nothing."""
    import numpy as np

    from clumpfinder.crowd.consensus import gold_with_injected

    subject_list = pd.DataFrame({"subject_id": [1, 2, 3, 4], "origin": ["real", "sim", "Sim", np.nan]})
    gold = pd.Series([0, 1], index=[3, 4])
    merged, counts = gold_with_injected(gold, subject_list)
    assert merged.sort_index().to_dict() == {2: 1, 3: 0, 4: 1}
    assert counts == {"from_file": 2, "injected": 1, "injected_also_in_file": 1}
    merged, counts = gold_with_injected(None, subject_list)
    assert merged.sort_index().to_dict() == {2: 1, 3: 1} and counts["injected"] == 2
    assert gold_with_injected(gold, None) == (gold, {"from_file": 2, "injected": 0, "injected_also_in_file": 0})
    merged, counts = gold_with_injected(None, subject_list.assign(origin="sim"))
    assert merged is None and counts["injected"] == 0
    # SWAP takes the merged gold
    p = parsed([(0, 30.0, 30.0, 0)], subject=2)
    _, subjects, report = run_consensus(p, spec_for_supervised(), gold_with_injected(None, subject_list)[0])
    assert subjects["gold"].tolist() == [1] and report["swap"]["gold_subjects"] == 1


def spec_for_supervised():
    import yaml

    from conftest import REPO

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["consensus"]
    cfg.update(method="dbscan", fallback_box_fraction=0.1)
    cfg["swap"]["mode"] = "supervised"
    return ConsensusSpec.from_config(cfg)


def test_question_votes_for_swap_while_every_click_makes_boxes(default_config):
    """With swap.question, SWAP counts only the classifications that answered it (the report says
    how many did not); the boxes still come from every volunteer's clicks."""
    p = parsed([(0, 30.0, 40.0, 0), (1, 31.0, 40.5, 0), (2, 29.5, 39.5, 0)])
    p.classifications["question_answer"] = pd.array([1, -1, -1, 0, -1], dtype="int8")
    cfg = copy.deepcopy(default_config["consensus"])
    cfg.update(method="dbscan", fallback_box_fraction=0.1)
    cfg["swap"].update(mode="unsupervised", question={"task": "T1", "yes_answer": 0})
    boxes, subjects, report = run_consensus(p, ConsensusSpec.from_config(cfg))
    assert len(boxes) == 1 and boxes.iloc[0]["n_votes"] == 3  # two of the three never answered
    assert subjects.iloc[0]["swap_n_used"] == 2
    assert report["swap"]["classifications_without_answer"] == 3 and report["swap"]["classifications_used"] == 2
    assert report["swap"]["vote"] == "question T1: answer 0"
    _, subjects_marks, report_marks = run_consensus(p, spec_for(default_config))
    assert subjects_marks.iloc[0]["swap_n_used"] == 5 and "classifications_without_answer" not in report_marks["swap"]


def test_export_with_question_and_shapes_through_consensus(tmp_path, default_config):
    """From a written export: circle centres configured as clicks make a box; SWAP reads the
    answers of task T1 (labels), and three classifications without one are not SWAP votes."""
    import json

    from clumpfinder.data.zooniverse import classification_row, read_export, write_export

    wf = {"id": 1, "name": "w", "version": "1.0"}
    rows = []
    for k in range(6):
        r = classification_row(classification_id=k + 1, user_name=f"u{k}", user_id=k + 1, user_ip="x", workflow=wf,
                               created_at=f"2020-01-01 00:00:0{k} UTC", started_at="a", finished_at="b",
                               subject_id=7, subject_meta={"#fwhm_pixels": 4.0}, width=100, height=100, marks=[])
        ann = [{"task": "T0", "value": [{"toolType": "circle", "x_center": 30.0 + k % 2, "y_center": 40.0, "r": 4.0,
                                          "toolIndex": 0}] if k < 4 else []}]
        if k >= 3:
            ann.append({"task": "T1", "task_label": "Does this galaxy have clumps?", "value": "Yes" if k < 5 else "No"})
        rows.append(dict(r, annotations=json.dumps(ann)))
    path = tmp_path / "export.csv"
    write_export(rows, path)
    cfg = copy.deepcopy(default_config["consensus"])
    cfg.update(method="dbscan", fallback_box_fraction=0.1, shape_centres=["circle"])
    cfg["swap"].update(mode="unsupervised", question={"task": "T1", "yes_answer": "yes"})
    spec = ConsensusSpec.from_config(cfg)
    p = read_export(path, shape_centres=cfg["shape_centres"], question=spec.swap.question)
    assert p.report["marks_by_type"] == {"circle": 4} and p.report["clicks_used"] == 4
    assert p.report["question"]["answers"]["yes"] == 2 and p.report["question"]["answers"]["task_absent"] == 3
    boxes, subjects, report = run_consensus(p, spec)
    assert len(boxes) == 1 and boxes.iloc[0]["x"] == pytest.approx(30.5)
    assert report["swap"]["classifications_without_answer"] == 3 and subjects.iloc[0]["swap_n_used"] == 3


@pytest.mark.parametrize("override, ok", [
    ({"shape_centres": ["circle", "rectangle"]}, True),
    ({"shape_centres": ["line"]}, False),
    ({"shape_centres": ["circle", "circle"]}, False),
    ({"swap": {"question": {"task": "T1", "yes_answer": 0}}}, True),
    ({"swap": {"question": {"task": "T1", "yes_answer": "Yes"}}}, True),
    ({"swap": {"question": {"task": "T1", "yes_answer": -1}}}, False),
    ({"swap": {"question": {"task": "T1"}}}, False),
    ({"swap": {"question": {"task": "T1", "yes_answer": 0, "label": "x"}}}, False),
    ({"swap": {"question": {"task": "", "yes_answer": 0}}}, False),
])
def test_schema_of_shapes_and_question(default_config, override, ok):
    import jsonschema
    import yaml

    from conftest import REPO, deep_update

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    config = deep_update(default_config, {"consensus": override})
    if ok:
        jsonschema.validate(config, schema)
    else:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(config, schema)


def test_question_in_yaml_validates(default_config):
    """The question as a user writes it in a config file passes the schema; a typo does not."""
    import jsonschema
    import yaml

    from conftest import REPO, deep_update

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    good = yaml.safe_load("question: {task: T1, yes_answer: 0}")
    jsonschema.validate(deep_update(default_config, {"consensus": {"swap": good}}), schema)
    typo = yaml.safe_load("question: {task: T1, yes: 0}")  # YAML reads a bare yes as true
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(deep_update(default_config, {"consensus": {"swap": typo}}), schema)