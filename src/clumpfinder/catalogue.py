"""Published clump catalogues as galaxies and clumps: Adams et al. (2022) Table 3 and tables like
it, in the AAS machine-readable (MRT) format that ``astropy.io.ascii`` reads.

One catalogue row is one clump with its host galaxy's identifier and position. The galaxies are
the subject list of a real-data run (positions to download cutouts around); the clumps become
labels once their sky positions are projected through each cutout's WCS (:func:`clumps_to_pixels`).

The column labels of the real Table 3 are not fixed here: each quantity is looked up under a list
of likely labels, case-insensitively, and a configuration can name the label exactly. Rows that
lack a required value or carry impossible coordinates are skipped and counted per reason, with
examples (data-row numbers from 1), never silently.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.units import UnitsWarning
from astropy.wcs import WCS

from clumpfinder.simulate import fits_pixel_to_png

# quantity -> labels tried in order (case-insensitive); the first five are required
LABELS: dict[str, tuple[str, ...]] = {
    "galaxy_id": ("objID", "SDSS", "ObjID", "dr8objid", "specobjid", "GalaxyID"),
    "ra": ("RAdeg", "RAgal", "GRAdeg", "RA"),
    "dec": ("DEdeg", "DEgal", "GDEdeg", "Dec", "DE"),
    "clump_ra": ("RAcl", "cRAdeg", "RAclump", "ClumpRA"),
    "clump_dec": ("DEcl", "cDEdeg", "DEclump", "ClumpDec"),
    "redshift": ("z", "zsp", "Redshift"),
    "psf_fwhm_arcsec": ("rFWHM", "FWHMr", "PSFr"),
    "flux_ratio": ("FluxRatio", "Fratio", "uFrac", "fu"),
    "unusual": ("Unusual", "Odd"),
}
REQUIRED = ("galaxy_id", "ra", "dec", "clump_ra", "clump_dec")
GALAXY_COLUMNS = ["galaxy_id", "ra", "dec", "redshift", "psf_fwhm_arcsec", "n_clumps", "n_odd"]
CLUMP_COLUMNS = ["galaxy_id", "clump_id", "ra", "dec", "kind", "flux_ratio"]


@dataclass
class Catalogue:
    """Galaxies (one row per host), clumps (one row per usable catalogue row) and a report of
    what was read, used and skipped."""

    galaxies: pd.DataFrame
    clumps: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)


def _resolve(path: Path, columns: list[str], labels: dict[str, str] | None) -> dict[str, str | None]:
    lower = {c.lower(): c for c in columns}
    out: dict[str, str | None] = {}
    for name, candidates in LABELS.items():
        if labels and name in labels:
            wanted = labels[name]
            if wanted.lower() not in lower:
                raise ValueError(f"{path}: catalogue label {wanted!r} (given for {name}) is not a column; "
                                 f"columns are {', '.join(columns)}")
            out[name] = lower[wanted.lower()]
            continue
        out[name] = next((lower[c.lower()] for c in candidates if c.lower() in lower), None)
        if out[name] is None and name in REQUIRED:
            raise ValueError(f"{path}: no column for {name} (tried {', '.join(candidates)}; name it under "
                             f"labels); columns are {', '.join(columns)}")
    return out


def _truthy(v: Any) -> bool:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    if isinstance(v, str):
        return v.strip().lower() in ("1", "y", "yes", "t", "true")
    return bool(v)


def read_clump_catalogue(path: str | Path, labels: dict[str, str] | None = None, max_examples: int = 20,
                         galaxy_tolerance_arcsec: float = 1.0) -> Catalogue:
    """Read a clump catalogue in MRT format into galaxies and clumps.

    ``labels`` maps a quantity (a key of :data:`LABELS`) to its exact column label. A clump whose
    ``unusual`` flag is set is an ``odd_clump`` (Clump Scout's "odd" tool: foreground stars,
    background galaxies), otherwise a ``clump``. A galaxy's values come from its first row that has
    them. Rows of one galaxy whose host position differs by more than ``galaxy_tolerance_arcsec``
    are counted (the first position is kept).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"clump catalogue {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnitsWarning)  # e.g. nanomaggies are not a CDS unit
            table = Table.read(path, format="ascii.mrt")
    except Exception as err:  # astropy raises several types for a malformed file
        raise ValueError(f"{path}: not a readable machine-readable (MRT) table: {err}") from err
    cols = _resolve(path, list(table.colnames), labels)
    n = len(table)
    df = table.to_pandas()  # masked entries become NaN / <NA>; 19-digit integer ids stay exact
    frame = pd.DataFrame({name: df[col] if col else pd.Series([np.nan] * n, dtype=float)
                          for name, col in cols.items()})
    skipped: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    keep = np.ones(n, bool)

    def drop(bad: np.ndarray, reason: str) -> None:
        bad = bad & keep
        if bad.any():
            skipped[reason] = skipped.get(reason, 0) + int(bad.sum())
            for i in np.flatnonzero(bad)[: max(0, max_examples - len(examples))]:
                examples.append({"row": int(i) + 1, "reason": reason})
            keep[bad] = False

    for name in REQUIRED:
        drop(frame[name].isna().to_numpy(), f"missing_{name}")
    for ra, dec in (("ra", "dec"), ("clump_ra", "clump_dec")):
        r = pd.to_numeric(frame[ra], errors="coerce").to_numpy(float)
        d = pd.to_numeric(frame[dec], errors="coerce").to_numpy(float)
        drop(~((r >= 0) & (r < 360) & (d >= -90) & (d <= 90)), f"bad_{ra}_{dec}")
    used = frame[keep].copy()
    used["galaxy_id"] = [int(v) if isinstance(v, (int, np.integer)) else str(v).strip() for v in used["galaxy_id"]]
    used["unusual"] = used["unusual"].astype(object)
    for name in ("ra", "dec", "clump_ra", "clump_dec", "redshift", "psf_fwhm_arcsec", "flux_ratio"):
        used[name] = pd.to_numeric(used[name], errors="coerce").astype(float)
    used["kind"] = ["odd_clump" if _truthy(v) else "clump" for v in used["unusual"]]

    first = used.groupby("galaxy_id", sort=False).first()
    host = SkyCoord(used["ra"].to_numpy(), used["dec"].to_numpy(), unit="deg")
    ref = first.loc[used["galaxy_id"]]
    ref_pos = SkyCoord(ref["ra"].to_numpy(), ref["dec"].to_numpy(), unit="deg")
    inconsistent = host.separation(ref_pos).arcsec > galaxy_tolerance_arcsec if len(used) else np.zeros(0, bool)
    galaxies = pd.DataFrame({
        "galaxy_id": first.index, "ra": first["ra"].to_numpy(), "dec": first["dec"].to_numpy(),
        "redshift": first["redshift"].to_numpy(), "psf_fwhm_arcsec": first["psf_fwhm_arcsec"].to_numpy(),
        "n_clumps": used.groupby("galaxy_id", sort=False).size().reindex(first.index).to_numpy(),
        "n_odd": used[used["kind"] == "odd_clump"].groupby("galaxy_id", sort=False).size()
        .reindex(first.index, fill_value=0).to_numpy(),
    }, columns=GALAXY_COLUMNS)
    clumps = pd.DataFrame({
        "galaxy_id": used["galaxy_id"].to_numpy(),
        "clump_id": used.groupby("galaxy_id", sort=False).cumcount().to_numpy(),
        "ra": used["clump_ra"].to_numpy(), "dec": used["clump_dec"].to_numpy(), "kind": used["kind"].to_numpy(),
        "flux_ratio": used["flux_ratio"].to_numpy(),
    }, columns=CLUMP_COLUMNS)
    report = {"file": str(path), "rows_read": n, "rows_used": int(keep.sum()), "rows_skipped": skipped,
              "examples": examples, "galaxies": len(galaxies), "clumps": int((clumps["kind"] == "clump").sum()),
              "odd_clumps": int((clumps["kind"] == "odd_clump").sum()),
              "rows_with_inconsistent_galaxy_position": int(np.sum(inconsistent)),
              "columns": {k: v for k, v in cols.items() if v is not None}}
    return Catalogue(galaxies, clumps, report)


def clumps_to_pixels(clumps: pd.DataFrame, wcs: WCS, width: int, height: int) -> pd.DataFrame:
    """Pixel positions of clumps on one cutout (PNG convention: origin at the top-left corner,
    y down), from their sky positions through the cutout's celestial WCS, with ``inside``
    telling whether the position falls on the image."""
    out = clumps.copy()
    if not len(out):
        return out.assign(x=pd.Series(dtype=float), y=pd.Series(dtype=float), inside=pd.Series(dtype=bool))
    px, py = wcs.celestial.world_to_pixel(SkyCoord(out["ra"].to_numpy(), out["dec"].to_numpy(), unit="deg"))
    x, y = fits_pixel_to_png(px, py, height)
    out["x"], out["y"] = x, y
    out["inside"] = (x >= 0) & (x <= width) & (y >= 0) & (y <= height)
    return out
