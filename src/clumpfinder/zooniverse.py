"""Zooniverse classification exports: write (for simulated volunteers) and read (sim or real).

The format is the one the Zooniverse project builder exports (one CSV row per classification,
JSON in the ``metadata``, ``annotations`` and ``subject_data`` columns); see
``shared/reference/zooniverse-export.md``. The reader never crashes on a bad row: it skips the row
(or the click) and counts the reason, so a report says exactly what was dropped and where.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import multiprocessing
import re
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
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
            except (TypeError, ValueError, OverflowError):
                return math.nan
            return f if f > 0 and math.isfinite(f) else math.nan
    return math.nan


class _Skip(Exception):
    def __init__(self, reason: str):
        self.reason = reason


_DECODER = json.JSONDecoder()
INT64_MAX = 2**63 - 1
_DIMENSIONS = re.compile(r'"subject_dimensions"\s*:\s*')
#: bytes per parse chunk: a chunk's text and its rows must fit comfortably in memory
CHUNK_BYTES = 32 * 2**20


def _dimensions(metadata: str) -> tuple[float, float]:
    """Image size (naturalWidth, naturalHeight) from the metadata JSON.

    Only the ``subject_dimensions`` value is decoded (the rest of the metadata is not used), which
    keeps a multi-GB export fast to read; a value that does not look like a JSON object at all is
    still reported as bad metadata.
    """
    s = metadata.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise _Skip("bad_metadata_json")
    m = _DIMENSIONS.search(s)
    if m is None:
        raise _Skip("missing_subject_dimensions")
    try:
        dims = _DECODER.raw_decode(s, m.end())[0][0]
        width, height = float(dims["naturalWidth"]), float(dims["naturalHeight"])
        if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
            raise ValueError
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        raise _Skip("missing_subject_dimensions") from None
    return width, height


def _fwhm(subject_data: str, sid: int) -> float:
    try:
        sdata = _DECODER.decode(subject_data) if subject_data else {}
        smeta = sdata.get(str(sid)) or next(iter(sdata.values()), {})
    except (TypeError, ValueError, AttributeError):
        return math.nan  # box size falls back to the configured default; counted by the caller
    return _fwhm_from_subject_data(smeta) if isinstance(smeta, dict) else math.nan


def _marks(annotations: str, task: str | None) -> list[dict[str, Any]]:
    try:
        parsed = _DECODER.decode(annotations)
        if not isinstance(parsed, list):
            raise ValueError
    except (TypeError, ValueError):
        raise _Skip("bad_annotations_json") from None
    marks = []
    for ann in parsed:
        if not isinstance(ann, dict) or (task is not None and ann.get("task") != task):
            continue
        value = ann.get("value")
        if isinstance(value, list):
            marks.extend(v for v in value if isinstance(v, dict))
    return marks


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
    """What one byte range of the export yields: tables, counters and examples."""

    cls: pd.DataFrame | None = None
    clicks: pd.DataFrame | None = None
    skipped: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
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
                 workflow_id: str | None, max_examples: int, min_version: tuple[int, ...] | None = None) -> _Chunk:
    """Parse the rows in bytes [start, end) of the export (``start`` is a row boundary and
    ``first_line`` its 1-based physical line number)."""
    out = _Chunk()
    with open(path, "rb") as fh:
        fh.seek(start)
        text = fh.read(end - start).decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline="\n"))  # rows end at \n, as _row_boundaries counts
    del text
    ix = {name: header.index(name) for name in header}
    i_cid, i_sid, i_uid, i_uname = ix["classification_id"], ix["subject_ids"], ix["user_id"], ix["user_name"]
    i_meta, i_ann, i_sdata = ix["metadata"], ix["annotations"], ix["subject_data"]
    i_wf, i_ver, i_created = ix.get("workflow_id"), ix.get("workflow_version"), ix.get("created_at")
    n_fields = len(header)
    fwhm_cache: dict[int, float] = {}
    cls_rows: list[tuple] = []
    click_rows: list[tuple] = []

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
            width, height = _dimensions(values[i_meta])
            marks = _marks(values[i_ann], task)
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
                x, y, tool = _parse_mark(mark, width, height)
            except _Skip as s:
                out.dropped[s.reason] += 1
                continue
            click_rows.append((len(cls_rows), x, y, tool))  # clicks point at their row
            kept += 1
        cls_rows.append((cid, sid, f"id:{user_id}" if user_id else f"name:{user_name}", bool(user_id), kept,
                         width, height, fwhm, values[i_ver] if i_ver is not None else "",
                         values[i_created] if i_created is not None else ""))
    out.cls = pd.DataFrame(cls_rows, columns=CLASSIFICATION_COLUMNS).astype(
        {"classification_id": np.int64, "subject_id": np.int64, "logged_in": bool, "n_marks": np.int64,
         "width": float, "height": float, "fwhm_px": float})
    out.clicks = pd.DataFrame(click_rows, columns=["row", "x", "y", "tool"]).astype(
        {"row": np.int64, "x": float, "y": float, "tool": np.int64})
    return out


def _row_boundaries(path: Path, data_start: int, first_line: int, chunk_bytes: int) -> list[tuple[int, int, int]]:
    """Split the data rows into (start, end, first_line) byte ranges that end on row boundaries.

    A newline ends a row only outside a quoted field, i.e. where the number of quote characters
    before it is even (an escaped quote is two quote characters, so parity is kept); the scan
    reads the file once in blocks.
    """
    size = path.stat().st_size
    if size - data_start <= chunk_bytes:
        return [(data_start, size, first_line)]
    bounds, start, line = [], data_start, first_line
    quotes = newlines = 0  # counted from data_start
    target = data_start + chunk_bytes
    with open(path, "rb") as fh:
        fh.seek(data_start)
        pos = data_start
        while True:
            block = fh.read(64 * 2**20)
            if not block:
                break
            i = 0
            while target < pos + len(block):
                j = max(i, target - pos)
                k = block.find(b"\n", j)
                while k >= 0 and (quotes + block.count(b'"', i, k)) % 2:
                    k = block.find(b"\n", k + 1)
                if k < 0:
                    break
                quotes += block.count(b'"', i, k)
                newlines += block.count(b"\n", i, k + 1)
                i = k + 1
                bounds.append((start, pos + i, line))
                start, line = pos + i, first_line + newlines
                target = start + chunk_bytes
            quotes += block.count(b'"', i)
            newlines += block.count(b"\n", i)
            pos += len(block)
    if start < size:
        bounds.append((start, size, line))
    return bounds


def read_export(
    path: str | Path, task: str | None = "T0", workflow_id: str | int | None = None,
    max_examples: int = 20, workers: int = 1, chunk_bytes: int = CHUNK_BYTES,
    min_workflow_version: str | float | None = None,
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
    """
    path = Path(path)
    wf = None if workflow_id is None else str(workflow_id)
    try:
        min_version = None if min_workflow_version is None else _version(str(min_workflow_version))
    except ValueError:
        raise ValueError(f"min_workflow_version {min_workflow_version!r} is not a version like '51.78'") from None
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
    args = [(str(path), s, e, line, header, task, wf, max_examples, min_version) for s, e, line in ranges]
    chunks = _parse_ranges(args, workers)
    if any(ch.first_row_broken for ch in chunks[1:]):
        # a stray quote outside a quoted field can fool the quote-parity split: parse in one piece
        log.warning("%s: malformed CSV structure, parsing the file in one piece", path)
        chunks = _parse_ranges([(str(path), data_start, path.stat().st_size, 2, header, task, wf, max_examples,
                                 min_version)], 1)
    return _assemble(path, chunks, max_examples)


def _parse_ranges(args: list[tuple], workers: int) -> list[_Chunk]:
    if workers > 1 and len(args) > 1:
        # fork: spawned workers would re-run the caller's main module (a Snakemake script cannot be
        # re-run); call this before starting thread pools (numba, torch) in the process
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(workers, len(args)), mp_context=ctx) as pool:
            return list(pool.map(_parse_chunk, *zip(*args)))
    return [_parse_chunk(*a) for a in args]


def _assemble(path: Path, chunks: list[_Chunk], max_examples: int) -> ParsedExport:
    skipped: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for ch in chunks:
        skipped.update(ch.skipped)
        dropped.update(ch.dropped)
    n_rows, n_marks = sum(ch.n_rows for ch in chunks), sum(ch.n_marks for ch in chunks)
    examples = [e for ch in chunks for e in ch.examples][:max_examples]
    offsets = np.cumsum([0] + [len(ch.cls) for ch in chunks])
    cls = pd.concat([ch.cls for ch in chunks], ignore_index=True)
    cls["row"] = np.arange(len(cls))
    clicks = pd.concat([ch.clicks.assign(row=ch.clicks["row"] + off) for ch, off in zip(chunks, offsets)],
                       ignore_index=True)
    del chunks
    # the earliest classification of a subject by a volunteer counts; later repeats are dropped
    cls = cls.sort_values(["created_at", "classification_id"], kind="stable").reset_index(drop=True)
    for reason, key in (("duplicate_classification_id", ["classification_id"]),
                        ("duplicate_classification", ["subject_id", "user"])):
        repeat = cls.duplicated(key)
        if repeat.any():
            skipped[reason] += int(repeat.sum())
            cls = cls[~repeat].reset_index(drop=True)
    pos = pd.Index(cls["row"]).get_indexer(clicks["row"])  # clicks of dropped rows go with them
    clicks = clicks[pos >= 0].reset_index(drop=True)
    pos = pos[pos >= 0]
    clicks.insert(0, "classification_id", cls["classification_id"].to_numpy()[pos])
    clicks.insert(1, "subject_id", cls["subject_id"].to_numpy()[pos])
    clicks.insert(2, "user", cls["user"].to_numpy()[pos])
    cls = cls.drop(columns="row")
    clicks = clicks.sort_values("classification_id", kind="stable").reset_index(drop=True)[CLICK_COLUMNS]
    no_fwhm = int(cls["fwhm_px"].isna().sum())
    report = {
        "file": str(path),
        "rows_read": n_rows,
        "rows_used": len(cls),
        "rows_skipped": dict(sorted(skipped.items())),
        "marks_read": n_marks,
        "clicks_used": len(clicks),
        "clicks_dropped": dict(sorted(dropped.items())),
        "classifications_without_fwhm": no_fwhm,
        "subjects": int(cls["subject_id"].nunique()),
        "volunteers": int(cls["user"].nunique()),
        "examples": examples,
    }
    if skipped or dropped:
        log.warning("%s: skipped rows %s, dropped clicks %s", path, dict(skipped), dict(dropped))
    return ParsedExport(cls, clicks, report)
