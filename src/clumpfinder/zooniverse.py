"""Zooniverse classification exports: write (for simulated volunteers) and read (sim or real).

The format is the one the Zooniverse project builder exports (one CSV row per classification,
JSON in the ``metadata``, ``annotations`` and ``subject_data`` columns); see
``shared/reference/zooniverse-export.md``. The reader never crashes on a bad row: it skips the row
(or the click) and counts the reason, so a report says exactly what was dropped and where.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

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
                          "height", "fwhm_px", "workflow_version", "created_at"]


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
            except (TypeError, ValueError):
                return math.nan
            return f if f > 0 and math.isfinite(f) else math.nan
    return math.nan


class _Skip(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _parse_row(row: dict[str, str], task: str | None, workflow_id: str | None):
    if workflow_id is not None and row.get("workflow_id", "") != workflow_id:
        raise _Skip("other_workflow")
    try:
        cid = int(row["classification_id"])
    except (TypeError, ValueError):
        raise _Skip("bad_classification_id") from None
    try:
        sid = int(str(row["subject_ids"]).split(";")[0])
    except (TypeError, ValueError):
        raise _Skip("bad_subject_id") from None
    user_id = (row.get("user_id") or "").strip()
    user_name = (row.get("user_name") or "").strip()
    if not user_id and not user_name:
        raise _Skip("missing_user")
    user = f"id:{user_id}" if user_id else f"name:{user_name}"
    try:
        meta = json.loads(row["metadata"])
    except (TypeError, ValueError):
        raise _Skip("bad_metadata_json") from None
    try:
        dims = meta["subject_dimensions"][0]
        width, height = float(dims["naturalWidth"]), float(dims["naturalHeight"])
        if not (width > 0 and height > 0):
            raise ValueError
    except (KeyError, IndexError, TypeError, ValueError):
        raise _Skip("missing_subject_dimensions") from None
    try:
        annotations = json.loads(row["annotations"])
        if not isinstance(annotations, list):
            raise ValueError
    except (TypeError, ValueError):
        raise _Skip("bad_annotations_json") from None
    fwhm = math.nan
    try:
        sdata = json.loads(row["subject_data"]) if row["subject_data"] else {}
        smeta = sdata.get(str(sid)) or next(iter(sdata.values()), {})
        if isinstance(smeta, dict):
            fwhm = _fwhm_from_subject_data(smeta)
    except (TypeError, ValueError, AttributeError):
        pass  # box size falls back to the configured default; counted by the caller
    marks = []
    for ann in annotations:
        if not isinstance(ann, dict) or (task is not None and ann.get("task") != task):
            continue
        value = ann.get("value")
        if not isinstance(value, list):
            continue
        marks.extend(v for v in value if isinstance(v, dict))
    return cid, sid, user, bool(user_id), width, height, fwhm, marks


def _parse_mark(mark: dict[str, Any], width: float, height: float) -> tuple[float, float, int]:
    try:
        x, y = float(mark["x"]), float(mark["y"])
    except (KeyError, TypeError, ValueError):
        raise _Skip("click_bad_coordinates") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise _Skip("click_bad_coordinates")
    tool = mark.get("tool", mark.get("toolIndex"))
    try:
        tool = int(tool)
    except (TypeError, ValueError):
        raise _Skip("click_bad_tool") from None
    if tool not in (0, 1):
        raise _Skip("click_bad_tool")
    if not (0.0 <= x <= width and 0.0 <= y <= height):
        raise _Skip("click_outside_image")
    return x, y, tool


def read_export(
    path: str | Path, task: str | None = "T0", workflow_id: str | int | None = None,
    max_examples: int = 20,
) -> ParsedExport:
    """Parse a classification export into clicks and classifications.

    Rows that cannot be used are skipped and counted by reason; clicks that cannot be used are
    dropped and counted (the classification still counts: the volunteer saw the subject). A
    second classification of the same subject by the same volunteer is dropped (the first counts).
    ``report['examples']`` lists the first few problems with their CSV line numbers.
    """
    path = Path(path)
    wf = None if workflow_id is None else str(workflow_id)
    skipped: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    cls_rows: list[tuple] = []
    click_rows: list[tuple] = []
    seen: set[tuple[int, str]] = set()
    n_rows = n_marks = 0
    no_fwhm = 0
    csv.field_size_limit(sys.maxsize)

    def note(line: int, reason: str) -> None:
        if len(examples) < max_examples:
            examples.append({"line": line, "reason": reason})

    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ExportFormatError(f"{path}: empty file, expected a Zooniverse classification export") from None
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ExportFormatError(
                f"{path}: not a Zooniverse classification export, missing column(s) {', '.join(missing)}"
            )
        index = {name: i for i, name in enumerate(header)}
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error:
                n_rows += 1
                skipped["unreadable_csv_row"] += 1
                note(reader.line_num, "unreadable_csv_row")
                continue
            n_rows += 1
            line = reader.line_num
            if len(values) != len(header):
                skipped["wrong_field_count"] += 1
                note(line, "wrong_field_count")
                continue
            row = {name: values[i] for name, i in index.items()}
            try:
                cid, sid, user, logged_in, width, height, fwhm, marks = _parse_row(row, task, wf)
            except _Skip as s:
                skipped[s.reason] += 1
                if s.reason != "other_workflow":
                    note(line, s.reason)
                continue
            if (sid, user) in seen:
                skipped["duplicate_classification"] += 1
                continue
            seen.add((sid, user))
            if math.isnan(fwhm):
                no_fwhm += 1
            kept = 0
            for mark in marks:
                n_marks += 1
                try:
                    x, y, tool = _parse_mark(mark, width, height)
                except _Skip as s:
                    dropped[s.reason] += 1
                    continue
                click_rows.append((cid, sid, user, x, y, tool))
                kept += 1
            cls_rows.append((cid, sid, user, logged_in, kept, width, height, fwhm,
                             row.get("workflow_version", ""), row.get("created_at", "")))

    classifications = pd.DataFrame(cls_rows, columns=CLASSIFICATION_COLUMNS)
    clicks = pd.DataFrame(click_rows, columns=CLICK_COLUMNS)
    clicks = clicks.astype({"classification_id": np.int64, "subject_id": np.int64, "x": float,
                            "y": float, "tool": np.int64})
    report = {
        "file": str(path),
        "rows_read": n_rows,
        "rows_used": len(classifications),
        "rows_skipped": dict(sorted(skipped.items())),
        "marks_read": n_marks,
        "clicks_used": len(clicks),
        "clicks_dropped": dict(sorted(dropped.items())),
        "classifications_without_fwhm": no_fwhm,
        "subjects": int(classifications["subject_id"].nunique()) if len(classifications) else 0,
        "volunteers": int(classifications["user"].nunique()) if len(classifications) else 0,
        "examples": examples,
    }
    if skipped or dropped:
        log.warning("%s: skipped rows %s, dropped clicks %s", path, dict(skipped), dict(dropped))
    return ParsedExport(classifications, clicks, report)
