"""Zooniverse classification exports: write (for simulated volunteers) and read (sim or real).

The format is the one the Zooniverse project builder exports (one CSV row per classification,
JSON in the ``metadata``, ``annotations`` and ``subject_data`` columns; ``docs/real-data.md``
says which fields are read). The reader never crashes on a bad row: it skips the row
(or the click) and counts the reason, so a report says exactly what was dropped and where.

What is read: the image size (``metadata.subject_dimensions``), the PSF FWHM (``subject_data``),
the marks of the marking task (``task``) and, optionally, the answer to a yes/no question task
(:class:`Question`) per classification.

Marks of every drawing tool are read, and each gets a type. The type is the mark's ``toolType``
when it has one (classifier 2.x, front-end-monorepo exports: "point", "circle", "ellipse",
"rectangle", "line", "polygon", "bezier", "freehandLine" and the other freehand tools, which all
count as "freehand"; any other value is "other"). Older exports carry only ``tool`` and the keys of
the shape, and the keys decide, first match wins: ``points`` -> polygon (a freehand or bezier
drawing has the same keys and counts as a polygon), ``x1``/``x2`` -> line, ``r`` -> circle,
``rx``/``ry`` -> ellipse, ``width``/``height`` -> rectangle (with an ``angle`` -> "other", a
rotated rectangle), none of these -> point (so a point mark with broken coordinates is still a
point and counted as such). A mark with none of these keys and no ``toolType`` is a point at once,
without further look-up: that is every mark of Clump Scout.

Points are clicks. Circles, ellipses and rectangles are clicks at their centre when their type is
in ``shape_centres`` (by default none: Clump Scout used points only, and the box consensus models
clicks); the centre is ``x_center``/``y_center`` when given (front-end-monorepo shapes), else
``x, y`` for circles and ellipses and ``x + width/2, y + height/2`` for rectangles (``x, y`` is
the top-left corner). Lines, polygons, freehand drawings, beziers and unknown types are never
clicks. The report counts marks by type (``marks_by_type``), the marks that are not clicks by type
(``marks_not_clicks``), and the clicks dropped for a problem (``clicks_dropped``: bad coordinates,
bad tool index, outside the image), which applies to points and to configured shapes alike.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import math
import mmap
import multiprocessing
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clumpfinder.io import atomic_path

log = logging.getLogger(__name__)

COLUMNS = [
    "classification_id", "user_name", "user_id", "user_ip", "workflow_id", "workflow_name",
    "workflow_version", "created_at", "gold_standard", "expert", "metadata", "annotations",
    "subject_data", "subject_ids",
]
REQUIRED = ["classification_id", "user_name", "user_id", "metadata", "annotations", "subject_data",
            "subject_ids"]
#: subject_data keys that may carry the PSF FWHM in image pixels (Zooniverse hides keys
#: starting with '#' or '!' from volunteers, so both spellings occur)
FWHM_KEYS = ("fwhm_pixels", "psf_fwhm_pixels", "FWHM_pixels", "fwhm_pix")
TOOL_LABELS = ("Clump", "Odd clump")
CLICK_COLUMNS = ["classification_id", "subject_id", "user", "x", "y", "tool"]
CLASSIFICATION_COLUMNS = ["classification_id", "subject_id", "user", "logged_in", "n_marks", "width",
                          "height", "fwhm_px", "workflow_version", "created_at", "question_answer"]
#: column types as a chunk holds them (``user`` as codes into the chunk's list of names)
CLASSIFICATION_DTYPES = {"classification_id": np.int64, "subject_id": np.int64, "user": np.int64, "logged_in": bool,
                         "n_marks": np.int64, "width": float, "height": float, "fwhm_px": float,
                         "workflow_version": object, "created_at": object, "question_answer": np.int8}
CLICK_DTYPES = {"row": np.int64, "x": float, "y": float, "tool": np.int64}  # a chunk's clicks point at its rows
#: ``question_answer`` of a classification: the question task's answer was the ``yes`` answer, another
#: answer, or there is none (no question configured, the task not in the classification, no answer given,
#: or an answer that cannot be compared with ``yes``)
ANSWER_YES, ANSWER_NO, ANSWER_ABSENT = 1, 0, -1
_UNANSWERED, _NOT_COMPARABLE = -2, -3  # kinds of absent while parsing; -1 in the table
ANSWER_KINDS = {ANSWER_YES: "yes", ANSWER_NO: "no", ANSWER_ABSENT: "task_absent", _UNANSWERED: "unanswered",
                _NOT_COMPARABLE: "not_comparable"}
#: drawing-tool types whose centre can count as a click (``consensus.shape_centres``)
CENTRE_TYPES = ("circle", "ellipse", "rectangle")
#: a mark's ``toolType`` (lower case) -> its type; other values are "other"
TOOL_TYPES = {"point": "point", "circle": "circle", "ellipse": "ellipse", "rectangle": "rectangle", "line": "line",
              "polygon": "polygon", "bezier": "bezier", "freehandline": "freehand", "freehandshape": "freehand",
              "freehandsegmentline": "freehand", "freehandsegmentshape": "freehand"}
#: a mark with none of these keys is a plain point, read without looking up its type
_SHAPE_KEYS = frozenset({"toolType", "points", "x1", "y1", "x2", "y2", "r", "rx", "ry", "width", "height",
                         "x_center", "y_center"})


def classification_row(
    *, classification_id: int, user_name: str, user_id: int | None, user_ip: str, workflow: dict,
    created_at: str, started_at: str, finished_at: str, subject_id: int, subject_meta: dict,
    width: int, height: int, marks: Iterable[tuple[float, float, int]], task: str = "T0",
) -> dict[str, str]:
    """One export row in the Zooniverse format (all values as CSV strings)."""
    value = [
        {"x": round(float(x), 2), "y": round(float(y), 2), "tool": int(t), "frame": 0, "details": [],
         "tool_label": TOOL_LABELS[int(t)]}
        for x, y, t in marks
    ]
    metadata = {
        "source": "api",
        "session": hashlib.sha1(user_name.encode()).hexdigest()[:12],
        "viewport": {"width": 1600, "height": 900},
        "started_at": started_at,
        "finished_at": finished_at,
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) clumpfinder-simulated-volunteer",
        "utc_offset": "0",
        "user_language": "en",
        "subject_dimensions": [
            {"clientWidth": 560, "clientHeight": 560, "naturalWidth": width, "naturalHeight": height}
        ],
        "classifier_version": "2.0",
        "workflow_version": workflow["version"],
    }
    annotations = [{"task": task, "task_label": "Mark any clumps you see", "value": value}]
    return {
        "classification_id": str(classification_id),
        "user_name": user_name,
        "user_id": "" if user_id is None else str(user_id),
        "user_ip": user_ip,
        "workflow_id": str(workflow["id"]),
        "workflow_name": workflow["name"],
        "workflow_version": str(workflow["version"]),
        "created_at": created_at,
        "gold_standard": "",
        "expert": "",
        "metadata": json.dumps(metadata, separators=(",", ":")),
        "annotations": json.dumps(annotations, separators=(",", ":")),
        "subject_data": json.dumps({str(subject_id): {"retired": None, **subject_meta}},
                                   separators=(",", ":")),
        "subject_ids": str(subject_id),
    }


def write_export(rows: Iterable[dict[str, str]], path: str | Path) -> int:
    """Write export rows atomically; returns the number of rows."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS, quoting=csv.QUOTE_MINIMAL)
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                n += 1
    return n


@dataclass(frozen=True)
class Question:
    """A yes/no question task whose answer is SWAP's vote (``consensus.swap.question``).

    ``task`` is the task key ("T1"); ``yes`` (config key ``yes_answer``) the answer meaning "has
    clumps": its index (0) where the export gives answers by index, or its label ("Yes", compared
    case-insensitively and without surrounding spaces) where it gives labels. A single-answer
    question's value is one answer, a multiple-answer question's a list: "yes" when the ``yes``
    answer is in it, else "no" (an empty list is an answer: nothing chosen). A null value is no
    answer; an answer of the other kind (a label where ``yes`` is an index, or the reverse; a digit
    string counts as an index) cannot be compared and is no answer either.
    """

    task: str
    yes: int | str

    @classmethod
    def from_config(cls, cfg: "Question | dict[str, Any] | None") -> "Question | None":
        if cfg is None or isinstance(cfg, Question):
            return cfg
        if not isinstance(cfg, dict) or set(cfg) != {"task", "yes_answer"}:
            raise ValueError(f"consensus.swap.question must be null or {{task: 'T1', yes_answer: 0}}, got {cfg!r}")
        task, yes = cfg["task"], cfg["yes_answer"]
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"consensus.swap.question.task must be a task key such as 'T1', got {task!r}")
        if isinstance(yes, bool) or not (isinstance(yes, int) and yes >= 0 or isinstance(yes, str) and yes.strip()):
            raise ValueError("consensus.swap.question.yes_answer must be an answer index (0, 1, ...) or an answer "
                             f"label ('Yes'), got {yes!r}")
        return cls(task, yes)

    def _is_yes(self, v: Any) -> bool | None:
        """Whether one answer is the ``yes`` answer; None when it cannot be compared."""
        if isinstance(v, bool):
            return None
        if isinstance(self.yes, str):
            return v.strip().casefold() == self.yes.strip().casefold() if isinstance(v, str) else None
        if isinstance(v, int):
            return v == self.yes
        if isinstance(v, str) and v.strip().isdecimal():
            return int(v) == self.yes
        if isinstance(v, float) and v.is_integer():
            return int(v) == self.yes
        return None

    def answer(self, value: Any) -> int:
        """ANSWER_YES, ANSWER_NO, or why there is no answer (_UNANSWERED, _NOT_COMPARABLE)."""
        if value is None:
            return _UNANSWERED
        if isinstance(value, list):
            said = [self._is_yes(v) for v in value]
            if any(said):
                return ANSWER_YES
            return _NOT_COMPARABLE if None in said else ANSWER_NO
        said = self._is_yes(value)
        return _NOT_COMPARABLE if said is None else int(said)


@dataclass
class ParsedExport:
    """Clicks and classifications read from an export, with a report of what was dropped."""

    classifications: pd.DataFrame
    clicks: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)


class ExportFormatError(ValueError):
    """The file as a whole is not a classification export (e.g. required columns missing)."""


def _fwhm_from_subject_data(meta: dict[str, Any]) -> float:
    for key, value in meta.items():
        if key.lstrip("#!") in FWHM_KEYS:
            try:
                f = float(value)
            except (TypeError, ValueError, OverflowError):
                return math.nan
            return f if f > 0 and math.isfinite(f) else math.nan
    return math.nan


class _Skip(Exception):
    def __init__(self, reason: str):
        self.reason = reason


_DECODER = json.JSONDecoder()
INT64_MAX = 2**63 - 1
_DIMENSIONS_KEY = '"subject_dimensions"'
_COLON = re.compile(r"\s*:\s*")
#: bytes per parse chunk: a chunk's text and its rows must fit comfortably in memory
CHUNK_BYTES = 32 * 2**20


def _dimensions(metadata: str, seen: dict[str, tuple[float, float] | None]) -> tuple[float, float]:
    """Image size (naturalWidth, naturalHeight) from the metadata JSON.

    Only the ``subject_dimensions`` value is decoded (the rest of the metadata is not used), which
    keeps a multi-GB export fast to read; a value that does not look like a JSON object at all is
    still reported as bad metadata. ``seen`` keeps the outcome per value text up to its first
    ']' when the value is exactly that text (a text decodes the same wherever it stands): a few
    sizes and screens cover most rows.
    """
    s = metadata.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise _Skip("bad_metadata_json")
    at = s.find(_DIMENSIONS_KEY)  # as a regex search for key, colon, but str.find is faster
    while at >= 0 and (colon := _COLON.match(s, at + len(_DIMENSIONS_KEY))) is None:
        at = s.find(_DIMENSIONS_KEY, at + 1)
    if at < 0:
        raise _Skip("missing_subject_dimensions")
    start = colon.end()
    text = s[start:s.find("]", start) + 1]
    if text in seen:
        size = seen[text]
    else:
        size, end = _decode_dimensions(s, start)
        if end == start + len(text):
            seen[text] = size
    if size is None:
        raise _Skip("missing_subject_dimensions")
    return size


def _decode_dimensions(s: str, start: int) -> tuple[tuple[float, float] | None, int]:
    """(size or None if unusable, where the value ends or -1 if it is not JSON)."""
    try:
        value, end = _DECODER.raw_decode(s, start)
    except ValueError:
        return None, -1
    try:
        dims = value[0]
        width, height = float(dims["naturalWidth"]), float(dims["naturalHeight"])
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        return None, end
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        return None, end
    return (width, height), end


def _fwhm(subject_data: str, sid: int) -> float:
    try:
        sdata = _DECODER.decode(subject_data) if subject_data else {}
        smeta = sdata.get(str(sid)) or next(iter(sdata.values()), {})
    except (TypeError, ValueError, AttributeError):
        return math.nan  # box size falls back to the configured default; counted by the caller
    return _fwhm_from_subject_data(smeta) if isinstance(smeta, dict) else math.nan


def _annotation_list(annotations: str) -> list[Any]:
    """The classification's annotations as a JSON list; a row whose annotations are not one is skipped."""
    try:
        parsed = _DECODER.decode(annotations)
    except (TypeError, ValueError):
        raise _Skip("bad_annotations_json") from None
    if not isinstance(parsed, list):
        raise _Skip("bad_annotations_json")
    return parsed


def _marks(annotations: str, task: str | None) -> list[dict[str, Any]]:
    parsed = _annotation_list(annotations)
    marks = []
    for ann in parsed:
        if not isinstance(ann, dict) or (task is not None and ann.get("task") != task):
            continue
        value = ann.get("value")
        if isinstance(value, list):
            marks.extend(v for v in value if isinstance(v, dict))
    return marks


def _marks_and_answer(annotations: str, task: str | None, question: Question,
                      out: "_Chunk") -> tuple[list[dict[str, Any]], int]:
    """As :func:`_marks`, and the answer to ``question`` (ANSWER_ABSENT when its task is not in the
    classification; its first annotation counts). Notes the tasks and a few answer values seen."""
    parsed = _annotation_list(annotations)
    marks = []
    answer = ANSWER_ABSENT
    for ann in parsed:
        if not isinstance(ann, dict):
            continue
        t = ann.get("task")
        if isinstance(t, str) and len(out.tasks_seen) < 50:
            out.tasks_seen.add(t)
        if t == question.task:
            if answer == ANSWER_ABSENT:
                value = ann.get("value")
                answer = question.answer(value)
                if len(out.answer_values) < 10:
                    out.answer_values.setdefault(value if isinstance(value, (str, int)) else
                                                 json.dumps(value)[:80], None)
            continue
        if task is not None and t != task:
            continue
        value = ann.get("value")
        if isinstance(value, list):
            marks.extend(v for v in value if isinstance(v, dict))
    return marks, answer


def _mark_type(mark: dict[str, Any]) -> str:
    """The mark's ``toolType`` when it has one, else the type its keys imply (module docstring)."""
    tool_type = mark.get("toolType")
    if isinstance(tool_type, str) and tool_type:
        return TOOL_TYPES.get(tool_type.lower(), "other")
    if "points" in mark:
        return "polygon"
    if "x1" in mark or "x2" in mark:
        return "line"
    if "r" in mark:
        return "circle"
    if "rx" in mark or "ry" in mark:
        return "ellipse"
    if "width" in mark or "height" in mark:
        return "other" if "angle" in mark else "rectangle"
    return "point"


def _parse_drawn(mark: dict[str, Any], width: float, height: float, centres: frozenset[str],
                 by_type: Counter) -> tuple[float, float, int] | None:
    """A mark that is not a plain point: the click it makes (a point, or the centre of a shape whose
    type is in ``centres``), or None when it is not a click. Counts the marks of other types than
    point in ``by_type``."""
    kind = _mark_type(mark)
    if kind == "point":
        return _parse_mark(mark, width, height)
    by_type[kind] += 1
    if kind not in centres:
        return None
    try:
        if "x_center" in mark or "y_center" in mark:  # front-end-monorepo shapes
            x, y = float(mark["x_center"]), float(mark["y_center"])
        else:
            x, y = float(mark["x"]), float(mark["y"])
            if kind == "rectangle":  # x, y is the top-left corner
                x, y = x + float(mark["width"]) / 2, y + float(mark["height"]) / 2
    except (KeyError, TypeError, ValueError, OverflowError):
        raise _Skip("click_bad_coordinates") from None
    # the centre is checked as a point would be (finite, tool index, inside the image)
    return _parse_mark({**{k: mark[k] for k in ("tool", "toolIndex") if k in mark}, "x": x, "y": y}, width, height)


def _parse_mark(mark: dict[str, Any], width: float, height: float) -> tuple[float, float, int]:
    try:
        x, y = float(mark["x"]), float(mark["y"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise _Skip("click_bad_coordinates") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise _Skip("click_bad_coordinates")
    tool = mark.get("tool", mark.get("toolIndex"))
    try:
        tool = int(tool)
    except (TypeError, ValueError, OverflowError):
        raise _Skip("click_bad_tool") from None
    if tool not in (0, 1):
        raise _Skip("click_bad_tool")
    if not (0.0 <= x <= width and 0.0 <= y <= height):
        raise _Skip("click_outside_image")
    return x, y, tool


@dataclass
class _Chunk:
    """What one byte range of the export yields: columns, counters and examples.

    Columns are arrays (``cls`` by CLASSIFICATION_COLUMNS, ``user`` as codes into ``users``;
    ``clicks`` row, x, y, tool): the parent builds each table once, and a worker sends back
    numbers and one copy of each volunteer's name instead of a table of strings.
    """

    cls: dict[str, np.ndarray] = field(default_factory=dict)
    users: list[str] = field(default_factory=list)
    clicks: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    by_type: Counter = field(default_factory=Counter)  # marks by type, points left out (they are the rest)
    tasks_seen: set = field(default_factory=set)  # with a question: annotation task keys (up to 50)
    answer_values: dict = field(default_factory=dict)  # with a question: its first few distinct values
    n_rows: int = 0
    n_marks: int = 0
    first_row_broken: bool = False  # a split inside a quoted field shows here


def _version(text: str) -> tuple[int, ...]:
    """'51.78' -> (51, 78); raises ValueError on anything else."""
    parts = tuple(int(p) for p in text.strip().split("."))
    if not parts or any(p < 0 for p in parts):
        raise ValueError(text)
    return parts


def _parse_chunk(path: str, start: int, end: int, first_line: int, header: list[str], task: str | None,
                 workflow_id: str | None, max_examples: int, min_version: tuple[int, ...] | None = None,
                 question: Question | None = None, shape_centres: frozenset[str] = frozenset()) -> _Chunk:
    """Parse the rows in bytes [start, end) of the export (``start`` is a row boundary and
    ``first_line`` its 1-based physical line number)."""
    out = _Chunk()
    with open(path, "rb") as fh:
        fh.seek(start)
        reader = csv.reader(_lines(fh.read(end - start).decode("utf-8", errors="replace")))
    ix = {name: header.index(name) for name in header}
    i_cid, i_sid, i_uid, i_uname = ix["classification_id"], ix["subject_ids"], ix["user_id"], ix["user_name"]
    i_meta, i_ann, i_sdata = ix["metadata"], ix["annotations"], ix["subject_data"]
    i_wf, i_ver, i_created = ix.get("workflow_id"), ix.get("workflow_version"), ix.get("created_at")
    n_fields = len(header)
    fwhm_cache: dict[int, float] = {}
    dims_seen: dict[str, tuple[float, float] | None] = {}
    user_code: dict[str, int] = {}
    cls_values: list = []  # row after row, CLASSIFICATION_DTYPES values each
    click_values: list = []  # CLICK_DTYPES values each
    answer = ANSWER_ABSENT  # without a question, every row's

    def note(line: int, reason: str) -> None:
        if len(out.examples) < max_examples:
            out.examples.append({"line": line, "reason": reason})

    while True:
        line = first_line + reader.line_num  # where the next row starts
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error:
            out.first_row_broken |= out.n_rows == 0
            out.n_rows += 1
            out.skipped["unreadable_csv_row"] += 1
            note(line, "unreadable_csv_row")
            continue
        out.n_rows += 1
        try:
            if len(values) != n_fields:
                out.first_row_broken |= out.n_rows == 1
                raise _Skip("wrong_field_count")
            if workflow_id is not None and (i_wf is None or values[i_wf] != workflow_id):
                raise _Skip("other_workflow")
            if min_version is not None:
                try:
                    if _version(values[i_ver] if i_ver is not None else "") < min_version:
                        raise _Skip("old_workflow_version")
                except ValueError:
                    raise _Skip("bad_workflow_version") from None
            try:
                cid = int(values[i_cid])
                if not 0 <= cid < INT64_MAX:
                    raise ValueError
            except ValueError:
                raise _Skip("bad_classification_id") from None
            try:
                sid = int(values[i_sid].split(";")[0])
                if not 0 <= sid < INT64_MAX:
                    raise ValueError
            except ValueError:
                raise _Skip("bad_subject_id") from None
            user_id, user_name = values[i_uid].strip(), values[i_uname].strip()
            if not user_id and not user_name:
                raise _Skip("missing_user")
            width, height = _dimensions(values[i_meta], dims_seen)
            if question is None:
                marks = _marks(values[i_ann], task)
            else:
                marks, answer = _marks_and_answer(values[i_ann], task, question, out)
        except _Skip as s:
            out.skipped[s.reason] += 1
            if s.reason not in ("other_workflow", "old_workflow_version"):
                note(line, s.reason)
            continue
        fwhm = fwhm_cache.get(sid)
        if fwhm is None:
            fwhm = _fwhm(values[i_sdata], sid)
            if not math.isnan(fwhm):  # subject metadata is fixed: parse it once per subject
                fwhm_cache[sid] = fwhm
        kept = 0
        for mark in marks:
            out.n_marks += 1
            try:
                if _SHAPE_KEYS.isdisjoint(mark):  # a plain point (every Clump Scout mark): no type look-up
                    x, y, tool = _parse_mark(mark, width, height)
                else:
                    click = _parse_drawn(mark, width, height, shape_centres, out.by_type)
                    if click is None:  # a mark, not a click (counted by type)
                        continue
                    x, y, tool = click
            except _Skip as s:
                out.dropped[s.reason] += 1
                continue
            click_values.extend((len(cls_values) // len(CLASSIFICATION_DTYPES), x, y, tool))  # at their row
            kept += 1
        user = f"id:{user_id}" if user_id else f"name:{user_name}"
        cls_values.extend((cid, sid, user_code.setdefault(user, len(user_code)), bool(user_id), kept,
                           width, height, fwhm, values[i_ver] if i_ver is not None else "",
                           values[i_created] if i_created is not None else "", answer))
    out.cls = _columns(cls_values, CLASSIFICATION_DTYPES)
    out.users = list(user_code)
    out.clicks = _columns(click_values, CLICK_DTYPES)
    return out


def _columns(values: list, dtypes: dict[str, Any]) -> dict[str, np.ndarray]:
    """One array per column from the values of row after row (a flat list: a tuple per row
    scatters the rows over memory, and transposing them took longer than reading them)."""
    n = len(dtypes)
    return {name: np.array(values[i::n], dtype) if dtype is object
            else np.fromiter(values[i::n], dtype, len(values) // n) for i, (name, dtype) in enumerate(dtypes.items())}


def _lines(text: str) -> Iterator[str]:
    """The physical lines of ``text``, each with its newline: split at newline characters only,
    as _row_boundaries counts rows (a carriage return or U+2028 in a field ends no line). Faster
    than io.StringIO, which first copies the text into a buffer of four bytes per character."""
    lines = text.split("\n")
    last = lines.pop()
    for line in lines:
        yield line + "\n"
    if last:
        yield last


def _row_boundaries(path: Path, data_start: int, first_line: int, chunk_bytes: int) -> Iterator[tuple[int, int, int]]:
    """Split the data rows into (start, end, first_line) byte ranges that end on row boundaries.

    A newline ends a row only outside a quoted field, i.e. where the number of quote characters
    before it is even (an escaped quote is two quote characters, so parity is kept). The scan
    counts in the memory-mapped file with numpy (a copy of each block and ``bytes.count`` took
    6 s on a 1.75 GiB export) and yields each range as soon as it is found, so that the parse of
    the first ranges overlaps the scan of the rest.
    """
    size = path.stat().st_size
    start, line = data_start, first_line
    if size - start > chunk_bytes:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            def count(char: int, a: int, b: int) -> int:  # in pieces that stay in the cache
                return sum(int(np.count_nonzero(np.frombuffer(mm, np.uint8, min(b, i + 2**20) - i, i) == char))
                           for i in range(a, b, 2**20))

            while size - start > chunk_bytes:
                end = mm.find(b"\n", start + chunk_bytes)
                quotes = count(ord('"'), start, max(end, start))
                while end >= 0 and quotes % 2:  # a newline inside a quoted field
                    after = mm.find(b"\n", end + 1)
                    quotes += count(ord('"'), end, max(after, end))
                    end = after
                if end < 0:
                    break
                yield start, end + 1, line
                line += count(ord("\n"), start, end + 1)
                start = end + 1
    if start < size or start == data_start:  # the rest, or the one (maybe empty) range
        yield start, size, line


def read_export(
    path: str | Path, task: str | None = "T0", workflow_id: str | int | None = None,
    max_examples: int = 20, workers: int = 1, chunk_bytes: int = CHUNK_BYTES,
    min_workflow_version: str | float | None = None, question: Question | dict[str, Any] | None = None,
    shape_centres: Iterable[str] = (),
) -> ParsedExport:
    """Parse a classification export into clicks and classifications.

    Rows that cannot be used are skipped and counted by reason; clicks that cannot be used are
    dropped and counted (the classification still counts: the volunteer saw the subject). A
    second classification of the same subject by the same volunteer is dropped (the earliest by
    ``created_at`` counts, so the result does not depend on row order). ``min_workflow_version``
    ('51.78') skips rows of older workflow versions, whose task layout may differ (counted as
    ``old_workflow_version``). ``report['examples']``
    lists the first few problems with their CSV line numbers. Large files are parsed in byte
    ranges by ``workers`` processes.

    ``shape_centres``: the drawing-tool types (of CENTRE_TYPES) whose centre is a click (module
    docstring). ``question`` (:class:`Question` or its configuration): the classifications table's
    ``question_answer`` holds each classification's answer (ANSWER_YES, ANSWER_NO, ANSWER_ABSENT;
    without a question all absent) and ``report['question']`` counts them; a question task that
    appears in no classification used, or whose answers can none be compared with ``yes``, is an
    error naming the task and the file.
    """
    path = Path(path)
    wf = None if workflow_id is None else str(workflow_id)
    try:
        min_version = None if min_workflow_version is None else _version(str(min_workflow_version))
    except ValueError:
        raise ValueError(f"min_workflow_version {min_workflow_version!r} is not a version like '51.78'") from None
    question = Question.from_config(question)
    if question is not None and question.task == task:
        raise ValueError(f"the question task {task!r} is the marking task; a yes/no question is a task of its own")
    centres = frozenset([shape_centres] if isinstance(shape_centres, str) else shape_centres)
    if not centres <= set(CENTRE_TYPES):
        raise ValueError(f"shape_centres {sorted(centres - set(CENTRE_TYPES))} not among {', '.join(CENTRE_TYPES)}")
    csv.field_size_limit(sys.maxsize)
    with open(path, "rb") as fh:
        head = fh.readline()
        data_start = fh.tell()
    header = next(csv.reader([head.decode("utf-8-sig")]), [])
    if not header:
        raise ExportFormatError(f"{path}: empty file, expected a Zooniverse classification export") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ExportFormatError(
            f"{path}: not a Zooniverse classification export, missing column(s) {', '.join(missing)}"
        )
    ranges = _row_boundaries(path, data_start, 2, chunk_bytes)
    chunks = _parse_ranges(((str(path), s, e, line, header, task, wf, max_examples, min_version, question, centres)
                            for s, e, line in ranges), workers)
    if any(ch.first_row_broken for ch in chunks[1:]):
        # a stray quote outside a quoted field can fool the quote-parity split: parse in one piece
        log.warning("%s: malformed CSV structure, parsing the file in one piece", path)
        chunks = _parse_ranges([(str(path), data_start, path.stat().st_size, 2, header, task, wf, max_examples,
                                 min_version, question, centres)], 1)
    return _assemble(path, chunks, max_examples, question, centres)


def _parse_ranges(args: Iterable[tuple], workers: int) -> list[_Chunk]:
    args = iter(args)
    first = list(itertools.islice(args, 2))
    if workers > 1 and len(first) > 1:
        # fork: spawned workers would re-run the caller's main module (a Snakemake script cannot be
        # re-run); call this before starting thread pools (numba, torch) in the process
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(_parse_chunk, *a) for a in itertools.chain(first, args)]  # as ranges are found
            return [f.result() for f in futures]
    return [_parse_chunk(*a) for a in itertools.chain(first, args)]


def _assemble(path: Path, chunks: list[_Chunk], max_examples: int, question: Question | None = None,
              centres: frozenset[str] = frozenset()) -> ParsedExport:
    skipped: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    tasks_seen: set[str] = set()
    answer_values: dict = {}
    for ch in chunks:
        skipped.update(ch.skipped)
        dropped.update(ch.dropped)
        by_type.update(ch.by_type)
        tasks_seen |= ch.tasks_seen
        for v in ch.answer_values:
            if len(answer_values) < 10:
                answer_values.setdefault(v, None)
    n_rows, n_marks = sum(ch.n_rows for ch in chunks), sum(ch.n_marks for ch in chunks)
    examples = [e for ch in chunks for e in ch.examples][:max_examples]
    names, cols, click_cols = _merge(chunks)
    del chunks
    # the earliest classification of a subject by a volunteer counts; later repeats are dropped
    rows = time_order(cols["created_at"], cols["classification_id"])  # the rows kept, in time order
    subject = pd.factorize(cols["subject_id"])[0]
    for reason, key in (("duplicate_classification_id", cols["classification_id"]),
                        ("duplicate_classification", subject * len(names) + cols["user"])):
        repeat = pd.Series(key[rows]).duplicated().to_numpy()
        if repeat.any():
            skipped[reason] += int(repeat.sum())
            rows = rows[~repeat]
    where = np.full(len(cols["classification_id"]), -1)
    where[rows] = np.arange(len(rows))
    pos = where[click_cols["row"]]  # clicks of dropped rows go with them
    cols = {name: col[rows] for name, col in cols.items()}
    codes = cols["user"]
    cols["user"] = names[codes]
    answers = cols["question_answer"]
    answer_counts = {name: int(np.count_nonzero(answers == code)) for code, name in ANSWER_KINDS.items()}
    cols["question_answer"] = np.maximum(answers, ANSWER_ABSENT).astype(np.int8)  # every kind of absent as one
    cls = pd.DataFrame(cols)
    kept = np.flatnonzero(pos >= 0)
    kept = kept[np.argsort(cols["classification_id"][pos[kept]], kind="stable")]  # clicks by classification
    pos = pos[kept]
    clicks = pd.DataFrame({"classification_id": cols["classification_id"][pos], "subject_id": cols["subject_id"][pos],
                           "user": cols["user"][pos], **{k: click_cols[k][kept] for k in ("x", "y", "tool")}})
    no_fwhm = int(cls["fwhm_px"].isna().sum())
    n_by_type = {"point": n_marks - sum(by_type.values()), **by_type}
    not_clicks = {kind: n for kind, n in by_type.items() if kind not in centres}
    report = {
        "file": str(path),
        "rows_read": n_rows,
        "rows_used": len(cls),
        "rows_skipped": dict(sorted(skipped.items())),
        "marks_read": n_marks,
        "clicks_used": len(clicks),
        "clicks_dropped": dict(sorted(dropped.items())),
        "marks_by_type": {kind: n for kind, n in sorted(n_by_type.items()) if n},
        "marks_not_clicks": dict(sorted(not_clicks.items())),
        "classifications_without_fwhm": no_fwhm,
        "subjects": int(cls["subject_id"].nunique()),
        "volunteers": int(np.count_nonzero(np.bincount(codes, minlength=len(names)))),
        "examples": examples,
    }
    if skipped or dropped:
        log.warning("%s: skipped rows %s, dropped clicks %s", path, dict(skipped), dict(dropped))
    if not_clicks:
        log.warning("%s: marks that are not clicks, by type: %s (of these, circles, ellipses and rectangles "
                    "count by their centre when listed in consensus.shape_centres)", path, report["marks_not_clicks"])
    if question is not None:
        report["question"] = _question_report(path, question, answer_counts, len(cls), tasks_seen, answer_values)
    return ParsedExport(cls, clicks, report)


def _question_report(path: Path, question: Question, counts: dict[str, int], n_used: int, tasks_seen: set[str],
                     values: dict) -> dict[str, Any]:
    """The question's part of the report; stops when the task is in no classification used or
    none of its answers can be compared with ``yes``."""
    seen = [v if isinstance(v, (str, int)) else str(v) for v in values]
    where = f"{path}: the question task {question.task!r} (consensus.swap.question.task)"
    if n_used and counts["task_absent"] == n_used:
        raise ValueError(f"{where} appears in none of the {n_used} classifications used; tasks seen: "
                         f"{', '.join(sorted(tasks_seen)) or 'none'}")
    if counts["not_comparable"] and not counts["yes"] + counts["no"]:
        kind, other = ("a label", "indices") if isinstance(question.yes, str) else ("an answer index", "labels")
        raise ValueError(f"{path}: consensus.swap.question.yes_answer {question.yes!r} is {kind}, but no answer to the "
                         f"question task {question.task!r} can be compared with it (does the export give {other}?); "
                         f"answers seen: {seen}")
    if counts["no"] and not counts["yes"]:
        log.warning("%s has no answer %r in %d classifications; answers seen: %s", where, question.yes,
                    counts["no"], seen)
    return {"task": question.task, "yes": question.yes, "answers": counts, "answers_seen": seen}


def _merge(chunks: list[_Chunk]) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(volunteer names, the chunks' classification columns with ``user`` as codes into the
    names, their click columns with ``row`` numbering the classifications across chunks)."""
    codes, names = pd.factorize(np.array([u for ch in chunks for u in ch.users], dtype=object))
    offset = first_code = 0
    for ch in chunks:
        ch.cls["user"] = codes[first_code:first_code + len(ch.users)][ch.cls["user"]]
        first_code += len(ch.users)
        ch.clicks["row"] = ch.clicks["row"] + offset
        offset += len(ch.cls["user"])
    cols = {name: np.concatenate([ch.cls[name] for ch in chunks]) for name in CLASSIFICATION_COLUMNS}
    clicks = {name: np.concatenate([ch.clicks[name] for ch in chunks]) for name in CLICK_DTYPES}
    return np.asarray(names, dtype=object), cols, clicks


def time_order(created_at: Iterable, classification_id: Iterable) -> np.ndarray:
    """Positions that put rows in time order: by ``created_at`` (compared as strings), ties by
    classification_id, missing times last, as ``sort_values([...], kind="stable")`` orders them.

    Two stable sorts of the arrays: exports come nearly in time order, on which a timsort of the
    strings is close to linear, where pandas factorizes all 1.7 M time stamps of Clump Scout first.
    """
    created = np.asarray(created_at, dtype=object)
    by_id = np.argsort(np.asarray(classification_id), kind="stable")
    stamps = created[by_id]
    missing = pd.isna(stamps)
    present = by_id[~missing]
    return np.concatenate([present[np.argsort(stamps[~missing], kind="stable")], by_id[missing]])
