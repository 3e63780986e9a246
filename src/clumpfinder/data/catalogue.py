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

from clumpfinder.boxes import square_boxes
from clumpfinder.data.cutouts import band_planes, celestial_wcs, read_bands
from clumpfinder.imaging import fits_pixel_to_png

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


def catalogue_labels(clumps: pd.DataFrame, manifest: pd.DataFrame, box_scale: float,
                     min_flux_ratio: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Training labels from a clump catalogue: one box per catalogued clump on each galaxy's cutout.

    ``clumps`` (from :func:`read_clump_catalogue`, with the ``subject_id`` of its galaxy) are
    projected through the WCS stored in each cutout's FITS (``manifest['fits']``, r band); the box
    is a square of side ``box_scale`` x the PSF FWHM in pixels, as for volunteer clicks. Clumps
    whose flux ratio is known and below ``min_flux_ratio`` are left out (Adams et al. use 3 % or
    8 % in the u band), as are clumps falling off the cutout; both are counted.

    Returns (boxes, subjects, report) with the columns of the volunteer consensus tables that the
    label stage reads, so the catalogue can stand in for the consensus: every catalogued galaxy
    is a "yes" (swap_prob 1) with one classification and n_clicks catalogued clumps.
    """
    man = manifest.set_index("subject_id")
    counts = {"clumps_read": len(clumps), "galaxy_without_image": 0, "below_min_flux_ratio": 0,
              "outside_image": 0}
    have = clumps["subject_id"].isin(man.index)
    counts["galaxy_without_image"] = int((~have).sum())
    faint = clumps["flux_ratio"].notna() & (clumps["flux_ratio"] < min_flux_ratio)
    counts["below_min_flux_ratio"] = int((faint & have).sum())
    use = clumps[have & ~faint]
    parts = []
    for sid, group in use.groupby("subject_id", sort=True):
        m = man.loc[sid]
        # one file, or one per band (a user's cutout folder): the r band's WCS
        _, headers = band_planes(read_bands([Path(f) for f in str(m["fits"]).split(",")])[0], ("r",), 0.0)
        wcs = celestial_wcs(headers["r"])
        px = clumps_to_pixels(group, wcs, int(m["width"]), int(m["height"]))
        counts["outside_image"] += int((~px["inside"]).sum())
        parts.append(px[px["inside"]].assign(side=float(m["psf_fwhm_pixels"]) * box_scale,
                                             width=float(m["width"]), height=float(m["height"])))
    cols = ["subject_id", "x", "y", "side", "x1", "y1", "x2", "y2", "category", "flux_ratio", "n_votes",
            "odd_fraction", "false_pos_prob", "inaccurate_prob", "width", "height"]
    if parts:
        b = pd.concat(parts, ignore_index=True)
        boxes = pd.DataFrame({
            "subject_id": b["subject_id"].astype(np.int64), "x": b["x"], "y": b["y"], "side": b["side"],
            **square_boxes(b["x"], b["y"], b["side"], b["width"], b["height"]),
            "category": b["kind"], "flux_ratio": b["flux_ratio"], "n_votes": 1,
            "odd_fraction": (b["kind"] == "odd_clump").astype(float), "false_pos_prob": np.nan,
            "inaccurate_prob": np.nan, "width": b["width"], "height": b["height"],
        }, columns=cols)
    else:
        boxes = pd.DataFrame(columns=cols)
    n_boxes = boxes.groupby("subject_id").size().reindex(man.index, fill_value=0)
    subjects = pd.DataFrame({
        "subject_id": man.index.to_numpy(np.int64), "width": man["width"].to_numpy(float),
        "height": man["height"].to_numpy(float), "fwhm_px": man["psf_fwhm_pixels"].to_numpy(float),
        "box_side": man["psf_fwhm_pixels"].to_numpy(float) * box_scale, "n_classifications": 1,
        "n_clicks": n_boxes.to_numpy(), "n_boxes": n_boxes.to_numpy(), "swap_prob": 1.0,
    })
    report = {**counts, "boxes": len(boxes), "galaxies": len(subjects),
              "galaxies_without_boxes": int((n_boxes == 0).sum()),
              "clumps": int((boxes["category"] == "clump").sum()),
              "odd_clumps": int((boxes["category"] == "odd_clump").sum())}
    return boxes, subjects, report
