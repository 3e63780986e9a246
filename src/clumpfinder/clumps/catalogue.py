"""A clump catalogue of any galaxies from a trained detector: the images go through the same
preprocessing as in training (colour composite, crop window, tensor), the detector predicts in
batches, and each galaxy's detections are post-processed and measured (:mod:`.measure`).

A galaxy that cannot be read or measured is a row of the failures table with the reason; the rest
go on. The tables come back in memory; :mod:`.tables` writes them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from clumpfinder.clumps.field import Field, cut_window, field_window
from clumpfinder.clumps.measure import MeasureSpec, footprint, galaxy_centre, photometry, post_process, world
from clumpfinder.clumps.sources import BadInput, Galaxy
from clumpfinder.detection.detector import CLASSES, DetectorSpec, as_tensor, predict_images
from clumpfinder.boxes import crop_window
from clumpfinder.imaging import fits_pixel_to_png, png_to_fits_pixel

log = logging.getLogger(__name__)

FAILURE_COLUMNS = ["galaxy", "file", "reason", "detail"]
#: the clump table's leading columns, in order (per-band photometry and the host's columns follow)
CLUMP_COLUMNS = ["galaxy", "subject_id", "clump_id", "clump_ra", "clump_dec", "x", "y", "dist_centre_arcsec",
                 "box_x1", "box_y1", "box_x2", "box_y2", "score", "label", "n_merged", "flux_ratio",
                 "flux_ratio_band", "is_clump_3pct", "is_clump_8pct", "flag_edge", "flag_background"]
GALAXY_COLUMNS = ["galaxy", "subject_id", "file", "ra", "dec", "redshift", "width", "height", "pixel_scale_arcsec",
                  "psf_fwhm_arcsec", "field", "field_arcsec", "window_x0", "window_y0", "window_width",
                  "window_height", "segment_found", "segment_pixels", "n_detections", "n_bulge", "n_outside",
                  "n_merged", "n_clumps"]


@dataclass
class Catalogue:
    clumps: pd.DataFrame
    galaxies: pd.DataFrame
    failures: pd.DataFrame
    seconds: float


def detector_window(g: Galaxy, preprocessing: dict[str, Any]) -> tuple[tuple[int, int, int, int], torch.Tensor, str]:
    """The detector's window on a galaxy's composite, its input tensor and how the window was
    chosen: ``field`` (the sky the detector was trained on, :mod:`.field`, when the model records
    its field and the galaxy's size and pixel scale are known), else ``crop`` or ``whole image``
    (the training crop, :func:`clumpfinder.boxes.crop_window`). The detector resamples the window
    to its input size itself, as in training."""
    h, w = g.shape
    field = Field.from_dict(preprocessing.get("field"))
    radius = None
    if field is not None:
        radius = g.meta.get("r_half_arcsec" if field.radius == "half_light_radius" else "size_arcsec")
    if field is not None and radius is not None and g.pixel_scale:
        cx, cy = fits_pixel_to_png(*galaxy_centre(g), h)
        window = field_window(w, h, (float(cx), float(cy)), field.side_arcsec(radius) / g.pixel_scale)
        how = "field"
    else:
        window = crop_window(w, h, preprocessing["crop"])
        how = "crop" if preprocessing["crop"] else "whole image"
    return window, as_tensor(cut_window(g.rgb, window)), how


def _detections(results: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"x1": r["bbox"][0], "y1": r["bbox"][1], "x2": r["bbox"][0] + r["bbox"][2],
             "y2": r["bbox"][1] + r["bbox"][3], "score": r["score"], "label": CLASSES[r["category_id"] - 1]}
            for r in results]
    d = pd.DataFrame(rows, columns=["x1", "y1", "x2", "y2", "score", "label"])
    # typed even when empty: an empty frame's object columns would turn the catalogue's numbers into text
    return d.astype({"x1": float, "y1": float, "x2": float, "y2": float, "score": float, "label": object})


def measure_galaxy(g: Galaxy, detections: pd.DataFrame, window: tuple[int, int, int, int], spec: MeasureSpec,
                   score: float, how: str = "whole image") -> tuple[pd.DataFrame, dict[str, Any]]:
    """The clump rows and the galaxy row of one galaxy from its detections (in window pixels);
    ``how``: how the window was chosen (:func:`detector_window`)."""
    fp = footprint(g, spec)
    clumps, counts = post_process(g, detections, window, spec, score, fp)
    ref = "r" if "r" in g.psf_fwhm else next(iter(g.psf_fwhm), None)
    galaxy = {
        "galaxy": g.name, "subject_id": g.meta.get("subject_id"), "file": g.meta.get("file"),
        "ra": g.meta.get("ra", np.nan), "dec": g.meta.get("dec", np.nan), "redshift": g.meta.get("redshift", np.nan),
        "width": g.shape[1], "height": g.shape[0], "pixel_scale_arcsec": g.pixel_scale,
        "psf_fwhm_arcsec": g.psf_fwhm.get(ref) if ref else None,
        "field": how, "field_arcsec": window[2] * g.pixel_scale if how == "field" else np.nan,
        "window_x0": window[0], "window_y0": window[1], "window_width": window[2], "window_height": window[3],
        "segment_found": bool(fp.found) if fp else None, "segment_pixels": int(fp.mask.sum()) if fp else None,
        **counts, "n_clumps": len(clumps),
    }
    n = len(clumps)
    cols: dict[str, Any] = {
        "galaxy": [g.name] * n, "subject_id": [g.meta.get("subject_id")] * n, "clump_id": np.arange(1, n + 1),
        "x": clumps["x"].to_numpy(), "y": clumps["y"].to_numpy(),
    }
    cols["clump_ra"], cols["clump_dec"] = world(g, cols["x"], cols["y"])
    for k in ("x1", "y1", "x2", "y2"):
        cols[f"box_{k}"] = clumps[k].to_numpy()
    cols.update(score=clumps["score"].to_numpy(), label=clumps["label"].to_numpy(),
                n_merged=clumps["n_merged"].to_numpy())
    flag_edge = clumps["edge"].to_numpy(bool)
    if g.planes:
        phot, gal = photometry(g, clumps, fp, spec)
        flag_edge = flag_edge | phot.pop("flag_edge_aperture").to_numpy(bool)
        cols.update({k: phot[k].to_numpy() for k in phot.columns})
        galaxy.update(gal)
        cx, cy = fp.centre
        px, py = png_to_fits_pixel(cols["x"], cols["y"], g.shape[0])
        cols["dist_centre_arcsec"] = np.hypot(px - cx, py - cy) * g.pixel_scale
        for r in spec.flag_ratios:
            galaxy[f"n_clumps_{round(100 * r):d}pct"] = int(phot[f"is_clump_{round(100 * r):d}pct"].sum())
    cols["flag_edge"] = flag_edge
    for key in ("ra", "dec", "redshift"):
        cols[f"galaxy_{key}"] = [galaxy[key]] * n
    cols["psf_fwhm_arcsec"] = [galaxy["psf_fwhm_arcsec"]] * n
    rows = pd.DataFrame(cols)
    return rows, galaxy


def _batches(items: Iterable[Galaxy | BadInput], n: int) -> Iterator[list[Galaxy | BadInput]]:
    batch: list[Galaxy | BadInput] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def run_catalogue(galaxies: Iterable[Galaxy | BadInput], model: torch.nn.Module, detector: DetectorSpec,
                  preprocessing: dict[str, Any], spec: MeasureSpec, score: float, batch_size: int = 16,
                  progress: Callable[[int], None] | None = None,
                  on_galaxy: Callable[[Galaxy, pd.DataFrame], None] | None = None) -> Catalogue:
    """Detect, post-process and measure every galaxy of ``galaxies``; ``progress(n)`` is called
    after each batch with the number of galaxies it held, ``on_galaxy(galaxy, clump_rows)`` after
    each galaxy measured (while its images are still in memory: overlays are drawn there)."""
    t0 = time.perf_counter()
    clump_parts, galaxy_rows, failures = [], [], []
    for batch in _batches(galaxies, batch_size):
        ready, windows, tensors, hows = [], [], [], []
        for g in batch:
            if isinstance(g, BadInput):
                failures.append({"galaxy": g.name, "file": g.file, "reason": g.reason, "detail": g.detail})
                continue
            try:
                window, tensor, how = detector_window(g, preprocessing)
            except ValueError as err:
                failures.append({"galaxy": g.name, "file": g.meta.get("file"), "reason": "too_small",
                                 "detail": str(err)})
                continue
            ready.append(g)
            windows.append(window)
            tensors.append(tensor)
            hows.append(how)
        results = predict_images(model, tensors, list(range(len(tensors))), detector.class_agnostic_nms,
                                 batch_size=batch_size) if tensors else []
        by_image: dict[int, list[dict[str, Any]]] = {}
        for r in results:
            by_image.setdefault(r["image_id"], []).append(r)
        for i, (g, window, how) in enumerate(zip(ready, windows, hows)):
            try:
                rows, galaxy = measure_galaxy(g, _detections(by_image.get(i, [])), window, spec, score, how)
            except Exception as err:  # noqa: BLE001 - one galaxy's failure must not lose the others
                log.exception("galaxy %s could not be measured", g.name)
                failures.append({"galaxy": g.name, "file": g.meta.get("file"), "reason": "measurement_error",
                                 "detail": f"{type(err).__name__}: {str(err)[:200]}"})
                continue
            clump_parts.append(rows)
            galaxy_rows.append(galaxy)
            if on_galaxy is not None:
                on_galaxy(g, rows)
        if progress is not None:
            progress(len(batch))
    clumps = pd.concat(clump_parts, ignore_index=True) if clump_parts else pd.DataFrame(columns=CLUMP_COLUMNS[:15])
    lead = [c for c in CLUMP_COLUMNS if c in clumps.columns]
    clumps = clumps[lead + [c for c in clumps.columns if c not in lead]]
    galaxies_df = pd.DataFrame(galaxy_rows)
    if galaxies_df.empty:
        galaxies_df = pd.DataFrame(columns=GALAXY_COLUMNS)
    return Catalogue(clumps, galaxies_df, pd.DataFrame(failures, columns=FAILURE_COLUMNS),
                     time.perf_counter() - t0)
