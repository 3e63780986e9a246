"""Writing and reading Zooniverse classification exports, including the ways real rows break."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest

from clumpfinder.data.zooniverse import COLUMNS, ExportFormatError, classification_row, read_export, write_export

WORKFLOW = {"id": 1, "name": "Clump Scout", "version": "1.2"}


def row(cid, sid=10, user="alice", user_id=5, marks=((10.0, 20.0, 0),), width=100, height=100, fwhm=4.0):
    meta = {"ra": 1.0, "dec": 2.0}
    if fwhm is not None:
        meta["#fwhm_pixels"] = fwhm
    return classification_row(
        classification_id=cid, user_name=user, user_id=user_id, user_ip="x", workflow=WORKFLOW,
        created_at="2020-01-01 00:00:00 UTC", started_at="2020-01-01T00:00:00.000Z",
        finished_at="2020-01-01T00:00:10.000Z", subject_id=sid, subject_meta=meta, width=width,
        height=height, marks=marks,
    )


def test_round_trip(tmp_path):
    rows = [
        row(1, marks=[(10.0, 20.0, 0), (50.5, 60.25, 1)]),
        row(2, user="not-logged-in-abc", user_id=None, marks=[]),
        row(3, sid=11, user="bob", user_id=6, marks=[(1.0, 2.0, 0)], fwhm=None),
    ]
    path = tmp_path / "export.csv"
    assert write_export(rows, path) == 3
    with open(path) as fh:
        assert next(csv.reader(fh)) == COLUMNS
    parsed = read_export(path)
    assert parsed.report["rows_read"] == 3 and parsed.report["rows_used"] == 3
    assert parsed.report["rows_skipped"] == {} and parsed.report["clicks_dropped"] == {}
    c = parsed.clicks
    assert list(c["classification_id"]) == [1, 1, 3]
    np.testing.assert_allclose(c[["x", "y"]].to_numpy(), [[10, 20], [50.5, 60.25], [1, 2]])
    assert list(c["tool"]) == [0, 1, 0]
    cl = parsed.classifications.set_index("classification_id")
    assert cl.loc[2, "n_marks"] == 0 and not cl.loc[2, "logged_in"]  # empty classification kept
    assert cl.loc[2, "user"] == "name:not-logged-in-abc" and cl.loc[1, "user"] == "id:5"
    assert cl.loc[1, "fwhm_px"] == 4.0 and np.isnan(cl.loc[3, "fwhm_px"])
    assert parsed.report["classifications_without_fwhm"] == 1
    assert (cl["width"] == 100).all()


def test_simulated_export_is_parsed(tiny_export, tiny_survey, tiny_config):
    parsed = read_export(tiny_export["path"])
    n_sub = len(tiny_survey["manifest"])
    k = tiny_config["volunteers"]["classifications_per_subject"]
    assert parsed.report["rows_read"] == n_sub * k
    assert parsed.report["subjects"] == n_sub
    assert parsed.report["rows_used"] + sum(parsed.report["rows_skipped"].values()) == n_sub * k
    assert len(parsed.clicks) > 0
    # the same volunteer never classifies a subject twice
    assert not parsed.classifications.duplicated(["subject_id", "user"]).any()


def _write_raw(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.get(c, "") for c in COLUMNS] if isinstance(r, dict) else r)


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    good = row(1)
    bad_json = dict(row(2, user="b", user_id=2), annotations='[{"task": "T0", "value": [{"x": 1')
    no_dims = row(3, user="c", user_id=3)
    meta = json.loads(no_dims["metadata"])
    del meta["subject_dimensions"]
    no_dims["metadata"] = json.dumps(meta)
    bad_meta = dict(row(4, user="d", user_id=4), metadata="{not json")
    bad_subject = dict(row(5, user="e", user_id=7), subject_ids="abc")
    outside = row(6, user="f", user_id=8, marks=[(150.0, 20.0, 0), (-1.0, 5.0, 1), (30.0, 30.0, 0)])
    tool_index = dict(row(7, user="g", user_id=9))
    tool_index["annotations"] = json.dumps(
        [{"task": "T0", "value": [{"x": 5.0, "y": 6.0, "toolIndex": 1}, {"x": 7.0, "y": 8.0}]}]
    )
    duplicate = row(8)  # alice on subject 10 again
    other_task = dict(row(9, user="h", user_id=11))
    other_task["annotations"] = json.dumps([{"task": "T1", "value": [{"x": 5.0, "y": 6.0, "tool": 0}]}])
    nan_click = dict(row(10, user="i", user_id=12))
    nan_click["annotations"] = json.dumps([{"task": "T0", "value": [{"x": "NaN", "y": 6.0, "tool": 0}]}])
    no_user = dict(row(11), user_name="", user_id="")
    short = ["12", "j"]  # truncated line
    rows = [good, bad_json, no_dims, bad_meta, bad_subject, outside, tool_index, duplicate, other_task,
            nan_click, no_user, short]
    path = tmp_path / "export.csv"
    _write_raw(path, rows)
    parsed = read_export(path)
    rep = parsed.report
    assert rep["rows_read"] == 12
    assert rep["rows_skipped"] == {
        "bad_annotations_json": 1, "missing_subject_dimensions": 1, "bad_metadata_json": 1,
        "bad_subject_id": 1, "duplicate_classification": 1, "missing_user": 1, "wrong_field_count": 1,
    }
    assert rep["clicks_dropped"] == {"click_outside_image": 2, "click_bad_tool": 1, "click_bad_coordinates": 1}
    assert rep["rows_used"] == 5
    lines = {e["line"]: e["reason"] for e in rep["examples"]}
    assert lines[3] == "bad_annotations_json"  # header is line 1, row 2 is line 3
    c = parsed.clicks.set_index("classification_id")
    assert c.loc[7, "tool"] == 1  # toolIndex understood
    assert c.loc[6, "x"] == 30.0
    assert 9 not in c.index  # marks of another task are not clump marks


def test_workflow_filter(tmp_path):
    a = row(1)
    b = dict(row(2, user="b", user_id=2), workflow_id="99")
    path = tmp_path / "export.csv"
    write_export([a, b], path)
    parsed = read_export(path, workflow_id=1)
    assert parsed.report["rows_used"] == 1 and parsed.report["rows_skipped"] == {"other_workflow": 1}


def test_mixed_workflow_versions(tmp_path):
    """Real exports mix workflow versions; rows older than min_workflow_version are counted and
    left out (compared as numbers: 10.1 is newer than 9.30), unreadable versions too."""
    rows = [row(1), dict(row(2, user="b", user_id=2), workflow_version="10.1"),
            dict(row(3, user="c", user_id=3), workflow_version="9.30"),
            dict(row(4, user="d", user_id=4), workflow_version="draft")]
    path = tmp_path / "export.csv"
    write_export(rows, path)
    parsed = read_export(path, min_workflow_version="9.31")
    assert parsed.classifications["classification_id"].tolist() == [2]
    assert parsed.report["rows_skipped"] == {"old_workflow_version": 2, "bad_workflow_version": 1}
    assert [e["reason"] for e in parsed.report["examples"]] == ["bad_workflow_version"]
    assert read_export(path).report["rows_used"] == 4
    with pytest.raises(ValueError, match="min_workflow_version 'v2' is not a version"):
        read_export(path, min_workflow_version="v2")


def test_not_an_export_names_file_and_columns(tmp_path):
    path = tmp_path / "subjects.csv"
    path.write_text("subject_id,ra,dec\n1,2,3\n")
    with pytest.raises(ExportFormatError, match=r"subjects\.csv.*missing column\(s\) classification_id"):
        read_export(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ExportFormatError, match="empty.csv: empty file"):
        read_export(empty)


def test_overflowing_values_are_skipped_not_fatal(tmp_path):
    inf_tool = row(1)
    inf_tool["annotations"] = json.dumps([{"task": "T0", "value": [{"x": 5.0, "y": 6.0, "tool": 0}]}]).replace(
        '"tool": 0', '"tool": Infinity')
    huge_x = row(2, user="b", user_id=2)
    huge_x["annotations"] = '[{"task": "T0", "value": [{"x": ' + "9" * 400 + ', "y": 6.0, "tool": 0}]}]'
    huge_width = row(3, user="c", user_id=3)
    huge_width["metadata"] = huge_width["metadata"].replace('"naturalWidth":100', '"naturalWidth":' + "9" * 400)
    huge_id = dict(row(4, user="d", user_id=4), classification_id="9" * 20)
    path = tmp_path / "export.csv"
    _write_raw(path, [inf_tool, huge_x, huge_width, huge_id])
    rep = read_export(path).report
    assert rep["rows_skipped"] == {"missing_subject_dimensions": 1, "bad_classification_id": 1}
    assert rep["clicks_dropped"] == {"click_bad_tool": 1, "click_bad_coordinates": 1}


def test_repeated_classification_id_drops_its_clicks(tmp_path):
    first = row(7, marks=[(10.0, 20.0, 0)])
    again = dict(row(7, sid=11, user="b", user_id=2, marks=[(30.0, 40.0, 0), (50.0, 60.0, 1)]),
                 created_at="2020-01-02 00:00:00 UTC")
    path = tmp_path / "export.csv"
    write_export([first, again], path)
    parsed = read_export(path)
    assert parsed.report["rows_skipped"] == {"duplicate_classification_id": 1}
    assert parsed.clicks[["x", "y"]].values.tolist() == [[10.0, 20.0]]
    assert parsed.classifications["n_marks"].tolist() == [1]


def test_chunked_parse_matches_one_piece_with_multiline_fields_and_stray_quotes(tmp_path):
    """Quoted fields holding newlines and a bare quote inside an unquoted field: splitting the
    file into byte ranges must not change what is read, nor the line numbers reported."""
    rows = []
    for k in range(40):
        r = row(k + 1, sid=10 + k % 7, user=f"u{k}", user_id=100 + k, marks=[(5.0 + k, 6.0, k % 2)])
        r["workflow_name"] = "Clump\nScout" if k % 3 == 0 else "Clump Scout"
        if k == 5:
            r["user_ip"] = 'bob"s'  # a bare quote: csv keeps it as a character
        if k == 20:
            r["annotations"] = r["annotations"][:10]  # one damaged row, two lines long
        rows.append(r)
    path = tmp_path / "export.csv"
    _write_raw(path, rows)
    whole = read_export(path, chunk_bytes=10**9)
    for chunk_bytes in (700, 1500, 4000):
        for workers in (1, 2):
            part = read_export(path, chunk_bytes=chunk_bytes, workers=workers)
            assert part.report == dict(whole.report)
            pd.testing.assert_frame_equal(part.clicks, whole.clicks)
            pd.testing.assert_frame_equal(part.classifications, whole.classifications)
    assert whole.report["rows_used"] == 39
    # row k starts on line 2 + k + (number of earlier two-line rows)
    assert whole.report["examples"] == [{"line": 2 + 20 + 7, "reason": "bad_annotations_json"}]


def test_time_order_is_pandas_stable_sort():
    """Exports are sorted by time stamp (as strings), ties by classification id, missing times
    last, as DataFrame.sort_values orders them, whether nearly sorted already or shuffled."""
    from clumpfinder.data.zooniverse import time_order

    rng = np.random.default_rng(0)
    stamps = [f"2020-01-0{d} 0{h}:00:00 UTC" for d, h in zip(rng.integers(1, 4, 300), rng.integers(0, 3, 300))]
    df = pd.DataFrame({"created_at": pd.array(stamps, dtype="str"), "classification_id": rng.integers(0, 50, 300)})
    df.loc[rng.choice(300, 20, replace=False), "created_at"] = np.nan
    for frame in (df, df.sort_values("created_at", kind="stable"), df.iloc[::-1]):
        expected = frame.sort_values(["created_at", "classification_id"], kind="stable").index
        assert frame.index[time_order(frame["created_at"], frame["classification_id"])].equals(expected)


def test_line_breaks_other_than_newline_stay_inside_fields(tmp_path):
    """Rows end at a newline only: a carriage return or a Unicode line separator in a quoted
    field is part of the field, and line numbers count newlines."""
    rows = [dict(row(1), workflow_name="Clump\rScout\u2028(beta)"), dict(row(2, user="b", user_id=2), user_ip="x\ny"),
            dict(row(3, user="c", user_id=3), annotations="[")]
    path = tmp_path / "export.csv"
    write_export(rows, path)
    parsed = read_export(path)
    assert parsed.report["rows_used"] == 2 and parsed.report["rows_read"] == 3
    assert parsed.report["examples"] == [{"line": 5, "reason": "bad_annotations_json"}]  # row 2 is two lines


def test_chunk_without_usable_rows_changes_nothing(tmp_path):
    """A byte range holding only rows of another workflow adds no rows, and the tables (their
    column types too) are those of a parse in one piece."""
    rows = [dict(row(k, user=f"u{k}", user_id=k), workflow_id="99") for k in range(1, 30)]
    rows += [row(100 + k, user=f"v{k}", user_id=100 + k) for k in range(30)]
    path = tmp_path / "export.csv"
    write_export(rows, path)
    whole = read_export(path, workflow_id=1)
    part = read_export(path, workflow_id=1, chunk_bytes=3000, workers=2)
    assert part.report == whole.report and whole.report["rows_skipped"] == {"other_workflow": 29}
    pd.testing.assert_frame_equal(part.classifications, whole.classifications)
    pd.testing.assert_frame_equal(part.clicks, whole.clicks)


@pytest.mark.parametrize("workers", [1, 2])
def test_export_with_a_header_only_is_empty_not_an_error(tmp_path, workers):
    from clumpfinder.data.zooniverse import CLICK_COLUMNS

    path = tmp_path / "export.csv"
    write_export([], path)
    parsed = read_export(path, workers=workers, chunk_bytes=1)
    assert parsed.report["rows_read"] == 0 and parsed.report["volunteers"] == 0
    assert parsed.classifications.empty and list(parsed.clicks.columns) == CLICK_COLUMNS


def _dimensions_reference(metadata):
    """The size as read before outcomes were remembered: a regex for the key, a full decode."""
    import math
    import re

    s = metadata.strip()
    if not (s.startswith("{") and s.endswith("}")):
        return "bad_metadata_json"
    m = re.search(r'"subject_dimensions"\s*:\s*', s)
    if m is None:
        return "missing_subject_dimensions"
    try:
        dims = json.JSONDecoder().raw_decode(s, m.end())[0][0]
        width, height = float(dims["naturalWidth"]), float(dims["naturalHeight"])
        if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
            raise ValueError
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        return "missing_subject_dimensions"
    return width, height


def test_remembered_image_sizes_are_the_sizes_decoded():
    """Metadata in many shapes, each value seen several times in random order (the remembered
    outcome is used from the second time on): every row gets what a full decode gives."""
    from clumpfinder.data.zooniverse import _dimensions, _Skip

    values = ['[{"naturalWidth":96,"naturalHeight":96}]', '[{"naturalWidth": 96, "naturalHeight": 80}]',
              '[{"naturalWidth":"424","naturalHeight":424.0,"label":"a]b"}]', '[[1], {"naturalWidth":5}]',
              '[{"naturalWidth":-1,"naturalHeight":5}]', '[{"naturalWidth":1e999,"naturalHeight":5}]',
              '[{"naturalWidth":' + "9" * 400 + ',"naturalHeight":5}]', '{"naturalWidth":5,"naturalHeight":5}',
              '[{"naturalWidth":5,"naturalHeight":5}', '[]', '"x"', '[{"naturalWidth":5,"naturalHeight":NaN}]',
              '[{"naturalWidth":7,"naturalHeight":7}] ,"more":[1]',
              '[{"naturalWidth":3,"naturalHeight":4,"k":[]}]',  # the same text up to ']' as the next,
              '[{"naturalWidth":3,"naturalHeight":4,"k":[], "naturalWidth":9}]']  # which reads (9, 4)
    shapes = ['{{"a":1,"subject_dimensions":{v}}}', '{{"subject_dimensions" :  {v},"b":2}}',
              '{{"x":"subject_dimensions","subject_dimensions"\n:{v}}}', '{{"subject_dimensions":"no","z":1}}',
              '  {{"subject_dimensions":{v}}} ', '[{v}]', '{{"other":{v}}}']
    metadata = [shape.format(v=v) for v in values for shape in shapes] * 3
    np.random.default_rng(0).shuffle(metadata)
    seen = {}
    for m in metadata:
        try:
            got = _dimensions(m, seen)
        except _Skip as skip:
            got = skip.reason
        assert got == _dimensions_reference(m), m
    assert len(seen) >= 5


# ------------------------------------------------------------------ drawing tools other than points

def _with_marks(cid, marks, user="alice", user_id=5, width=100, height=100):
    """A row whose T0 annotation holds ``marks`` as given (dicts)."""
    r = row(cid, user=user, user_id=user_id, width=width, height=height)
    r["annotations"] = json.dumps([{"task": "T0", "task_label": "Mark", "value": marks}])
    return r


POLY = [{"x": 1.0, "y": 1.0}, {"x": 5.0, "y": 1.0}, {"x": 3.0, "y": 4.0}]
#: older exports: the type follows from the keys
OLD_STYLE = [
    {"x": 10.0, "y": 20.0, "tool": 0, "frame": 0, "details": []},                    # point
    {"x": 30.0, "y": 40.0, "r": 5.0, "tool": 0},                                     # circle, centre (30, 40)
    {"x": 50.0, "y": 60.0, "rx": 5.0, "ry": 3.0, "angle": 20.0, "tool": 1},          # ellipse, centre (50, 60)
    {"x": 10.0, "y": 10.0, "width": 20.0, "height": 6.0, "tool": 0},                 # rectangle, centre (20, 13)
    {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0, "tool": 0},                       # line
    {"points": POLY, "closed": True, "tool": 0},                                     # polygon
    {"x": 40.0, "y": 40.0, "width": 8.0, "height": 4.0, "angle": 30.0, "tool": 0},   # rotated rectangle: other
]
#: front-end-monorepo (classifier 2.x) exports: toolType decides, shapes give their centre
NEW_STYLE = [
    {"toolType": "point", "x": 11.0, "y": 21.0, "toolIndex": 0, "frame": 0},
    {"toolType": "circle", "x_center": 31.0, "y_center": 41.0, "r": 5.0, "toolIndex": 0},
    {"toolType": "ellipse", "x_center": 51.0, "y_center": 61.0, "rx": 5.0, "ry": 3.0, "angle": 0.0, "toolIndex": 1},
    {"toolType": "rectangle", "x_center": 70.0, "y_center": 80.0, "width": 10.0, "height": 4.0, "toolIndex": 0},
    {"toolType": "rectangle", "x": 60.0, "y": 30.0, "width": 20.0, "height": 10.0, "toolIndex": 1},  # top-left x, y
    {"toolType": "line", "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0, "toolIndex": 0},
    {"toolType": "polygon", "points": POLY, "toolIndex": 0},
    {"toolType": "freehandLine", "pathX": [1.0, 2.0], "pathY": [3.0, 4.0], "toolIndex": 0},
    {"toolType": "bezier", "points": POLY, "toolIndex": 0},
    {"toolType": "transcriptionLine", "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0, "toolIndex": 0},
    {"toolType": "Point", "x": 12.0, "y": 22.0, "r": 3.0, "toolIndex": 0},  # toolType wins over the keys
]


@pytest.fixture()
def drawn_export(tmp_path):
    path = tmp_path / "export.csv"
    write_export([_with_marks(1, OLD_STYLE), _with_marks(2, NEW_STYLE, user="bob", user_id=6)], path)
    return path


def test_marks_are_counted_by_type_and_only_points_are_clicks_by_default(drawn_export):
    rep = read_export(drawn_export).report
    assert rep["marks_read"] == len(OLD_STYLE) + len(NEW_STYLE)
    assert rep["marks_by_type"] == {"point": 3, "circle": 2, "ellipse": 2, "rectangle": 3, "line": 2,
                                    "polygon": 2, "freehand": 1, "bezier": 1, "other": 2}
    assert rep["marks_not_clicks"] == {"circle": 2, "ellipse": 2, "rectangle": 3, "line": 2, "polygon": 2,
                                       "freehand": 1, "bezier": 1, "other": 2}
    assert rep["clicks_dropped"] == {}  # not clicks is not bad coordinates
    parsed = read_export(drawn_export)
    assert parsed.clicks[["x", "y"]].values.tolist() == [[10.0, 20.0], [11.0, 21.0], [12.0, 22.0]]
    assert parsed.classifications["n_marks"].tolist() == [1, 2]


def test_configured_shape_centres_are_clicks(drawn_export):
    parsed = read_export(drawn_export, shape_centres=["circle", "ellipse", "rectangle"])
    rep = parsed.report
    assert rep["marks_not_clicks"] == {"line": 2, "polygon": 2, "freehand": 1, "bezier": 1, "other": 2}
    assert rep["clicks_dropped"] == {} and rep["clicks_used"] == 3 + 2 + 2 + 3
    got = {cid: sorted(map(tuple, c[["x", "y", "tool"]].values.tolist()))
           for cid, c in parsed.clicks.groupby("classification_id")}
    assert got[1] == [(10.0, 20.0, 0), (20.0, 13.0, 0), (30.0, 40.0, 0), (50.0, 60.0, 1)]  # rectangle: x + width/2
    assert got[2] == [(11.0, 21.0, 0), (12.0, 22.0, 0), (31.0, 41.0, 0), (51.0, 61.0, 1), (70.0, 35.0, 1),
                      (70.0, 80.0, 0)]
    only = read_export(drawn_export, shape_centres=["rectangle"]).report
    assert only["marks_not_clicks"]["circle"] == 2 and "rectangle" not in only["marks_not_clicks"]
    assert only["clicks_used"] == 3 + 3
    with pytest.raises(ValueError, match=r"shape_centres \['line'\] not among circle, ellipse, rectangle"):
        read_export(drawn_export, shape_centres=["line"])


def test_configured_shapes_with_bad_numbers_are_dropped_like_points(tmp_path):
    marks = [{"x": "a", "y": 5.0, "r": 2.0, "tool": 0},                                   # circle, bad x
             {"toolType": "rectangle", "x": 90.0, "y": 10.0, "width": 30.0, "height": 4.0,
              "toolIndex": 0},  # centre x = 105: outside
             {"toolType": "ellipse", "x_center": None, "y_center": 5.0, "rx": 1.0, "ry": 1.0, "toolIndex": 0},
             {"x": 5.0, "y": 5.0, "width": "wide", "height": 2.0, "tool": 0},             # rectangle, bad width
             {"x": 5.0, "y": 5.0, "r": 2.0, "tool": 7},                                   # circle, bad tool
             {"x1": "a", "y1": None, "x2": 1.0, "y2": 1.0, "tool": 0},                    # a line is never a click
             {"toolType": "point", "x": float("nan"), "y": 1.0, "toolIndex": 0}]
    path = tmp_path / "export.csv"
    write_export([_with_marks(1, marks)], path)
    rep = read_export(path, shape_centres=["circle", "ellipse", "rectangle"]).report
    assert rep["clicks_dropped"] == {"click_bad_coordinates": 4, "click_outside_image": 1, "click_bad_tool": 1}
    assert rep["marks_not_clicks"] == {"line": 1} and rep["clicks_used"] == 0
    rep = read_export(path).report  # unconfigured, the shapes are not clicks whatever their numbers
    assert rep["clicks_dropped"] == {"click_bad_coordinates": 1}
    assert rep["marks_not_clicks"] == {"circle": 2, "ellipse": 1, "rectangle": 2, "line": 1}


# ------------------------------------------------------------------ a yes/no question task

def _with_answer(r, value, task="T1", present=True):
    ann = json.loads(r["annotations"])
    if present:
        ann.append({"task": task, "task_label": "Does this galaxy have clumps?", "value": value})
    return dict(r, annotations=json.dumps(ann))


def _question_export(path, values):
    """One classification per value (each by its own volunteer, one click each); ``...``: no T1."""
    rows = [_with_answer(row(k + 1, user=f"u{k}", user_id=100 + k), v, present=v is not ...)
            for k, v in enumerate(values)]
    write_export(rows, path)
    return path


def test_question_with_index_answers(tmp_path):
    values = [0, 1, None, ..., "0", [0, 2], [1], [], "Yes", 2, True, ["Yes"]]
    path = _question_export(tmp_path / "export.csv", values)
    parsed = read_export(path, question={"task": "T1", "yes_answer": 0})
    assert parsed.classifications["question_answer"].tolist() == [1, 0, -1, -1, 1, 1, 0, 0, -1, 0, -1, -1]
    assert parsed.report["question"]["answers"] == {"yes": 3, "no": 4, "task_absent": 1, "unanswered": 1,
                                                    "not_comparable": 3}
    assert parsed.report["clicks_used"] == len(values)  # the question's rows keep their marks
    # without a question the column says absent throughout, and no question report
    plain = read_export(path)
    assert (plain.classifications["question_answer"] == -1).all() and "question" not in plain.report
    # the same when the file is parsed in pieces
    part = read_export(path, question={"task": "T1", "yes_answer": 0}, chunk_bytes=700, workers=2)
    pd.testing.assert_frame_equal(part.classifications, parsed.classifications)
    assert part.report == parsed.report


def test_question_with_label_answers(tmp_path):
    values = ["Yes", "No", " YES ", ["Yes", "Bar"], ["no"], 0, None, ...]
    path = _question_export(tmp_path / "export.csv", values)
    parsed = read_export(path, question={"task": "T1", "yes_answer": "yes"})
    assert parsed.classifications["question_answer"].tolist() == [1, 0, 1, 1, 0, -1, -1, -1]
    assert parsed.report["question"]["answers"] == {"yes": 3, "no": 2, "task_absent": 1, "unanswered": 1,
                                                    "not_comparable": 1}
    assert parsed.report["question"]["answers_seen"][:3] == ["Yes", "No", " YES "]


def test_question_task_that_never_appears_is_an_error(tmp_path):
    path = _question_export(tmp_path / "export.csv", [0, 1, ...])
    with pytest.raises(ValueError, match=r"export\.csv: the question task 'T9'.*appears in none of the 3 "
                                         r"classifications used; tasks seen: T0, T1"):
        read_export(path, question={"task": "T9", "yes_answer": 0})
    with pytest.raises(ValueError, match=r"labels\.csv: consensus\.swap\.question\.yes_answer 0 is an answer index, but no "
                                         r"answer to the question task 'T1'.*answers seen: \['Yes', 'No'\]"):
        read_export(_question_export(tmp_path / "labels.csv", ["Yes", "No"]), question={"task": "T1", "yes_answer": 0})
    with pytest.raises(ValueError, match="is the marking task"):
        read_export(path, question={"task": "T0", "yes_answer": 0})
    with pytest.raises(ValueError, match="question.yes_answer must be an answer index"):
        read_export(path, question={"task": "T1", "yes_answer": -1})
