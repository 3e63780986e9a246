"""How much do simulated labels look like real Clump Scout labels?

The reference is the consensus training set Popp et al. (2024) published with their detector
(``imageGroups_train.pkl`` and ``imageGroups_valid.pkl`` in
``ou-astrophysics/Faster-R-CNN-for-Galaxy-Zoo-Clump-Scout``: one row per box, pixels of the
central 200 x 200 crop of the 400 px subject image; only galaxies with a box are listed). Those
files are pandas pickles, and a pickle can run any code when it is loaded, so
:func:`read_pickled_frame` admits only pandas and numpy classes. The project keeps derived
statistics of them (:func:`reference_statistics`), never the files.

The same statistics of any label table (:func:`label_statistics`) are compared with the reference
by Kolmogorov-Smirnov distances (:func:`ks_to_reference`): the largest gap between the two
cumulative distributions, 0 for identical distributions and 1 for disjoint ones. Lengths are in
units of the detector image's side, so labels of a 96 px image and of a 200 px crop compare.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: quantile levels kept of each continuous distribution (0.5 % steps: the CDF interpolated from
#: them is within 0.005 of the sample's, well below the KS distances that matter here)
LEVELS = np.round(np.linspace(0.0, 1.0, 201), 4)
#: modules whose classes a pickled DataFrame needs; everything else is refused
_ALLOWED_ROOTS = ("pandas", "numpy")
_ALLOWED_BUILTINS = ("slice",)
CONTINUOUS = ("box_side", "centre_distance", "nearest_box")


class _FrameUnpickler(pickle.Unpickler):
    """An unpickler that builds pandas/numpy objects and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in _ALLOWED_ROOTS or (module == "builtins" and name in _ALLOWED_BUILTINS):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only pandas and numpy classes are allowed")


def read_pickled_frame(path: str | Path) -> pd.DataFrame:
    """A pandas DataFrame from a pickle file, loading nothing but pandas and numpy classes.

    An unreadable file, a pickle that asks for any other class (which could run code), or a
    pickle that is not a DataFrame raises ValueError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = _FrameUnpickler(fh).load()
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError, TypeError,
            ValueError) as err:
        raise ValueError(f"{path}: cannot be read as a pickled pandas DataFrame ({err})") from err
    if not isinstance(obj, pd.DataFrame):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a pandas DataFrame")
    return obj


def popp_boxes(frames: list[pd.DataFrame], names: list[str] | None = None) -> pd.DataFrame:
    """Popp et al.'s label tables as ``subject_id, x1, y1, x2, y2, odd`` (crop pixels).

    Columns ``image_id, label, x1, x2, y1, y2`` are needed (label 2 = odd clump); a missing one
    raises ValueError naming the table and the column."""
    names = names or [f"table {i}" for i in range(len(frames))]
    out = []
    for df, name in zip(frames, names):
        missing = [c for c in ("image_id", "label", "x1", "x2", "y1", "y2") if c not in df.columns]
        if missing:
            raise ValueError(f"{name}: lacks column(s) {', '.join(missing)} of Popp et al.'s label table")
        out.append(pd.DataFrame({"subject_id": df["image_id"].to_numpy(), "x1": df["x1"], "y1": df["y1"],
                                 "x2": df["x2"], "y2": df["y2"], "odd": df["label"].to_numpy() == 2}))
    return pd.concat(out, ignore_index=True)


def label_statistics(boxes: pd.DataFrame, image_side: float | pd.Series) -> dict[str, Any]:
    """Per-galaxy and per-box statistics of a label table.

    ``boxes``: subject_id, x1, y1, x2, y2 (detector-image pixels, origin at the image corner) and
    ``odd`` (bool). ``image_side``: the detector image's side in pixels (a number, or a Series by
    subject_id). Galaxies without a box are not counted (the real tables list none).

    Returns samples (``boxes_per_galaxy`` counts; ``box_side``, ``centre_distance`` from the
    image centre and ``nearest_box`` (centre distance to the nearest other box of the galaxy), in
    image sides) and the odd share of boxes."""
    if boxes.empty:
        raise ValueError("no boxes: label statistics need at least one labelled galaxy")
    sid = boxes["subject_id"].to_numpy()
    side = (boxes["subject_id"].map(image_side).to_numpy(float) if isinstance(image_side, pd.Series)
            else np.full(len(boxes), float(image_side)))
    w = boxes["x2"].to_numpy(float) - boxes["x1"].to_numpy(float)
    h = boxes["y2"].to_numpy(float) - boxes["y1"].to_numpy(float)
    cx = (boxes["x1"].to_numpy(float) + boxes["x2"].to_numpy(float)) / 2
    cy = (boxes["y1"].to_numpy(float) + boxes["y2"].to_numpy(float)) / 2
    order = np.argsort(sid, kind="stable")
    starts = np.flatnonzero(np.r_[True, sid[order][1:] != sid[order][:-1]])
    ends = np.r_[starts[1:], len(order)]
    nearest = []
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        idx = order[s:e]
        d = np.hypot(cx[idx, None] - cx[None, idx], cy[idx, None] - cy[None, idx])
        np.fill_diagonal(d, np.inf)
        nearest.extend(d.min(axis=1) / side[idx])
    return {
        "galaxies": int(len(starts)),
        "boxes": int(len(boxes)),
        "boxes_per_galaxy": (ends - starts).astype(int),
        "odd_share": float(np.mean(boxes["odd"].to_numpy(bool))),
        "odd_galaxy_share": float(pd.Series(boxes["odd"].to_numpy(bool)).groupby(sid).any().mean()),
        # a square box's side; for clipped boxes the larger extent is the unclipped side
        "box_side": np.maximum(w, h) / side,
        "centre_distance": np.hypot(cx - side / 2, cy - side / 2) / side,
        "nearest_box": np.asarray(nearest, float),
    }


def reference_statistics(stats: dict[str, Any]) -> dict[str, Any]:
    """What the project keeps of a label table: the distribution of boxes per galaxy, the odd
    shares, and quantiles at :data:`LEVELS` of each continuous statistic (JSON-ready)."""
    counts = stats["boxes_per_galaxy"]
    values, n = np.unique(counts, return_counts=True)
    out = {
        "galaxies": stats["galaxies"], "boxes": stats["boxes"],
        "boxes_per_galaxy": {"mean": round(float(counts.mean()), 4),
                             "pmf": {str(int(v)): round(float(c) / len(counts), 6) for v, c in zip(values, n)}},
        "odd_share": round(stats["odd_share"], 4), "odd_galaxy_share": round(stats["odd_galaxy_share"], 4),
        "quantile_levels": LEVELS.tolist(),
    }
    for name in CONTINUOUS:
        out[name] = [round(float(q), 5) for q in np.quantile(stats[name], LEVELS)]
    return out


def _ks_continuous(sample: np.ndarray, quantiles: np.ndarray) -> float:
    """KS distance between a sample and a distribution given by its quantiles at LEVELS.

    Both CDFs are compared just after and just before every sample value, so point masses (ties
    in the sample or in the quantiles, e.g. boxes that all have one size) are handled exactly."""
    x = np.sort(np.asarray(sample, float))
    if x.size == 0:
        return 1.0
    q = np.asarray(quantiles, float)
    values, first = np.unique(q, return_index=True)
    last = len(q) - 1 - np.unique(q[::-1], return_index=True)[1]
    # the reference CDF at and just below each sample value (interpolated between quantiles)
    ref_at = np.interp(x, values, LEVELS[last], left=0.0, right=1.0)
    ref_below = np.interp(x, values, LEVELS[first], left=0.0, right=1.0)
    at = np.searchsorted(x, x, side="right") / x.size  # the sample's CDF at and just below each value
    below = np.searchsorted(x, x, side="left") / x.size
    return float(max(np.max(np.abs(at - ref_at)), np.max(np.abs(below - ref_below))))


def _ks_discrete(counts: np.ndarray, pmf: dict[str, float]) -> float:
    ks = np.arange(1, max(max(int(k) for k in pmf), int(np.max(counts))) + 1)
    ref = np.cumsum([pmf.get(str(k), 0.0) for k in ks])
    sim = np.array([np.mean(counts <= k) for k in ks])
    return float(np.max(np.abs(sim - ref)))


def ks_to_reference(stats: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Kolmogorov-Smirnov distance of each statistic to the reference (see module docstring)."""
    out = {"boxes_per_galaxy": _ks_discrete(stats["boxes_per_galaxy"], reference["boxes_per_galaxy"]["pmf"])}
    for name in CONTINUOUS:
        out[name] = _ks_continuous(stats[name], np.asarray(reference[name], float))
    return {k: round(v, 4) for k, v in out.items()}


def summarise(stats: dict[str, Any]) -> dict[str, Any]:
    """A short, readable summary of label statistics (means, shares, quartiles)."""
    counts = stats["boxes_per_galaxy"]
    out: dict[str, Any] = {
        "galaxies": stats["galaxies"], "boxes": stats["boxes"],
        "boxes_per_galaxy_mean": round(float(counts.mean()), 3),
        "single_box_share": round(float(np.mean(counts == 1)), 4),
        "odd_share": round(stats["odd_share"], 4), "odd_galaxy_share": round(stats["odd_galaxy_share"], 4),
    }
    for name in CONTINUOUS:
        if len(stats[name]):
            out[f"{name}_q05_q25_q50_q75_q95"] = [round(float(q), 4) for q in
                                                  np.quantile(stats[name], [0.05, 0.25, 0.5, 0.75, 0.95])]
    return out
