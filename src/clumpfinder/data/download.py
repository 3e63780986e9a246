"""Real images: FITS cutouts around each galaxy from a hips2fits service, and the colour PNG.

One request per band goes to a hips2fits service (``astroquery.hips2fits``; the CDS service on the
SDSS DR9 HiPS by default) for a north-up TAN image of ``image_size`` pixels centred on the galaxy,
with the field of view sized to the galaxy (see :func:`field_of_view`). Why hips2fits rather than
SDSS frames cut with ``Cutout2D``: one small request per band returns exactly the Clump Scout
geometry (400 px over 62-106 arcsec, i.e. resampled below SDSS's 0.396 arcsec/px), with no
2048x1489 frame download and no mosaicking of galaxies that straddle frame edges.

Robustness, in the order a demanding user will hit it:

* **cache / resume**: each galaxy's bands are kept as one multi-extension FITS file in a cache
  directory outside the workflow's outputs, named by subject id and stamped with a key of the
  request (HiPS, bands, size, field, position). A valid cached file with the right key is used
  without a request; an unreadable, truncated or stale one is fetched again.
* **atomic writes**: a file appears under its final name only once complete (temp file + rename);
  temp files left by a killed run are removed at the next start.
* **bounded concurrency**: ``workers`` threads, each with its own HTTP session.
* **retries with backoff**: time-outs, connection errors, 429/5xx answers and FITS that cannot be
  read (truncated transfers) are retried ``retries`` times, waiting ``backoff * 2**k`` seconds.
  Other 4xx answers (unknown HiPS, bad position) and images without data (outside the survey's
  footprint) are not retried.
* **failures table**: a galaxy that cannot be fetched is a row of the failures table (reason,
  detail, attempts), never a crash; the manifest lists the galaxies that have images.

A user who already has FITS cutouts sets ``folder``: each subject's cutout is read from there
(:mod:`clumpfinder.data.cutouts`; ``<subject_id>.fits`` or ``<subject_id>_<band>.fits``) with its own
size and WCS instead of fetched, and a subject without a readable cutout is a row of the failures
table like a failed request.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import multiprocessing
import shutil
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pandas as pd
import requests
from astropy.coordinates import Angle
from astropy.io import fits
from PIL import Image

from astropy.wcs.utils import proj_plane_pixel_scales

from clumpfinder.data.cutouts import CutoutError, band_planes, celestial_wcs, fits_groups, read_bands
from clumpfinder.io import atomic_dir, atomic_path, known_fields
from clumpfinder.imaging import lupton_png

log = logging.getLogger(__name__)

FAILURE_COLUMNS = ["subject_id", "ra", "dec", "band", "reason", "detail", "attempts"]
MANIFEST_COLUMNS = ["subject_id", "galaxy_id", "ra", "dec", "redshift", "psf_fwhm_arcsec", "psf_fwhm_pixels",
                    "pixel_scale_arcsec", "arcsec_per_side", "width", "height", "png", "fits"]
PNG_BANDS = ("g", "r", "i")
#: format version of the cached files; a change invalidates every cached file
CACHE_VERSION = 1


@dataclass
class DownloadSpec:
    """How to fetch cutouts (config key ``data.download``)."""

    server: str
    hips: str  # HiPS id, '{band}' is replaced by the band
    bands: list[str]
    image_size: int
    fov: dict[str, float]
    psf_fwhm_arcsec: float
    timeout: float
    retries: int
    backoff: float
    workers: int
    png: dict[str, Any]
    min_valid_fraction: float = 0.5
    folder: str | None = None  # FITS cutouts a user already has: read instead of fetched

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "DownloadSpec":
        spec = cls(**known_fields(cls, cfg, "data.download", elsewhere=("cache",)))  # the rule's cache folder
        missing = [b for b in PNG_BANDS if b not in spec.bands]
        if missing:
            raise ValueError(f"data.download.bands must include {', '.join(PNG_BANDS)} for the colour PNG; "
                             f"missing {', '.join(missing)}")
        return spec


class FetchError(Exception):
    """A band could not be fetched; ``retry`` says whether trying again may help."""

    def __init__(self, reason: str, detail: str, retry: bool):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retry = reason, detail, retry


@dataclass
class _Outcome:
    subject_id: int
    row: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    cached: bool = False
    requests: int = 0
    retried: Counter = field(default_factory=Counter)


def field_of_view(subjects: pd.DataFrame, fov: dict[str, float]) -> np.ndarray:
    """Side of each cutout in arcsec, sized to the galaxy as Clump Scout did.

    A subject list that carries the Clump Scout geometry (``arcsec_per_side``, the subjects'
    ``arcsecPerSide``) is used as is, so that volunteer clicks refer to the same pixels. Otherwise
    the side is ``factor`` times the galaxy size (``size_arcsec``, e.g. the r-band Petrosian R90)
    clipped to [``min_arcsec``, ``max_arcsec``] (Clump Scout's 62-106 arcsec), and
    ``default_arcsec`` where no size is known.
    """
    n = len(subjects)
    side = np.full(n, float(fov["default_arcsec"]))
    if "size_arcsec" in subjects:
        size = pd.to_numeric(subjects["size_arcsec"], errors="coerce").to_numpy(float)
        ok = np.isfinite(size) & (size > 0)
        side[ok] = np.clip(fov["factor"] * size[ok], fov["min_arcsec"], fov["max_arcsec"])
    if "arcsec_per_side" in subjects:
        given = pd.to_numeric(subjects["arcsec_per_side"], errors="coerce").to_numpy(float)
        ok = np.isfinite(given) & (given > 0)
        side[ok] = given[ok]
    return side


def request_key(spec: DownloadSpec, ra: float, dec: float, side_arcsec: float) -> str:
    """What a cached file must have been fetched with to be reused (not the server: mirrors agree)."""
    text = json.dumps([CACHE_VERSION, spec.hips, sorted(spec.bands), spec.image_size, round(side_arcsec, 6),
                       round(ra, 8), round(dec, 8)])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cache_file(cache_dir: str | Path, subject_id: int) -> Path:
    return Path(cache_dir) / f"{int(subject_id)}.fits"


def clean_stale_temps(cache_dir: str | Path) -> int:
    """Remove temp files a killed run left in the cache (``atomic_path`` names them '.<name>.*')."""
    n = 0
    for p in Path(cache_dir).glob(".*.fits"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def read_cached(path: Path, key: str, spec: DownloadSpec) -> dict[str, np.ndarray] | None:
    """The planes of a valid cached cutout made with ``key``, else None (missing, corrupt, stale)."""
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "file may have been truncated": checked here
            with fits.open(path, memmap=False) as hdul:
                if hdul[0].header.get("CFKEY") != key:
                    return None
                planes = {}
                for band in spec.bands:
                    data = hdul[band.upper()].data
                    if data is None or data.shape != (spec.image_size, spec.image_size):
                        return None
                    planes[band] = np.asarray(data, dtype=np.float32)
                hdul.verify("exception")
                return planes
    except Exception:  # noqa: BLE001 - any unreadable file is re-fetched
        return None


class Fetcher:
    """One astroquery hips2fits client per thread (a ``requests`` session is not shared)."""

    def __init__(self, spec: DownloadSpec):
        self.spec = spec
        self._local = threading.local()

    def client(self):
        c = getattr(self._local, "client", None)
        if c is None:
            from astroquery.hips2fits import hips2fitsClass

            c = hips2fitsClass()
            c.server = self.spec.server
            c.timeout = self.spec.timeout
            # astroquery's response hook formats the whole body as a debug message at every log
            # level (astroquery 0.4.11: ~40 ms per 400 px FITS, most of a request's time); we do
            # not log responses, so drop it from this client's session
            c._session.hooks["response"] = [h for h in c._session.hooks["response"]
                                            if getattr(h, "__name__", "") != "_response_hook"]
            self._local.client = c
        return c

    def fetch_band(self, ra: float, dec: float, side_arcsec: float, band: str) -> fits.ImageHDU:
        """One band as an ImageHDU with the service's WCS; raises :class:`FetchError`."""
        spec = self.spec
        try:
            response = self.client().query_async(
                hips=spec.hips.format(band=band), width=spec.image_size, height=spec.image_size,
                projection="TAN", ra=ra * u.deg, dec=dec * u.deg, fov=Angle(side_arcsec * u.arcsec),
                coordsys="icrs", rotation_angle=Angle(0 * u.deg), format="fits",
                min_cut=0.5, max_cut=99.5, stretch="linear", cmap="Greys_r",
            )
        except requests.exceptions.Timeout as err:
            raise FetchError("timeout", str(err)[:200], True) from None
        except requests.exceptions.RequestException as err:
            raise FetchError("connection_error", str(err)[:200], True) from None
        status = response.status_code
        if status != 200:
            detail = _error_text(response)
            if status == 429 or status >= 500:
                raise FetchError(f"http_{status}", detail, True)
            raise FetchError("not_found" if status == 404 else f"http_{status}", detail, False)
        try:
            with fits.HDUList.fromstring(response.content) as hdul:
                hdu = hdul[0]
                data = np.asarray(hdu.data, dtype=np.float32)
                header = hdu.header.copy()
        except Exception as err:  # noqa: BLE001 - truncated or garbled transfers
            raise FetchError("bad_fits", f"{type(err).__name__}: {str(err)[:160]}", True) from None
        if data.shape != (spec.image_size, spec.image_size):
            raise FetchError("bad_fits", f"image shape {data.shape}, expected {spec.image_size} square", True)
        valid = np.isfinite(data) & (data != 0)
        if valid.mean() < spec.min_valid_fraction:
            raise FetchError("no_data", f"only {valid.mean():.0%} of the pixels have data "
                             "(outside the survey footprint?)", False)
        for k in ("BSCALE", "BZERO", "BLANK"):  # the data are now float32 and scaled
            header.remove(k, ignore_missing=True)
        out = fits.ImageHDU(np.where(np.isfinite(data), data, np.float32(0.0)), header=header, name=band.upper())
        out.header["FILTER"] = band
        return out


def _error_text(response) -> str:
    """The service's JSON error ({title, description}) or the start of the body."""
    try:
        content = response.json()
        return (str(content.get("title", "")) + ": " + str(content.get("description", ""))).strip(": ")[:300]
    except Exception:  # noqa: BLE001 - not JSON
        return response.text[:300].strip()


def _with_retries(fn, spec: DownloadSpec, outcome: _Outcome):
    """``fn()``, retried on retryable :class:`FetchError`; the final error carries ``attempts``."""
    attempt = 0
    while True:
        attempt += 1
        outcome.requests += 1
        try:
            return fn()
        except FetchError as err:
            if not err.retry or attempt > spec.retries:
                err.attempts = attempt
                raise
            outcome.retried[err.reason] += 1
            time.sleep(spec.backoff * 2 ** (attempt - 1))


@functools.lru_cache(maxsize=4)
def _local_index(folder: str) -> dict[str, list[Path]]:
    return fits_groups(folder)


def _local(subject: dict[str, Any], spec: DownloadSpec, png_dir: Path) -> _Outcome:
    """A subject's cutout from ``spec.folder`` (``<subject_id>.fits``, or one file per band named
    ``<subject_id>_<band>.fits``): its own size and WCS, no request, the PNG made as for a fetched one."""
    sid = int(subject["subject_id"])
    out = _Outcome(sid)
    ra, dec = float(subject["ra"]), float(subject["dec"])

    def fail(reason: str, detail: str) -> _Outcome:
        out.failure = {"subject_id": sid, "ra": ra, "dec": dec, "band": "", "reason": reason, "detail": detail,
                       "attempts": 0}
        return out

    files = _local_index(str(spec.folder)).get(str(sid))
    if not files:
        return fail("missing_file", f"no {sid}.fits or {sid}_<band>.fits in {spec.folder}")
    try:
        planes, headers = band_planes(read_bands(files)[0], tuple(spec.bands), spec.min_valid_fraction)
    except CutoutError as err:
        return fail(err.reason, err.detail)
    wcs = celestial_wcs(headers["r"])
    if wcs is None:
        return fail("no_wcs", f"{files[0]}: no celestial WCS in the r-band header")
    scale = float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0
    h, w = planes["r"].shape
    finite = {b: np.where(np.isfinite(planes[b]), planes[b], np.float32(0.0)) for b in PNG_BANDS}
    Image.fromarray(lupton_png(finite, scale, spec.png)).save(png_dir / f"{sid}.png", compress_level=1)
    psf = subject.get("psf_fwhm_arcsec")
    psf = float(psf) if psf is not None and np.isfinite(psf) and psf > 0 else float(
        headers["r"].get("PSFFWHM", spec.psf_fwhm_arcsec))
    out.cached = True
    out.row = {
        "subject_id": sid, "galaxy_id": subject.get("galaxy_id", sid), "ra": ra, "dec": dec,
        "redshift": subject.get("redshift", math.nan), "psf_fwhm_arcsec": psf, "psf_fwhm_pixels": psf / scale,
        "pixel_scale_arcsec": scale, "arcsec_per_side": scale * w, "width": w, "height": h, "png": f"{sid}.png",
        "fits": ",".join(str(f) for f in files),
    }
    return out


def _one(subject: dict[str, Any], spec: DownloadSpec, fetcher: Fetcher, cache_dir: Path, png_dir: Path) -> _Outcome:
    if spec.folder:
        return _local(subject, spec, png_dir)
    sid = int(subject["subject_id"])
    out = _Outcome(sid)
    ra, dec, side = float(subject["ra"]), float(subject["dec"]), float(subject["arcsec_per_side"])
    key = request_key(spec, ra, dec, side)
    path = cache_file(cache_dir, sid)
    planes = read_cached(path, key, spec)
    out.cached = planes is not None
    if planes is None:
        hdus = [fits.PrimaryHDU()]
        for band in spec.bands:
            try:
                hdu = _with_retries(lambda b=band: fetcher.fetch_band(ra, dec, side, b), spec, out)
            except FetchError as err:
                out.failure = {"subject_id": sid, "ra": ra, "dec": dec, "band": band, "reason": err.reason,
                               "detail": err.detail, "attempts": err.attempts}
                return out
            hdus.append(hdu)
        ph = hdus[0].header
        ph["SUBJECT"] = (sid, "subject id")
        ph["RA"], ph["DEC"] = (ra, "[deg] galaxy centre"), (dec, "[deg] galaxy centre")
        ph["FOV"] = (side, "[arcsec] side of the cutout")
        ph["HIPS"] = spec.hips
        ph["CFKEY"] = (key, "clumpfinder request key")
        with atomic_path(path) as tmp:
            fits.HDUList(hdus).writeto(tmp, overwrite=True, output_verify="exception")
        planes = {band: h.data for band, h in zip(spec.bands, hdus[1:])}
    scale = side / spec.image_size
    rgb = lupton_png({b: planes[b] for b in PNG_BANDS}, scale, spec.png)
    Image.fromarray(rgb).save(png_dir / f"{sid}.png", compress_level=1)
    psf = subject.get("psf_fwhm_arcsec")
    psf = float(psf) if psf is not None and np.isfinite(psf) and psf > 0 else spec.psf_fwhm_arcsec
    out.row = {
        "subject_id": sid, "galaxy_id": subject.get("galaxy_id", sid), "ra": ra, "dec": dec,
        "redshift": subject.get("redshift", math.nan), "psf_fwhm_arcsec": psf, "psf_fwhm_pixels": psf / scale,
        "pixel_scale_arcsec": scale, "arcsec_per_side": side, "width": spec.image_size,
        "height": spec.image_size, "png": f"{sid}.png", "fits": str(path),
    }
    return out


def _chunk(records: list[dict[str, Any]], spec: DownloadSpec, cache_dir: Path, png_dir: Path,
           threads: int) -> list[_Outcome]:
    """Download ``records`` with ``threads`` concurrent requests (one process's share)."""
    fetcher = Fetcher(spec)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(lambda s: _one(s, spec, fetcher, cache_dir, png_dir), records))


def download_cutouts(subjects: pd.DataFrame, spec: DownloadSpec, cache_dir: str | Path, png_dir: str | Path,
                     processes: int = 1, chunk_size: int = 64) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Fetch (or reuse) every subject's cutout and render its PNG into ``png_dir``.

    ``subjects`` needs subject_id, ra, dec (+ optional galaxy_id, redshift, psf_fwhm_arcsec,
    arcsec_per_side / size_arcsec). Returns (manifest, failures, report); ``png_dir`` appears
    atomically once every PNG is written. ``processes`` share the work (request handling, FITS
    and PNG encoding are CPU-bound Python); ``spec.workers`` concurrent requests in all.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stale = clean_stale_temps(cache_dir)
    png_dir = Path(png_dir)
    for old in png_dir.parent.glob(f".{png_dir.name}.*"):  # a killed run's half-written PNG folder
        shutil.rmtree(old, ignore_errors=True)
    todo = subjects.copy()
    todo["arcsec_per_side"] = field_of_view(todo, spec.fov)
    repeated = todo["subject_id"].duplicated()
    if repeated.any():
        raise ValueError(f"subject list: subject_id {todo['subject_id'][repeated].iloc[0]} appears twice")
    records = todo.to_dict("records")
    chunks = [records[i:i + chunk_size] for i in range(0, len(records), chunk_size)]
    processes = max(1, min(processes, len(chunks)))
    threads = -(-spec.workers // processes)
    t0 = time.perf_counter()
    outcomes: list[_Outcome] = []
    with atomic_dir(png_dir) as tmp_png, contextlib.ExitStack() as stack:
        work = functools.partial(_chunk, spec=spec, cache_dir=cache_dir, png_dir=tmp_png, threads=threads)
        if processes > 1:
            # fork: spawned workers would re-run the caller's main module (a Snakemake script)
            pool = stack.enter_context(ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")))
            parts = pool.map(work, chunks)
        else:
            parts = map(work, chunks)
        for part in parts:
            outcomes.extend(part)
            log.info("%d / %d subjects (%.1f s)", len(outcomes), len(records), time.perf_counter() - t0)
    for o in outcomes:
        if o.failure:
            log.warning("subject %d: %s (%s) after %d attempt(s)", o.subject_id, o.failure["reason"],
                        o.failure["detail"], o.failure["attempts"])
    seconds = time.perf_counter() - t0
    manifest = pd.DataFrame([o.row for o in outcomes if o.row], columns=MANIFEST_COLUMNS)
    failures = pd.DataFrame([o.failure for o in outcomes if o.failure], columns=FAILURE_COLUMNS)
    retried: Counter[str] = Counter()
    for o in outcomes:
        retried.update(o.retried)
    report = {
        "subjects": len(records), "with_images": len(manifest), "failed": len(failures),
        "failures_by_reason": dict(sorted(Counter(failures["reason"]).items())),
        "from_cache": sum(o.cached for o in outcomes), "fetched": sum(bool(o.row) and not o.cached for o in outcomes),
        "requests": sum(o.requests for o in outcomes), "retries_by_reason": dict(sorted(retried.items())),
        "stale_temp_files_removed": stale, "seconds": round(seconds, 2),
        "subjects_per_second": round(len(records) / seconds, 1) if seconds > 0 else None,
        "processes": processes, "server": spec.server, "hips": spec.hips, "bands": spec.bands,
        "folder": spec.folder,
    }
    return manifest, failures, report
