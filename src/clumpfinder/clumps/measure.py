"""From a galaxy's detections to its clumps: post-processing and photometry (after Popp et al.
2024's pipeline, ``docs/catalogue.md``; photutils and astropy do the work).

Post-processing, in order: the score threshold; detections on the galaxy's centre (its bulge)
dropped; a photutils segmentation of one band gives the galaxy's footprint and detections outside
it are dropped; detections closer than ``merge_fwhm`` x the PSF FWHM merged into the higher-scored
one; edge flags; pixel -> RA/Dec through the FITS WCS. (Class-agnostic NMS runs in the detector's
prediction, :func:`clumpfinder.detection.detector.predict_images`.)

Photometry per band: a circular aperture of ``aperture_fwhm`` x that band's PSF FWHM, the local
background (the galaxy's light under the clump) as the sigma-clipped median of an annulus of
``annulus_fwhm`` (just outside the aperture: the galaxy's light varies over a few FWHM) with other clumps and non-galaxy pixels masked, and a PSF aperture correction:
for a point source of flux F on a locally flat background B, the aperture sum minus the annulus
estimate is F x [EE(r_ap) - A_ap / A_ann x (EE(r_out) - EE(r_in))], EE the PSF's encircled energy
(a Moffat of the header's or the configured beta, or a Gaussian). The galaxy's flux is the sum of
its segment; the clump/galaxy flux ratio and the 3 % / 8 % flags use the bluest band.

Pixel conventions: boxes and ``x``/``y`` are image pixels with the origin at the top-left corner
and y down (as the PNG the detector saw, :mod:`clumpfinder.imaging`); photometry runs on the FITS
planes (0-based pixel centres, y up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from astropy.stats import sigma_clipped_stats
from photutils.aperture import CircularAnnulus, CircularAperture
from photutils.segmentation import detect_sources
from scipy import ndimage

from clumpfinder.clumps.sources import Galaxy
from clumpfinder.data.cutouts import BAND_ORDER
from clumpfinder.imaging import png_to_fits_pixel
from clumpfinder.io import known_fields

LN10 = np.log(10.0)


@dataclass
class MeasureSpec:
    """Post-processing and photometry settings (config key ``catalogue.measure``)."""

    bulge_radius_fwhm: float = 0.75
    merge_fwhm: float = 0.5
    segmentation_band: str = "r"
    segmentation_nsigma: float = 1.5
    segmentation_npixels: int = 10
    segmentation_smooth_fwhm: float = 1.0
    aperture_fwhm: float = 1.125
    annulus_fwhm: list[float] = field(default_factory=lambda: [1.125, 1.75])
    psf_beta: float | None = 3.0
    flag_ratios: list[float] = field(default_factory=lambda: [0.03, 0.08])
    min_annulus_pixels: int = 10

    def __post_init__(self) -> None:
        lo, hi = self.annulus_fwhm
        if not self.aperture_fwhm <= lo < hi:
            raise ValueError(f"catalogue.measure: need aperture_fwhm <= annulus inner < outer, got "
                             f"{self.aperture_fwhm}, {self.annulus_fwhm}")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "MeasureSpec":
        return cls(**known_fields(cls, cfg, "catalogue.measure"))


def encircled_energy(r: np.ndarray | float, fwhm: float, beta: float | None) -> np.ndarray | float:
    """Fraction of a PSF's flux within radius ``r`` (same units as ``fwhm``): a Moffat of index
    ``beta``, or a Gaussian when ``beta`` is None."""
    r = np.asarray(r, dtype=float)
    if beta is None:
        sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        return 1.0 - np.exp(-0.5 * (r / sigma) ** 2)
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return 1.0 - (1.0 + (r / alpha) ** 2) ** (1.0 - beta)


def aperture_correction(spec: MeasureSpec, beta: float | None) -> float:
    """What an aperture-minus-annulus flux of a point source must be divided by: the share of its
    flux the aperture keeps minus the share the annulus estimate takes away (radii in FWHM)."""
    r, (r_in, r_out) = spec.aperture_fwhm, spec.annulus_fwhm
    ee = lambda x: float(encircled_energy(x, 1.0, beta))  # noqa: E731
    return ee(r) - r**2 / (r_out**2 - r_in**2) * (ee(r_out) - ee(r_in))


@dataclass
class Footprint:
    """The galaxy's segment (FITS orientation) and the sky statistics of the band it came from."""

    mask: np.ndarray
    centre: tuple[float, float]  # FITS pixel of the galaxy centre
    found: bool


def sky_stats(plane: np.ndarray) -> tuple[float, float]:
    """Sigma-clipped (median, standard deviation) of a plane with a galaxy in it."""
    _, median, std = sigma_clipped_stats(plane, mask=~np.isfinite(plane), sigma=3.0, maxiters=5)
    return float(median), float(std)


def off_galaxy_stats(plane: np.ndarray, sky: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826 x median absolute deviation) of the pixels ``sky`` marks (the galaxy's
    footprint, grown, left out): robust without clipping iterations."""
    v = plane[sky & np.isfinite(plane)]
    if v.size < 10:  # the galaxy fills the cutout: clipped statistics of the whole plane
        return sky_stats(plane)
    median = float(np.median(v))
    return median, float(1.4826 * np.median(np.abs(v - median)))


def galaxy_centre(g: Galaxy) -> tuple[float, float]:
    """FITS pixel of the galaxy: its catalogued position through the WCS, else the image centre."""
    ny, nx = g.shape
    if g.wcs is not None and "ra" in g.meta and "dec" in g.meta:
        px, py = g.wcs.wcs_world2pix(g.meta["ra"], g.meta["dec"], 0)
        if np.isfinite(px) and np.isfinite(py) and 0 <= px < nx and 0 <= py < ny:
            return float(px), float(py)
    return (nx - 1) / 2.0, (ny - 1) / 2.0


#: the smoothing of a plain image's segmentation where its PSF and pixel scale are unknown (px)
PLAIN_IMAGE_FWHM_PX = 3.0


def footprint(g: Galaxy, spec: MeasureSpec) -> Footprint:
    """The galaxy's footprint: a photutils segmentation of the (smoothed) segmentation band, the
    segment under the galaxy centre (else the nearest one), holes filled. A plain image (no
    bands) is segmented on its colour composite's mean of R, G and B, above its own sky level."""
    if g.planes:
        band = spec.segmentation_band if spec.segmentation_band in g.planes else _reddest(g)
        plane = g.planes[band]
        fwhm_px = g.psf_fwhm[band] / g.pixel_scale
    else:  # FITS orientation (row 0 at the bottom), as the planes
        plane = g.rgb.astype(np.float32).mean(axis=2)[::-1]
        fwhm_px = _fwhm_px(g, "r") or PLAIN_IMAGE_FWHM_PX
    finite = np.isfinite(plane)
    data = np.where(finite, plane, 0.0)
    smoothed = ndimage.gaussian_filter(data, spec.segmentation_smooth_fwhm * fwhm_px / 2.3548)
    median, std = sky_stats(np.where(finite, smoothed, np.nan))
    cx, cy = galaxy_centre(g)
    segm = detect_sources(smoothed - median, spec.segmentation_nsigma * std, spec.segmentation_npixels,
                          mask=~finite)
    if segm is None:
        return Footprint(np.zeros(plane.shape, bool), (cx, cy), False)
    labels = segm.data
    label = labels[int(round(cy)), int(round(cx))]
    if label == 0:  # the centre pixel is below the threshold: the segment nearest to it
        yy, xx = np.nonzero(labels)
        k = np.argmin((xx - cx) ** 2 + (yy - cy) ** 2)
        label = labels[yy[k], xx[k]]
    return Footprint(ndimage.binary_fill_holes(labels == label), (cx, cy), True)


def _reddest(g: Galaxy) -> str:
    return max(g.planes, key=BAND_ORDER.index)


def bluest(g: Galaxy) -> str:
    return min(g.planes, key=BAND_ORDER.index)


def post_process(g: Galaxy, detections: pd.DataFrame, window: tuple[int, int, int, int], spec: MeasureSpec,
                 score: float, fp: Footprint | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """The clumps among a galaxy's detections (``detections``: x1, y1, x2, y2 in the detector's
    window, score, label), with their position in image pixels, and the counts of what was dropped."""
    x0, y0, w, h = window
    d = detections[detections["score"] >= score].sort_values("score", ascending=False, kind="stable")
    d = d.reset_index(drop=True)
    counts = {"n_detections": len(d), "n_bulge": 0, "n_outside": 0, "n_merged": 0}
    d = d.assign(
        edge=(d["x1"] <= 1) | (d["y1"] <= 1) | (d["x2"] >= w - 1) | (d["y2"] >= h - 1),
        x1=d["x1"] + x0, x2=d["x2"] + x0, y1=d["y1"] + y0, y2=d["y2"] + y0,
    )
    d["x"], d["y"] = (d["x1"] + d["x2"]) / 2, (d["y1"] + d["y2"]) / 2
    if fp is None or d.empty:
        return d.assign(n_merged=0), counts
    ny = g.shape[0]
    # the r band's FWHM, else the first band's; a plain image without a PSF and a scale: no bulge
    # cut (there is no scale for it) and merging within 1 px
    fwhm_px = _fwhm_px(g, "r")
    px, py = png_to_fits_pixel(d["x"].to_numpy(), d["y"].to_numpy(), ny)
    cx, cy = fp.centre
    bulge = np.hypot(px - cx, py - cy) < spec.bulge_radius_fwhm * (fwhm_px or 0.0)
    counts["n_bulge"] = int(bulge.sum())
    ix = np.clip(np.round(px).astype(int), 0, g.shape[1] - 1)
    iy = np.clip(np.round(py).astype(int), 0, ny - 1)
    outside = ~bulge & ~fp.mask[iy, ix]
    counts["n_outside"] = int(outside.sum())
    d = d[~bulge & ~outside].reset_index(drop=True)
    # merge: each detection joins the highest-scored kept one within merge_fwhm x FWHM
    keep, merged = [], []
    radius = spec.merge_fwhm * fwhm_px if fwhm_px else 1.0
    for i, (x, y) in enumerate(zip(d["x"], d["y"])):
        near = [j for j in keep if np.hypot(d.at[j, "x"] - x, d.at[j, "y"] - y) < radius]
        if near:
            merged[keep.index(near[0])] += 1
        else:
            keep.append(i)
            merged.append(0)
    counts["n_merged"] = int(sum(merged))
    return d.loc[keep].reset_index(drop=True).assign(n_merged=merged), counts


def _fwhm_px(g: Galaxy, band: str) -> float | None:
    """The PSF FWHM in pixels (``band``'s, else the first band's); None where PSF or scale is unknown."""
    if not g.psf_fwhm or not g.pixel_scale:
        return None
    return g.psf_fwhm.get(band, next(iter(g.psf_fwhm.values()))) / g.pixel_scale


def photometry(g: Galaxy, clumps: pd.DataFrame, fp: Footprint, spec: MeasureSpec) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fluxes, errors, magnitudes, backgrounds per band of ``clumps`` (x, y in image pixels) and the
    galaxy's segment fluxes; the flux ratio and flags in the bluest band."""
    ny, nx = g.shape
    px, py = png_to_fits_pixel(clumps["x"].to_numpy(), clumps["y"].to_numpy(), ny)
    positions = np.column_stack([px, py])
    out: dict[str, Any] = {}
    gal: dict[str, Any] = {"segment_pixels": int(fp.mask.sum())}
    sky = ~ndimage.binary_dilation(fp.mask, iterations=3)
    yy, xx = np.ogrid[:ny, :nx]
    flag_bkg = np.zeros(len(clumps), bool)
    flag_edge = np.zeros(len(clumps), bool)
    flag_masked = np.zeros(len(clumps), bool)
    for band in sorted(g.planes, key=BAND_ORDER.index):
        plane = g.planes[band]
        bad = ~np.isfinite(plane)
        data = np.where(bad, 0.0, plane)
        sky_level, sky_std = off_galaxy_stats(plane, sky)
        sigma = g.sky_sigma.get(band, sky_std)
        seg = fp.mask & ~bad  # NaN pixels are neither light nor sky
        gal[f"galaxy_flux_{band}"] = float((data[seg] - sky_level).sum())
        gal[f"galaxy_flux_err_{band}"] = float(sigma * np.sqrt(seg.sum()))
        flux = np.full(len(clumps), np.nan)
        err = np.full(len(clumps), np.nan)
        bkg = np.full(len(clumps), np.nan)
        if len(clumps):
            fwhm = _fwhm_px(g, band)
            r_ap = spec.aperture_fwhm * fwhm
            r_in, r_out = (f * fwhm for f in spec.annulus_fwhm)
            beta = g.psf_beta.get(band, spec.psf_beta)
            corr = aperture_correction(spec, beta)
            aps = CircularAperture(positions, r_ap)
            sums = np.atleast_1d(aps.do_photometry(data, mask=bad, method="exact")[0])
            flag_edge |= (px - r_out < -0.5) | (py - r_out < -0.5) | (px + r_out > nx - 0.5) | (py + r_out > ny - 0.5)
            # one annulus mask for all clumps: non-galaxy pixels and every clump's aperture (a clump's
            # own aperture never reaches its annulus, which starts outside it)
            others = np.zeros_like(bad)
            for x, y in positions:
                others |= (xx - x) ** 2 + (yy - y) ** 2 < r_ap**2
            level, n_ann = np.full(len(clumps), np.nan), np.zeros(len(clumps))
            for i, am in enumerate(CircularAnnulus(positions, r_in, r_out).to_mask(method="center")):
                values = am.get_values(data, mask=bad | others | ~fp.mask)
                if values.size < spec.min_annulus_pixels:  # little galaxy around: only clumps masked
                    values = am.get_values(data, mask=bad | others)
                    flag_bkg[i] = True
                if values.size:
                    level[i] = sigma_clipped_stats(values, sigma=3.0, maxiters=5)[1]
                    n_ann[i] = values.size
            bkg = np.where(np.isfinite(level), level, sky_level)
            # the background under the pixels summed: NaN pixels are left out of both
            area = np.atleast_1d(aps.area_overlap(data, mask=bad, method="exact")).astype(float)
            flag_masked |= area < 0.999 * float(aps.area)
            flux = (sums - bkg * area) / corr
            err = sigma * np.sqrt(area + np.pi / 2 * area**2 / np.maximum(n_ann, 1.0)) / corr
        out[f"flux_{band}"] = flux
        out[f"flux_err_{band}"] = err
        out[f"background_{band}"] = bkg
        if band in g.zeropoint:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"mag_{band}"] = np.where(flux > 0, g.zeropoint[band] - 2.5 * np.log10(flux), np.nan)
                out[f"mag_err_{band}"] = np.where(flux > 0, 2.5 / LN10 * err / flux, np.nan)
    ref = bluest(g)
    ratio = out[f"flux_{ref}"] / gal[f"galaxy_flux_{ref}"] if gal[f"galaxy_flux_{ref}"] > 0 else np.nan
    out["flux_ratio"] = np.broadcast_to(ratio, len(clumps)).astype(float)
    out["flux_ratio_band"] = ref
    star_forming = np.asarray(clumps["label"] == "clump") if "label" in clumps else True
    for r in spec.flag_ratios:  # odd clumps (stars, background galaxies) are never giant clumps
        out[f"is_clump_{round(100 * r):d}pct"] = np.asarray(out["flux_ratio"] > r) & star_forming
    out["flag_background"] = flag_bkg
    out["flag_masked"] = flag_masked
    out["flag_edge_aperture"] = flag_edge
    return pd.DataFrame(out, index=clumps.index), gal


def world(g: Galaxy, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec (deg) of image pixels (corner origin, y down) through the galaxy's WCS."""
    if g.wcs is None:
        return np.full(len(x), np.nan), np.full(len(x), np.nan)
    px, py = png_to_fits_pixel(np.asarray(x), np.asarray(y), g.shape[0])
    ra, dec = g.wcs.wcs_pix2world(px, py, 0)
    return np.asarray(ra, float), np.asarray(dec, float)

