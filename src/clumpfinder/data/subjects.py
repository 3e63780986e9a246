"""Subject lists for real data: which galaxies to fetch, where, and what is known about them.

Three inputs give a subject list (one row per subject: subject_id, ra, dec and, where known,
galaxy_id, redshift, psf_fwhm_arcsec, arcsec_per_side, origin):

* a **Zooniverse subject export** (columns ``subject_id``, ``metadata`` JSON, ``locations``...),
* a **Zooniverse classification export** (the ``subject_data`` JSON of each row),
* a **plain CSV** with ``ra`` and ``dec`` columns (and optional ``subject_id``, ``redshift``...),

and the clump catalogue gives one through :func:`from_catalogue`. Metadata keys are matched
case-insensitively and without Zooniverse's hidden-key prefixes ``#`` and ``!``. Rows without a
usable position are skipped and counted per reason with examples.

Clump Scout showed some galaxies in several subjects (``galaxy_id``: the SDSS ``dr8objid``; a
subject without one is its own galaxy), and some subjects were real galaxies with synthetic clumps
injected (Adams et al. 2022), marked ``origin: sim`` in their metadata: :func:`injected_subjects`.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = ["subject_id", "galaxy_id", "ra", "dec", "redshift", "psf_fwhm_arcsec", "arcsec_per_side", "size_arcsec",
           "origin"]
#: quantity -> metadata keys / CSV columns tried (lower case, without '#' / '!')
KEYS: dict[str, tuple[str, ...]] = {
    "ra": ("ra", "ra_deg", "radeg"),
    "dec": ("dec", "dec_deg", "dedeg", "de"),
    "galaxy_id": ("dr8objid", "objid", "sdss_id", "galaxy_id", "iauname"),
    "redshift": ("redshift", "z"),
    "psf_fwhm_arcsec": ("psf_fwhm_arcsec", "rfwhm", "psf_fwhm", "fwhm_arcsec"),
    "arcsec_per_side": ("arcsec_per_side", "arcsecperside"),
    "size_arcsec": ("size_arcsec", "petror90_r", "petror90"),
    "origin": ("origin",),  # real / sim (synthetic clumps injected, Adams et al. 2022)
}


def _norm(key: str) -> str:
    return key.lstrip("#!").strip().lower()


def _quantities(meta: dict[str, Any]) -> dict[str, Any]:
    """The subject-list quantities found in one metadata record (None where absent or empty)."""
    norm = {_norm(k): v for k, v in meta.items()}
    return {name: next((norm[k] for k in keys if norm.get(k) not in ("", None)), None) for name, keys in KEYS.items()}


def _finish(rows: list[dict[str, Any]], path: Path, kind: str, skipped: dict[str, int],
            examples: list[dict[str, Any]], max_examples: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("ra", "dec", "redshift", "psf_fwhm_arcsec", "arcsec_per_side", "size_arcsec"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    keep = np.ones(len(df), bool)

    def drop(bad: np.ndarray, reason: str) -> None:
        bad = bad & keep
        if bad.any():
            skipped[reason] = skipped.get(reason, 0) + int(bad.sum())
            examples.extend({"row": int(i) + 1, "reason": reason}
                            for i in np.flatnonzero(bad)[: max(0, max_examples - len(examples))])
            keep[bad] = False

    ra, dec = df["ra"].to_numpy(), df["dec"].to_numpy()
    drop(~(np.isfinite(ra) & np.isfinite(dec)), "missing_position")
    drop(~((ra >= 0) & (ra < 360) & (dec >= -90) & (dec <= 90)), "bad_position")
    drop(df["subject_id"].duplicated().to_numpy(), "duplicate_subject")
    df = df[keep].reset_index(drop=True)
    df["subject_id"] = df["subject_id"].astype(np.int64)
    no_galaxy = np.array([g is None or g != g or str(g).strip() == "" for g in df["galaxy_id"]], bool)
    df["galaxy_id"] = [str(s) if none else str(g) for g, s, none in zip(df["galaxy_id"], df["subject_id"], no_galaxy)]
    report = {"file": str(path), "format": kind, "rows_read": len(keep), "subjects": len(df),
              "without_galaxy_id": int(no_galaxy.sum()), "origin_sim": int(_is_sim(df["origin"]).sum()),
              "rows_skipped": dict(sorted(skipped.items())), "examples": examples[:max_examples]}
    return df, report


def read_subject_list(path: str | Path, max_examples: int = 20) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a Zooniverse subject export, a classification export or a plain CSV (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"subject list {path} does not exist")
    csv.field_size_limit(sys.maxsize)
    header = pd.read_csv(path, nrows=0).columns
    lower = {c.lower(): c for c in header}
    skipped: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []

    def bad(line: int, reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1
        if len(examples) < max_examples:
            examples.append({"line": line, "reason": reason})

    if "subject_data" in header and "subject_ids" in header:
        kind, seen = "zooniverse_classifications", set()
        for k, chunk in enumerate(pd.read_csv(path, usecols=["subject_ids", "subject_data"], dtype=str,
                                              chunksize=100_000, keep_default_na=False)):
            for i, (sids, sdata) in enumerate(zip(chunk["subject_ids"], chunk["subject_data"])):
                line = k * 100_000 + i + 2
                try:
                    sid = int(sids.split(";")[0])
                except ValueError:
                    bad(line, "bad_subject_id")
                    continue
                if sid in seen:
                    continue
                try:
                    data = json.loads(sdata)
                    meta = data.get(str(sid)) or next(iter(data.values()))
                    if not isinstance(meta, dict):
                        raise ValueError
                except (ValueError, TypeError, AttributeError, StopIteration):
                    bad(line, "bad_subject_data_json")
                    continue
                seen.add(sid)
                rows.append({"subject_id": sid, **_quantities(meta)})
    elif "metadata" in header and "subject_id" in header:
        kind = "zooniverse_subjects"
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        for i, r in enumerate(table.itertuples(index=False)):
            r = r._asdict()
            try:
                sid = int(r["subject_id"])
            except ValueError:
                bad(i + 2, "bad_subject_id")
                continue
            try:
                meta = json.loads(r["metadata"])
                if not isinstance(meta, dict):
                    raise ValueError
            except ValueError:
                bad(i + 2, "bad_metadata_json")
                continue
            rows.append({"subject_id": sid, **_quantities(meta)})
        # a subject in several subject sets is listed once per set: keep its first row
        seen: set[int] = set()
        rows = [r for r in rows if not (r["subject_id"] in seen or seen.add(r["subject_id"]))]
    else:
        kind = "csv"
        if not {"ra", "dec"} <= set(lower):
            raise ValueError(f"{path}: a subject list needs ra and dec columns (or to be a Zooniverse subject / "
                             f"classification export); columns are {', '.join(header)}")
        table = pd.read_csv(path)
        table.columns = [_norm(c) for c in table.columns]
        if "subject_id" in table:
            sid = pd.to_numeric(table["subject_id"], errors="coerce")
            if sid.isna().any():
                raise ValueError(f"{path}: line {int(sid.isna().to_numpy().argmax()) + 2}: subject_id "
                                 f"{table['subject_id'][sid.isna()].iloc[0]!r} is not an integer")
            ids = sid.astype(np.int64).to_numpy()
        else:
            ids = np.arange(1, len(table) + 1, dtype=np.int64)
        for i, r in enumerate(table.to_dict("records")):
            rows.append({"subject_id": ids[i], **_quantities(r)})
    return _finish(rows, path, kind, skipped, examples, max_examples)


def _is_sim(origin: pd.Series) -> np.ndarray:
    return np.array([isinstance(v, str) and v.strip().lower() == "sim" for v in origin], bool)


def injected_subjects(subjects: pd.DataFrame) -> tuple[np.ndarray, dict[str, Any]]:
    """Subject ids of the injected-clump subjects of a real subject list (``origin`` 'sim', any
    case), and a note of how they were found.

    When *every* subject says 'sim' the column carries no information: a simulated classification
    export may mark every subject ``origin: sim`` (the workflow's own ``volunteers.py`` did), and a
    subject list read from it has no real subjects beside the simulated ones. None is injected then
    (the note says so); excluding them all would leave no detection labels.
    """
    if "origin" not in subjects.columns or subjects.empty:
        return np.array([], np.int64), {"origin_column": False, "injected": 0}
    sim = _is_sim(subjects["origin"])
    ids = subjects.loc[sim, "subject_id"].to_numpy(np.int64)
    if sim.all():
        return np.array([], np.int64), {
            "origin_column": True, "injected": 0,
            "note": f"every subject ({len(ids)}) has origin 'sim', as in a simulated export: "
                    "none is treated as injected"}
    return ids, {"origin_column": True, "injected": len(ids)}


def from_catalogue(galaxies: pd.DataFrame) -> pd.DataFrame:
    """Subject list of a clump catalogue's galaxies. Integer galaxy ids (SDSS objIDs fit in
    int64) are the subject ids; otherwise galaxies are numbered from 1 in catalogue order."""
    ids = galaxies["galaxy_id"]
    numeric = all(isinstance(v, (int, np.integer)) and 0 <= int(v) < 2**63 for v in ids)
    sid = np.array([int(v) for v in ids], np.int64) if numeric else np.arange(1, len(ids) + 1, dtype=np.int64)
    return pd.DataFrame({
        "subject_id": sid, "galaxy_id": ids.astype(str).to_numpy(), "ra": galaxies["ra"].to_numpy(float),
        "dec": galaxies["dec"].to_numpy(float), "redshift": galaxies["redshift"].to_numpy(float),
        "psf_fwhm_arcsec": galaxies["psf_fwhm_arcsec"].to_numpy(float),
        "arcsec_per_side": np.nan, "size_arcsec": np.nan,
    }, columns=COLUMNS)
