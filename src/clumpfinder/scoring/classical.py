"""A classical clump finder: the baseline every detector has to beat.

Per image (the same PNG the detectors see): take one channel (configurable; on the development
validation split the green one, the r band of the default composite, scored best), subtract a median-filtered
copy (a smooth model of the galaxy whose filter is wider than a clump), smooth the residual with a
Gaussian of the PSF's width (a matched filter for point-like clumps), estimate its noise robustly
(MAD of the sigma-clipped residual) and find local peaks above ``min_snr`` sigma with photutils.
Peaks within ``centre_radius_fwhm`` of the image centre are the bulge and are dropped. Each peak
becomes a box of the labels' size (``box_side`` of the label source's subject table, i.e.
box_scale x PSF FWHM) with the score ``snr / (snr + snr_half)``, so a score threshold is a significance
threshold and the evaluation's usual F1-best threshold on the validation split chooses k.

The median filter size (in PSF FWHM) is chosen from ``filter_fwhm`` on the validation split
against the consensus labels, with the F1 at each candidate's best threshold; the test split is
only predicted once the choice is made.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from astropy.stats import sigma_clipped_stats
from photutils.detection import find_peaks
from photutils.utils import NoDetectionsWarning
from scipy.ndimage import gaussian_filter, median_filter, zoom

from clumpfinder import metrics
from clumpfinder.io import known_fields

CHANNELS = {"red": 0, "green": 1, "blue": 2}


@dataclass(frozen=True)
class ClassicalSpec:
    """The ``classical`` section of the configuration."""

    channel: str = "green"
    filter_fwhm: tuple[float, ...] = (3.0, 4.0, 6.0, 8.0)
    smooth_fwhm: float = 1.0
    min_snr: float = 2.0
    min_separation_fwhm: float = 1.0
    centre_radius_fwhm: float = 0.75
    snr_half: float = 5.0

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"classical.channel {self.channel!r} is not one of {', '.join(CHANNELS)}")
        if not self.filter_fwhm or min(self.filter_fwhm) <= 0:
            raise ValueError(f"classical.filter_fwhm needs positive sizes, got {list(self.filter_fwhm)}")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "ClassicalSpec":
        fields = known_fields(cls, cfg, "classical")
        return cls(**{k: tuple(v) if k == "filter_fwhm" else v for k, v in fields.items()})


def smooth_model(data: np.ndarray, size_px: float, max_window: int = 9) -> np.ndarray:
    """The median-filtered image (window ``size_px``): a smooth model of the galaxy. Wide windows
    are filtered on a block-averaged copy (at most ``max_window`` px across) and interpolated back,
    which costs a fraction of the full-resolution filter and changes the smooth model little."""
    k = max(1, math.ceil(size_px / max_window))
    h, w = data.shape
    if k == 1:
        return median_filter(data, size=max(3, int(round(size_px)) | 1), mode="reflect")
    hp, wp = -(-h // k) * k, -(-w // k) * k
    padded = np.pad(data, ((0, hp - h), (0, wp - w)), mode="reflect")
    small = padded.reshape(hp // k, k, wp // k, k).mean(axis=(1, 3))
    model = median_filter(small, size=max(3, int(round(size_px / k)) | 1), mode="reflect")
    return zoom(model, k, order=1, mode="nearest", grid_mode=True)[:h, :w]


def find_clumps(image: np.ndarray, fwhm_px: float, filter_fwhm: float, spec: ClassicalSpec) -> pd.DataFrame:
    """Peaks of one RGB uint8 image (H, W, 3): columns x, y (pixel centres, 0-based) and snr."""
    data = image[..., CHANNELS[spec.channel]].astype(np.float64)
    residual = gaussian_filter(data - smooth_model(data, filter_fwhm * fwhm_px),
                               sigma=spec.smooth_fwhm * fwhm_px / 2.3548)
    _, median, sigma = sigma_clipped_stats(residual, sigma=3.0, stdfunc="mad_std")
    if not sigma > 0:
        return pd.DataFrame({"x": [], "y": [], "snr": []})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)  # a galaxy without clumps is no news
        peaks = find_peaks(residual - median, threshold=spec.min_snr * sigma,
                           min_separation=max(1.0, spec.min_separation_fwhm * fwhm_px))
    if peaks is None:
        return pd.DataFrame({"x": [], "y": [], "snr": []})
    out = pd.DataFrame({"x": np.asarray(peaks["x_peak"], float), "y": np.asarray(peaks["y_peak"], float),
                        "snr": np.asarray(peaks["peak_value"], float) / sigma})
    h, w = data.shape
    r = np.hypot(out["x"] - (w - 1) / 2, out["y"] - (h - 1) / 2)
    return out[r > spec.centre_radius_fwhm * fwhm_px].reset_index(drop=True)


def predict(images: Sequence[np.ndarray], image_ids: Sequence[int], box_side: Sequence[float],
            filter_fwhm: float, spec: ClassicalSpec, box_scale: float) -> list[dict[str, Any]]:
    """COCO results (category 'clump') for every image; ``box_side`` per image in pixels, the
    PSF FWHM being ``box_side / box_scale``."""
    results = []
    for img, image_id, side in zip(images, image_ids, box_side):
        peaks = find_clumps(img, side / box_scale, filter_fwhm, spec)
        h, w = img.shape[:2]
        for x, y, snr in peaks[["x", "y", "snr"]].itertuples(index=False):
            x1, y1 = max(0.0, x + 0.5 - side / 2), max(0.0, y + 0.5 - side / 2)
            x2, y2 = min(float(w), x + 0.5 + side / 2), min(float(h), y + 0.5 + side / 2)
            results.append({"image_id": int(image_id), "category_id": 1,
                            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                            "score": round(snr / (snr + spec.snr_half), 5)})
    return results


def choose_filter(val: dict[str, Any], images: Sequence[np.ndarray], box_side: Sequence[float], spec: ClassicalSpec,
                  box_scale: float, iou: float, scores: Sequence[float]) -> dict[str, Any]:
    """The median-filter size (and the threshold) with the highest F1 on the validation split; the
    F1 of every candidate is kept for the record."""
    ids = [im["id"] for im in val["images"]]
    trials = []
    for f in spec.filter_fwhm:
        m = metrics.match(val, predict(images, ids, box_side, f, spec, box_scale), (iou,))
        best = metrics.best_score(m, iou, scores)
        c = metrics.counts(m, iou, best)
        trials.append({"filter_fwhm": f, "score": best, "f1": c["f1"], "completeness": c["completeness"],
                       "purity": c["purity"]})
    key = [-1.0 if math.isnan(t["f1"]) else t["f1"] for t in trials]
    chosen = trials[int(np.argmax(key))]
    return {"filter_fwhm": chosen["filter_fwhm"], "score": chosen["score"], "trials": trials,
            "source": "highest F1 on the validation split (consensus, classes merged)"}


def box_sides(coco: dict[str, Any], subjects: pd.DataFrame) -> list[float]:
    """The label box side of each image of ``coco`` from the label source's subject table (the
    consensus's, or the catalogue route's); an image the table lacks is an error naming it."""
    side = subjects.set_index("subject_id")["box_side"]
    missing = [im["id"] for im in coco["images"] if im["id"] not in side.index]
    if missing:
        raise KeyError(f"subjects {missing[:5]} ({len(missing)} in all) are not in the consensus subject table")
    return [float(side[im["id"]]) for im in coco["images"]]
