"""Writing a catalogue: one FITS file (CLUMPS, GALAXIES and FAILURES tables with units, the
provenance in the primary header), the same tables as CSV beside it, and overlays of the clumps
on each galaxy's composite. Every file is written atomically.

Column names follow Popp et al.'s catalogue where it has one (``is_clump_3pct``,
``is_clump_8pct``) and otherwise say what they hold; ``docs/catalogue.md`` lines them up with
Adams et al. 2022 Table 3.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table
from PIL import Image, ImageDraw

from clumpfinder.clumps.catalogue import Catalogue
from clumpfinder.io import atomic_path, write_csv

_UNITS = [
    (r"^(clump_ra|clump_dec|galaxy_ra|galaxy_dec|ra|dec)$", u.deg),
    (r"^(x|y|box_[xy][12]|width|height|segment_pixels)$", u.pix),
    (r"^(dist_centre_arcsec|psf_fwhm_arcsec)$", u.arcsec),
    (r"^pixel_scale_arcsec$", u.arcsec / u.pix),
    (r"^(mag|mag_err)_[ugrizy]$", u.mag),
]
_FLUX = re.compile(r"^(flux|flux_err|galaxy_flux|galaxy_flux_err)_[ugrizy]$")
_DESCRIPTIONS = {
    "clump_ra": "clump right ascension (ICRS)", "clump_dec": "clump declination (ICRS)",
    "x": "clump centre, image pixels from the top-left corner, y down", "y": "see x",
    "score": "detector score", "label": "detector class (clump or odd_clump)",
    "n_merged": "detections merged into this clump", "flux_ratio": "clump / galaxy flux in flux_ratio_band",
    "is_clump_3pct": "flux_ratio > 0.03", "is_clump_8pct": "flux_ratio > 0.08 (a giant clump)",
    "flag_edge": "box on the detector window's edge, or the background annulus leaves the image",
    "flag_background": "too few galaxy pixels in the annulus: background from the unmasked annulus",
}


def _unit(name: str, flux_unit: u.UnitBase | None) -> u.UnitBase | None:
    if _FLUX.match(name):
        return flux_unit
    if re.match(r"^background_[ugrizy]$", name) and flux_unit is not None:
        return flux_unit / u.pix
    for pattern, unit in _UNITS:
        if re.match(pattern, name):
            return unit
    return None


def as_table(df: pd.DataFrame, name: str, flux_unit: u.UnitBase | None) -> Table:
    t = Table.from_pandas(df.reset_index(drop=True).infer_objects())
    for col in t.colnames:
        if t[col].dtype == object:  # e.g. subject_id None on PNG galaxies: text columns for FITS
            t[col] = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                               for v in t[col]])
        unit = _unit(col, flux_unit)
        if unit is not None:
            t[col].unit = unit
        if col in _DESCRIPTIONS:
            t[col].description = _DESCRIPTIONS[col]
    t.meta["EXTNAME"] = name
    return t


def _table_hdu(t: Table) -> fits.BinTableHDU:
    """A table HDU; units FITS has no name for (nanomaggy, SDSS's flux unit) are written as their
    name in TUNITn, which TOPCAT and :func:`read_catalogue` read back."""
    plain = t.copy(copy_data=False)
    odd = {}
    for col in plain.colnames:
        unit = plain[col].unit
        if unit is not None:
            try:
                unit.to_string("fits")
            except ValueError:
                odd[col] = unit.to_string()
                plain[col].unit = None
    hdu = fits.table_to_hdu(plain)
    for i, col in enumerate(plain.colnames, start=1):
        if col in odd:
            hdu.header[f"TUNIT{i}"] = odd[col].replace("nmgy", "nanomaggy")
    return hdu


def write_catalogue(cat: Catalogue, out: str | Path, provenance: dict[str, Any], flux_unit: str | None = "nanomaggy",
                    csv: bool = True) -> list[Path]:
    """Write ``out`` (FITS) and, with ``csv``, ``<stem>.csv``, ``<stem>_galaxies.csv`` and
    ``<stem>_failures.csv`` beside it; returns the paths written."""
    out = Path(out)
    unit = u.Unit(flux_unit) if flux_unit else None
    primary = fits.PrimaryHDU()
    for key, value in provenance.items():  # the key's full name as the comment where it fits
        value = value if isinstance(value, (int, float, bool)) else str(value)  # long: CONTINUE cards
        long = isinstance(value, str) and len(value) > 40
        primary.header.append(fits.Card(key.upper()[:8], value) if long else fits.Card(key.upper()[:8], value, key))
    hdus = [primary] + [_table_hdu(as_table(df, name, unit)) for df, name in
                        ((cat.clumps, "CLUMPS"), (cat.galaxies, "GALAXIES"), (cat.failures, "FAILURES"))]
    with atomic_path(out) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    written = [out]
    if csv:
        stem = out.with_suffix("")
        for df, path in ((cat.clumps, stem.with_suffix(".csv")), (cat.galaxies, Path(f"{stem}_galaxies.csv")),
                         (cat.failures, Path(f"{stem}_failures.csv"))):
            write_csv(df, path)
            written.append(path)
    return written


def read_catalogue(path: str | Path) -> dict[str, Table]:
    """The CLUMPS, GALAXIES and FAILURES tables of a catalogue file (units kept)."""
    with u.add_enabled_units([u.nanomaggy]), warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        tables = {name: Table.read(path, hdu=name) for name in ("CLUMPS", "GALAXIES", "FAILURES")}
    for t in tables.values():
        t.convert_bytestring_to_unicode()
        for col in t.colnames:
            if isinstance(t[col].unit, u.UnrecognizedUnit) and str(t[col].unit) == "nanomaggy":
                t[col].unit = u.nanomaggy
    return tables


def overlay(rgb: np.ndarray, clumps: pd.DataFrame, size: int = 384) -> Image.Image:
    """The composite scaled to ``size`` px with a circle per clump (yellow: > 8 % of the galaxy's
    flux, cyan: > 3 %, white: fainter or unmeasured) and its number."""
    h, w = rgb.shape[:2]
    s = size / max(h, w)
    img = Image.fromarray(rgb).resize((round(w * s), round(h * s)), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for c in clumps.itertuples(index=False):
        r = max(c.box_x2 - c.box_x1, c.box_y2 - c.box_y1) / 2 * s
        colour = ("yellow" if getattr(c, "is_clump_8pct", False) is True else
                  "cyan" if getattr(c, "is_clump_3pct", False) is True else "white")
        x, y = c.x * s, c.y * s
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=2)
        draw.text((x + r + 2, y - r - 2), str(c.clump_id), fill=colour)
    return img
