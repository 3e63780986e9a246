"""FITS cutouts a user already has: one file per galaxy with the bands as image extensions, or
one file per band named ``<galaxy>_<band>.fits`` (or ``-<band>``). A band is named by the
``FILTER`` keyword, else the extension name (``G``, ``r``, ...), else the file name.

The one reader of such folders: the download route reads them instead of fetching cutouts
(``data.download.folder``) and the clump catalogue reads them (``clumpfinder.clumps.sources``).
Problems are :class:`CutoutError` with a short reason (for a failures table) and a detail.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

#: bands from blue to red
BAND_ORDER = ("u", "g", "r", "i", "z", "y")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz")
_BAND_FILE = re.compile(r"^(?P<stem>.+)[_-](?P<band>[ugrizyUGRIZY])$")

Bands = list[tuple[str | None, np.ndarray, fits.Header]]


class CutoutError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def is_fits(p: Path) -> bool:
    return p.name.lower().endswith(FITS_SUFFIXES)


def file_stem(p: Path, suffixes: tuple[str, ...] = FITS_SUFFIXES) -> str:
    """The file name without its (possibly double, e.g. .fits.gz) suffix."""
    for suffix in sorted(suffixes, key=len, reverse=True):
        if p.name.lower().endswith(suffix):
            return p.name[: -len(suffix)]
    return p.stem


def fits_groups(folder: str | Path) -> dict[str, list[Path]]:
    """{galaxy name: its files} of a FITS folder, sorted by name: a file per galaxy, or files
    named ``<galaxy>_<band>.fits`` grouped by galaxy; hidden files (temporaries) left out."""
    groups: dict[str, list[Path]] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and is_fits(p) and not p.name.startswith("."):
            m = _BAND_FILE.match(file_stem(p))
            groups.setdefault(m["stem"] if m else file_stem(p), []).append(p)
    return dict(sorted(groups.items()))


def _band_of(hdu: fits.ImageHDU | fits.PrimaryHDU) -> str | None:
    for value in (hdu.header.get("FILTER"), hdu.name):
        if isinstance(value, str) and value.strip().lower() in BAND_ORDER:
            return value.strip().lower()
    return None


def _read_file(path: Path) -> tuple[Bands, fits.Header | None]:
    """The file's images and, when its primary HDU holds no image (a multi-extension file), the
    primary header (where such files keep the object's metadata)."""
    out = []
    meta = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a truncated file: astropy warns and pads the data; make that an error (a full verify of
        # every header would cost more than the rest of a catalogue)
        warnings.filterwarnings("error", message=".*truncated.*")
        with fits.open(path, memmap=False) as hdul:
            if hdul[0].data is None:
                meta = hdul[0].header.copy()
            for hdu in hdul:
                if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                    out.append((_band_of(hdu), np.asarray(hdu.data, dtype=np.float32), hdu.header.copy()))
    return out, meta


def read_bands(files: list[Path]) -> tuple[Bands, fits.Header | None]:
    """(band or None, data, header) of every 2-D image in ``files``, and the metadata header of a
    multi-extension file (its image-less primary HDU; None otherwise); with one file per band, the
    file name names the band its header does not."""
    hdus: Bands = []
    meta = None
    for f in files:
        try:
            found, primary = _read_file(f)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same kind of failure
            raise CutoutError("unreadable_fits", f"{f}: {type(err).__name__}: {str(err)[:200]}") from None
        if len(files) > 1:
            m = _BAND_FILE.match(file_stem(f))
            found = [(b or (m["band"].lower() if m else None), d, h) for b, d, h in found[:1]]
        hdus += found
        meta = meta if meta is not None else primary
    if not hdus:
        raise CutoutError("no_image", "no 2-D image in " + ", ".join(map(str, files)))
    return hdus, meta


def band_planes(hdus: Bands, need: tuple[str, ...], min_valid_fraction: float
                ) -> tuple[dict[str, np.ndarray], dict[str, fits.Header]]:
    """The planes and headers by band (first of each), checked: every band of ``need`` present,
    one shape, at least ``min_valid_fraction`` of the pixels finite."""
    planes, headers = {}, {}
    for band, data, header in hdus:
        if band is not None and band not in planes:
            planes[band], headers[band] = data, header
    missing = [b for b in need if b not in planes]
    if missing:
        have = ", ".join(sorted(planes, key=BAND_ORDER.index)) or "none named"
        raise CutoutError("missing_band", f"bands {missing} missing (has {have}); bands are named by the FILTER "
                          "keyword, the extension name or the file name")
    shapes = {p.shape for p in planes.values()}
    if len(shapes) > 1:
        raise CutoutError("band_shapes_differ", f"band shapes {sorted(shapes)}")
    valid = float(np.mean([np.isfinite(p).mean() for p in planes.values()]))
    if valid < min_valid_fraction:
        raise CutoutError("nan_pixels", f"only {valid:.0%} of the pixels are finite")
    return planes, headers


def celestial_wcs(header: fits.Header) -> WCS | None:
    """The header's celestial WCS, or None when it has none astropy can use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w = WCS(header).celestial
        except Exception:  # noqa: BLE001 - a header astropy cannot read has no usable WCS
            return None
    return w if w.has_celestial and w.naxis == 2 else None
