"""Galaxies to catalogue, from any of the places a user has them: the workflow's survey (its
manifest and FITS files), a folder of FITS cutouts (bands as image extensions of one file, or one
file per band), or plain PNG/JPEG images (pixel coordinates only).

Every reader yields :class:`Galaxy` records or :class:`BadInput` (file + reason), never raises on
one bad file: the catalogue goes on and the failures table says what was skipped and why.

FITS conventions: image extensions whose ``FILTER`` keyword or extension name is a band letter
(``G``, ``r``, ...), or files named ``<galaxy>_<band>.fits`` / ``<galaxy>-<band>.fits`` holding
one image each; linear fluxes (``BUNIT`` nanomaggy gives the zero point 22.5, else a
``MAGZP``/``ZEROPT``/``ZP`` keyword or the caller's zero point); a celestial WCS per band; the
PSF FWHM in arcsec from ``PSFFWHM`` (else the subject table's or the caller's value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import astropy.units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from PIL import Image

from clumpfinder.data.cutouts import (FITS_SUFFIXES, Bands, CutoutError, band_planes, celestial_wcs, file_stem,
                                      fits_groups, is_fits, read_bands)
from clumpfinder.imaging import lupton_png

#: the bands of the colour composite the detector was trained on (i, r, g -> R, G, B)
COMPOSITE_BANDS = ("g", "r", "i")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: zero point of fluxes in nanomaggies (SDSS): m = 22.5 - 2.5 log10(f)
NANOMAGGY_ZP = 22.5
_ZP_KEYS = ("MAGZP", "ZEROPT", "ZP", "MAGZERO")


@dataclass
class Galaxy:
    """One galaxy as the catalogue needs it. ``rgb`` is the colour composite in display
    orientation (row 0 at the top, what the detector sees); ``planes`` are the bands in FITS
    orientation (row 0 at the bottom) in linear flux units; no planes for a PNG/JPEG image."""

    name: str
    rgb: np.ndarray
    planes: dict[str, np.ndarray] = field(default_factory=dict)
    wcs: WCS | None = None
    pixel_scale: float | None = None  # arcsec / px
    psf_fwhm: dict[str, float] = field(default_factory=dict)  # arcsec per band
    psf_beta: dict[str, float] = field(default_factory=dict)  # Moffat beta per band (absent: the caller's)
    sky_sigma: dict[str, float] = field(default_factory=dict)  # per band, when the header says
    zeropoint: dict[str, float] = field(default_factory=dict)  # per band; absent: no magnitudes
    meta: dict[str, Any] = field(default_factory=dict)  # subject_id, ra, dec, redshift, file

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgb.shape[:2]


@dataclass
class BadInput:
    """A galaxy that could not be catalogued: the file and why."""

    name: str
    file: str
    reason: str
    detail: str = ""


@dataclass
class FitsOptions:
    """What a FITS reader needs beyond the files: the composite's stretch (the one the detector was
    trained with), and fallbacks for what headers may lack."""

    png: dict[str, Any]
    psf_fwhm_arcsec: float | None = None
    zeropoint: float | None = None
    min_valid_fraction: float = 0.5


def _zeropoint(header: fits.Header, fallback: float | None) -> float | None:
    if str(header.get("BUNIT", "")).strip().lower() in ("nanomaggy", "nanomaggies", "nmgy"):
        return NANOMAGGY_ZP
    for key in _ZP_KEYS:
        if key in header:
            return float(header[key])
    return fallback


def galaxy_from_hdus(name: str, file: str, hdus: Bands, opts: FitsOptions, meta: dict[str, Any] | None = None,
                     primary: fits.Header | None = None) -> Galaxy | BadInput:
    """A :class:`Galaxy` from the image HDUs of one galaxy (and the metadata header of a
    multi-extension file), or the reason it cannot be one."""
    try:
        return _galaxy(name, file, hdus, opts, meta, primary)
    except Exception as err:  # noqa: BLE001 - a header value we cannot use is this galaxy's failure
        return BadInput(name, file, "bad_header", f"{type(err).__name__}: {str(err)[:200]}")


def _position(header: fits.Header) -> tuple[float, float]:
    """RA, Dec (deg) from RA/DEC keywords: degrees, or sexagesimal strings (RA in hours)."""
    ra, dec = header["RA"], header["DEC"]
    if isinstance(ra, str) or isinstance(dec, str):
        c = SkyCoord(str(ra), str(dec), unit=(u.hourangle, u.deg))
        return float(c.ra.deg), float(c.dec.deg)
    return float(ra), float(dec)


def _galaxy(name: str, file: str, hdus: Bands, opts: FitsOptions, meta: dict[str, Any] | None,
            primary: fits.Header | None) -> Galaxy | BadInput:
    meta = dict(meta or {})
    try:
        planes, headers = band_planes(hdus, COMPOSITE_BANDS, opts.min_valid_fraction)
    except CutoutError as err:
        return BadInput(name, file, err.reason, err.detail)
    ref = headers["r"] if "r" in headers else headers[COMPOSITE_BANDS[0]]
    wcs = celestial_wcs(ref)
    if wcs is None:
        return BadInput(name, file, "no_wcs", "no celestial WCS in the header (CTYPE RA---/DEC-- and CD/CDELT)")
    scale = float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0
    psf = {}
    for band, h in headers.items():
        if "PSFFWHM" in h:
            psf[band] = float(h["PSFFWHM"])
    fallback = meta.pop("psf_fwhm_arcsec", None)
    fallback = fallback if fallback is not None and np.isfinite(fallback) and fallback > 0 else opts.psf_fwhm_arcsec
    for band in planes:
        if band not in psf and fallback is not None:
            psf[band] = float(fallback)
    if not psf:
        return BadInput(name, file, "no_psf", "no PSFFWHM keyword and no PSF FWHM given (psf_fwhm_arcsec)")
    beta = {b: float(h["PSFBETA"]) for b, h in headers.items() if "PSFBETA" in h}
    sky = {b: float(h["SKYSIG"]) for b, h in headers.items() if "SKYSIG" in h}
    finite = {b: np.where(np.isfinite(p), p, np.float32(0.0)) for b, p in planes.items()}
    rgb = lupton_png({b: finite[b] for b in COMPOSITE_BANDS}, scale, opts.png)
    ny, nx = rgb.shape[:2]
    if "ra" not in meta or "dec" not in meta or not np.isfinite(meta.get("ra", np.nan)):
        # the galaxy's position: RA/DEC of a multi-extension file's metadata header (an image's
        # own RA/DEC is often the telescope's pointing), else the image centre
        if primary is not None and "RA" in primary and "DEC" in primary:
            meta["ra"], meta["dec"] = _position(primary)
        else:
            c = wcs.pixel_to_world((nx - 1) / 2, (ny - 1) / 2)
            meta["ra"], meta["dec"] = float(c.ra.deg), float(c.dec.deg)
    meta.setdefault("file", file)
    return Galaxy(name=name, rgb=rgb, planes=planes, wcs=wcs, pixel_scale=scale, psf_fwhm=psf, psf_beta=beta,
                  sky_sigma=sky, meta=meta,
                  zeropoint={b: zp for b, h in headers.items() if (zp := _zeropoint(h, opts.zeropoint)) is not None})


def read_fits_galaxy(name: str, files: list[Path], opts: FitsOptions,
                     meta: dict[str, Any] | None = None) -> Galaxy | BadInput:
    """One galaxy from its FITS file(s); an unreadable or truncated file is a :class:`BadInput`."""
    try:
        hdus, primary = read_bands(files)
    except CutoutError as err:
        return BadInput(name, ",".join(map(str, files)), err.reason, err.detail)
    return galaxy_from_hdus(name, ",".join(map(str, files)), hdus, opts, meta, primary)


def fits_folder(folder: str | Path, opts: FitsOptions, table: pd.DataFrame | None = None) -> Iterator[Galaxy | BadInput]:
    groups = fits_groups(folder).items()
    return _with_table(((read_fits_galaxy(name, files, opts), files[0], name) for name, files in groups), table, folder)


#: a galaxy table's columns (first name found wins) -> what the catalogue calls them
TABLE_COLUMNS = {
    "galaxy": ("galaxy", "name", "objid", "subject_id"),
    "file": ("file", "jpeg", "image"),
    "ra": ("ra",),
    "dec": ("dec",),
    "r_half_arcsec": ("r_half_arcsec", "petror50_r"),
    "size_arcsec": ("size_arcsec",),
    "pixel_scale_arcsec": ("pixel_scale_arcsec", "jpeg_scale_arcsec"),
    "psf_fwhm_arcsec": ("psf_fwhm_arcsec",),
}


def read_galaxy_table(path: str | Path) -> pd.DataFrame:
    """A table of the galaxies in a folder (CSV, or any table astropy reads): ``galaxy`` (matched
    against each image's name, or ``file`` against its file name), the galaxy's size
    (``r_half_arcsec`` or ``petror50_r``: its half-light radius; or ``size_arcsec``, the size a
    real-data route cut its cutouts by), ``pixel_scale_arcsec``, optionally ``ra``, ``dec`` and
    ``psf_fwhm_arcsec``. Returns those columns under the catalogue's names (missing ones as NaN)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"galaxy table {path} does not exist")
    if path.suffix.lower() in (".csv", ".txt"):
        raw = pd.read_csv(path, dtype=str)  # ids as written (20-digit ids exceed a float)
    else:
        from astropy.table import Table
        raw = Table.read(path).to_pandas()
    lower = {c.lower(): c for c in raw.columns}
    out = pd.DataFrame(index=raw.index)
    for name, aliases in TABLE_COLUMNS.items():
        col = next((lower[a] for a in aliases if a in lower), None)
        if col is None:
            out[name] = np.nan if name not in ("galaxy", "file") else None
        elif name in ("galaxy", "file"):
            out[name] = raw[col].map(lambda v: None if pd.isna(v) else str(v).strip())
        else:
            out[name] = pd.to_numeric(raw[col], errors="coerce")
    if out["galaxy"].isna().all() and out["file"].isna().all():
        raise ValueError(f"galaxy table {path} has neither a galaxy nor a file column "
                         f"(one of {list(TABLE_COLUMNS['galaxy'] + TABLE_COLUMNS['file'])})")
    out["galaxy"] = out["galaxy"].fillna(out["file"].map(lambda f: None if f is None else file_stem(Path(f), IMAGE_SUFFIXES)))
    dup = out["galaxy"][out["galaxy"].duplicated()].tolist()
    if dup:
        raise ValueError(f"galaxy table {path}: galaxies listed twice: {dup[:5]}")
    return out


def _table_row(table: pd.DataFrame, path: Path, name: str) -> dict[str, Any] | None:
    """The table's row of a galaxy read from ``path`` under ``name``: by file name, else by name
    (the file's stem, or the galaxy a group of FITS files makes)."""
    stem = file_stem(path, IMAGE_SUFFIXES + FITS_SUFFIXES)
    by_file = table["file"].map(lambda f: f is not None and Path(f).name == path.name)
    hit = table[by_file | table["galaxy"].isin([stem, name])]
    return hit.iloc[0].to_dict() if len(hit) else None


def _with_table(items: Iterable[tuple[Galaxy | BadInput, Path, str]], table: pd.DataFrame | None,
                folder: str | Path) -> Iterator[Galaxy | BadInput]:
    """The galaxies of (galaxy, file, name) ``items``, each with its table row's size, scale, PSF
    and position (:func:`with_table_row`); then one failure per table row that matched no file."""
    used = set()
    for g, path, name in items:
        row = _table_row(table, path, name) if table is not None else None
        if row is not None:
            used.add(row["galaxy"])
            if isinstance(g, Galaxy):
                g = with_table_row(g, row)
        yield g
    if table is not None:
        for galaxy in table["galaxy"]:
            if galaxy not in used:
                yield BadInput(str(galaxy), "", "no_image", f"the galaxy table lists it but {folder} has no image of it")


def with_table_row(g: Galaxy, row: dict[str, Any]) -> Galaxy | BadInput:
    """A galaxy with what its table row says: size, pixel scale, PSF, position (and for a plain
    image with a position and a scale, a north-up, east-left TAN WCS, as the Galaxy Zoo and SDSS
    cutouts are drawn). A size or pixel scale the row gives but cannot be used is a failure."""
    file = g.meta.get("file", "")
    for key in ("r_half_arcsec", "size_arcsec", "pixel_scale_arcsec", "psf_fwhm_arcsec"):
        v = row.get(key)
        if v is not None and np.isfinite(v) and v <= 0:
            return BadInput(g.name, file, f"bad_{key}", f"{key} = {v} in the galaxy table (must be > 0)")
    if not any(np.isfinite(row.get(k, np.nan)) for k in ("r_half_arcsec", "size_arcsec")):
        return BadInput(g.name, file, "no_size", "the galaxy table gives no size (r_half_arcsec, petror50_r or "
                        "size_arcsec) for this galaxy: the detector's field cannot be cut")
    scale = row.get("pixel_scale_arcsec", np.nan)
    if g.pixel_scale is None:  # a FITS image's WCS gives its own scale, which the table does not override
        if not np.isfinite(scale):
            return BadInput(g.name, file, "no_pixel_scale", "the galaxy table gives no pixel_scale_arcsec and the "
                            "image has no WCS: the detector's field cannot be cut")
        g.pixel_scale = float(scale)
    for key in ("r_half_arcsec", "size_arcsec"):
        if np.isfinite(row.get(key, np.nan)):
            g.meta[key] = float(row[key])
    if np.isfinite(row.get("psf_fwhm_arcsec", np.nan)):
        for band in g.planes or ("r",):
            g.psf_fwhm.setdefault(band, float(row["psf_fwhm_arcsec"]))
    if np.isfinite(row.get("ra", np.nan)) and np.isfinite(row.get("dec", np.nan)):
        g.meta.setdefault("ra", float(row["ra"]))
        g.meta.setdefault("dec", float(row["dec"]))
        if g.wcs is None:
            g.wcs = _north_up_wcs(g.meta["ra"], g.meta["dec"], g.pixel_scale, g.shape)
    return g


def _north_up_wcs(ra: float, dec: float, scale: float, shape: tuple[int, int]) -> WCS:
    """A TAN WCS centred on (ra, dec) at the image centre, north up, east left (FITS orientation)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    w.wcs.cdelt = [-scale / 3600.0, scale / 3600.0]
    return w


def read_plain_image(path: Path) -> Galaxy | BadInput:
    """A PNG/JPEG colour image: pixel coordinates only (no flux calibration; a WCS only from a
    galaxy table, :func:`with_table_row`)."""
    try:
        with Image.open(path) as pil:
            rgb = np.asarray(pil.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - OSError, ValueError, PIL's DecompressionBombError...
        return BadInput(file_stem(path, IMAGE_SUFFIXES), str(path), "unreadable_image",
                        f"{type(err).__name__}: {str(err)[:200]}")
    return Galaxy(name=file_stem(path, IMAGE_SUFFIXES), rgb=rgb, meta={"file": str(path)})


def image_files(folder: str | Path) -> list[Path]:
    return [p for p in sorted(Path(folder).iterdir())
            if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith(".")]


def image_folder(folder: str | Path, table: pd.DataFrame | None = None) -> Iterator[Galaxy | BadInput]:
    """The images of a folder; with a galaxy ``table``, each matched row's size, scale, PSF and
    position, and one failure per table row that matches no image."""
    return _with_table(((read_plain_image(p), p, file_stem(p, IMAGE_SUFFIXES)) for p in image_files(folder)),
                       table, folder)


def survey(manifest: pd.DataFrame, opts: FitsOptions, fits_dir: str | Path | None = None) -> Iterator[Galaxy | BadInput]:
    """The workflow's own galaxies: the manifest's FITS files (simulated survey, or the download
    cache), with the manifest's position, redshift and PSF where the headers lack them."""
    if "fits" not in manifest.columns:
        raise ValueError("the survey manifest has no 'fits' column: this data route keeps no FITS cutouts")
    for r in manifest.to_dict("records"):
        sid = int(r["subject_id"])
        paths = [Path(f) for f in str(r["fits"]).split(",")]  # one file, or one per band (a user's folder)
        if fits_dir is not None:
            paths = [p if p.is_absolute() else Path(fits_dir) / p for p in paths]
        meta = {"subject_id": sid, "ra": float(r["ra"]), "dec": float(r["dec"]),
                "redshift": float(r.get("redshift", np.nan)), "psf_fwhm_arcsec": r.get("psf_fwhm_arcsec")}
        yield read_fits_galaxy(str(sid), paths, opts, meta)


def open_source(kind: str, path: str | Path, opts: FitsOptions,
                table: pd.DataFrame | None = None) -> Iterable[Galaxy | BadInput]:
    """The galaxies of a folder: ``fits`` or ``images`` (PNG/JPEG); ``table``: a galaxy table
    (:func:`read_galaxy_table`) giving their sizes, pixel scales and positions."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if kind == "fits":
        return fits_folder(folder, opts, table)
    if kind == "images":
        return image_folder(folder, table)
    raise ValueError(f"unknown image kind {kind!r} (fits or images)")


def count_galaxies(kind: str, folder: str | Path) -> int:
    """How many galaxies a folder of ``kind`` holds (for a progress bar)."""
    if kind == "fits":
        return len(fits_groups(folder))
    return len(image_files(folder))


def detect_kind(folder: str | Path) -> str:
    """``fits`` when the folder holds FITS files, else ``images``."""
    files = [p for p in Path(folder).iterdir() if p.is_file()]
    return "fits" if any(is_fits(p) for p in files) else "images"
