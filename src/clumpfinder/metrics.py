"""Completeness, purity, F1 and precision-recall from one pycocotools matching, with bootstrap
confidence intervals over test images, and the comparison of training recipes whose intervals
hold training-seed variance too (:func:`recipe_bootstrap`).

pycocotools matches detections to ground truths greedily in order of decreasing score, so the
matches of the detections above any score threshold are the same whatever lies below it. One
``COCOeval.evaluate()`` per IoU set therefore gives, for every detection, whether it is a true
positive, a false positive or ignored (matched to an ignored "crowd" box), and for every ground
truth the score of the detection that found it. Every threshold, curve, per-image count and
bootstrap resample is then array arithmetic on those records.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


@dataclass
class Matches:
    """Per-detection and per-ground-truth match records at several IoU thresholds.

    ``dets``: image_id, category_id, score, and for each IoU ``t`` the columns ``tp@t`` and
    ``ignored@t`` (a detection that is neither is a false positive). ``gts``: image_id, ann_id,
    category_id, ignored, extra annotation fields, and ``found_score@t`` (score of the detection
    that matched it, NaN if none). ``image_ids``: every image of the dataset (for bootstrap).
    """

    ious: tuple[float, ...]
    dets: pd.DataFrame
    gts: pd.DataFrame
    image_ids: np.ndarray


def coco_index(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO object for an in-memory dataset (quietly). Its image and annotation
    dicts are copied (COCOeval adds keys to them); the values inside are shared, never modified."""
    gt = COCO()
    gt.dataset = {**dataset, **{k: [dict(x) for x in dataset[k]] for k in ("images", "annotations")}}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def load_results(gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """pycocotools' ``loadRes`` without its prints and without touching ``results`` (it adds
    keys to each result dict, so those are copied)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes([dict(r) for r in results])


def match(gt_dataset: dict[str, Any], results: list[dict[str, Any]], ious: Sequence[float] = (0.3, 0.5),
          use_cats: bool = False, extra_fields: Sequence[str] = ()) -> Matches:
    """Match ``results`` to ``gt_dataset`` with pycocotools at each IoU (one area range, no
    truncation); ``use_cats=False`` merges the classes."""
    ious = tuple(float(t) for t in ious)
    gt = coco_index(gt_dataset)
    det_rows: list[dict[str, Any]] = []
    found: dict[int, list[float]] = {}
    if results:
        dt = load_results(gt, results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.iouThrs = np.array(ious)
        ev.params.areaRng = [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [max(1, len(results))]
        ev.params.useCats = int(use_cats)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
        for e in ev.evalImgs:
            if e is None:
                continue
            dt_matches = np.asarray(e["dtMatches"]).reshape(len(ious), -1)
            dt_ignore = np.asarray(e["dtIgnore"]).reshape(len(ious), -1).astype(bool)
            for j, (dt_id, score) in enumerate(zip(e["dtIds"], e["dtScores"])):
                row = {"image_id": e["image_id"], "category_id": dt.anns[dt_id]["category_id"], "score": score}
                for k, t in enumerate(ious):
                    row[f"tp@{t:g}"] = bool(dt_matches[k, j] > 0 and not dt_ignore[k, j])
                    row[f"ignored@{t:g}"] = bool(dt_ignore[k, j])
                det_rows.append(row)
            gt_matches = np.asarray(e["gtMatches"]).reshape(len(ious), -1)
            for j, gt_id in enumerate(e["gtIds"]):
                scores = found.setdefault(gt_id, [math.nan] * len(ious))
                for k in range(len(ious)):
                    if gt_matches[k, j] > 0:
                        scores[k] = dt.anns[int(gt_matches[k, j])]["score"]
    det_cols = ["image_id", "category_id", "score"] + [f"{p}@{t:g}" for t in ious for p in ("tp", "ignored")]
    dets = pd.DataFrame(det_rows, columns=det_cols).astype(
        {"image_id": np.int64, "category_id": np.int64, "score": np.float64,
         **{c: bool for c in det_cols[3:]}})  # typed even when there are no detections
    gt_rows = []
    for a in gt_dataset["annotations"]:
        row = {"image_id": a["image_id"], "ann_id": a["id"], "category_id": a["category_id"],
               "ignored": bool(a.get("iscrowd", 0))}
        for f in extra_fields:
            row[f] = a.get(f)
        for k, t in enumerate(ious):
            row[f"found_score@{t:g}"] = found.get(a["id"], [math.nan] * len(ious))[k]
        gt_rows.append(row)
    gts = pd.DataFrame(gt_rows, columns=["image_id", "ann_id", "category_id", "ignored", *extra_fields,
                                         *[f"found_score@{t:g}" for t in ious]])
    return Matches(ious, dets, gts, np.array([im["id"] for im in gt_dataset["images"]]))


def _ratios(tp: float, fp: float, n_gt: float) -> dict[str, float]:
    c = tp / n_gt if n_gt else math.nan
    p = tp / (tp + fp) if tp + fp else math.nan
    f1 = 2 * c * p / (c + p) if not (math.isnan(c) or math.isnan(p)) and c + p > 0 else (
        0.0 if n_gt and not tp else math.nan)
    return {"completeness": c, "purity": p, "f1": f1}


def counts(m: Matches, iou: float, score: float, category_id: int | None = None) -> dict[str, Any]:
    """TP, FP, ground truths and the ratios at one (IoU, score); optionally one category."""
    d, g = m.dets, m.gts
    if category_id is not None:
        d, g = d[d["category_id"] == category_id], g[g["category_id"] == category_id]
    keep = (d["score"] >= score) & ~d[f"ignored@{iou:g}"]
    tp = int((keep & d[f"tp@{iou:g}"]).sum())
    fp = int((keep & ~d[f"tp@{iou:g}"]).sum())
    n_gt = int((~g["ignored"]).sum())
    return {"iou": iou, "score": score, "tp": tp, "fp": fp, "n_gt": n_gt, **_ratios(tp, fp, n_gt)}


def grid(m: Matches, scores: Sequence[float]) -> list[dict[str, Any]]:
    """Counts at every IoU of ``m`` times every score threshold."""
    return [counts(m, t, s) for t in m.ious for s in scores]


def best_score(m: Matches, iou: float, scores: Sequence[float]) -> float:
    """The score threshold with the highest F1 (the lowest such threshold on ties)."""
    f1 = [counts(m, iou, s)["f1"] for s in scores]
    f1 = [-1.0 if math.isnan(v) else v for v in f1]
    return float(scores[int(np.argmax(f1))])


def pr_curve(m: Matches, iou: float, max_points: int = 200) -> dict[str, list[float]]:
    """Precision and recall as the score threshold falls through every detection score."""
    d = m.dets.loc[~m.dets[f"ignored@{iou:g}"]].sort_values("score", ascending=False, kind="mergesort")
    n_gt = int((~m.gts["ignored"]).sum())
    tp = np.cumsum(d[f"tp@{iou:g}"].to_numpy())
    n = np.arange(1, len(d) + 1)
    recall = tp / n_gt if n_gt else np.full(len(d), np.nan)
    precision = tp / n
    idx = np.unique(np.linspace(0, len(d) - 1, min(max_points, len(d))).round().astype(int)) if len(d) else []
    return {"recall": [round(float(recall[i]), 5) for i in idx], "precision": [round(float(precision[i]), 5) for i in idx],
            "score": [round(float(d["score"].iloc[i]), 5) for i in idx]}


def per_image(m: Matches, iou: float, score: float) -> pd.DataFrame:
    """TP, FP and ground truths per image (every image, zeros included)."""
    d = m.dets
    keep = (d["score"] >= score) & ~d[f"ignored@{iou:g}"]
    tp = d[keep & d[f"tp@{iou:g}"]].groupby("image_id").size()
    fp = d[keep & ~d[f"tp@{iou:g}"]].groupby("image_id").size()
    n_gt = m.gts[~m.gts["ignored"]].groupby("image_id").size()
    out = pd.DataFrame(index=pd.Index(m.image_ids, name="image_id"))
    for name, s in (("tp", tp), ("fp", fp), ("n_gt", n_gt)):
        out[name] = s.reindex(out.index, fill_value=0).astype(int)
    return out


def bootstrap(m: Matches, iou: float, score: float, n: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, dict[str, float]]:
    """Percentile confidence intervals of completeness, purity and F1, resampling test images
    with replacement (``n`` resamples, seeded: the same inputs give the same intervals)."""
    table = per_image(m, iou, score).to_numpy(dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(table), size=(n, len(table)))
    resampled = _ratios_per_seed(table[None], idx)
    return {k: dict(zip(("low", "high"), _interval(v[0], level))) for k, v in resampled.items()}


def completeness_by(m: Matches, field: str, bins: Sequence[float], iou: float, score: float,
                    category_id: int | None = None) -> list[dict[str, Any]]:
    """Completeness of the ground truths (optionally of one category) binned by an annotation
    field, e.g. the clump's flux fraction: which clumps are missed?"""
    g = m.gts.dropna(subset=[field])
    if category_id is not None:
        g = g[g["category_id"] == category_id]
    found = g[f"found_score@{iou:g}"] >= score
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (g[field] >= lo) & (g[field] < hi)
        n = int(sel.sum())
        out.append({"low": lo, "high": hi, "n": n, "found": int((found & sel).sum()),
                    "completeness": float((found & sel).sum() / n) if n else math.nan})
    return out


def per_image_record(m: Matches, iou: float, score: float) -> dict[str, Any]:
    """:func:`per_image` as plain lists (for metrics.json), so later stages can resample the same
    test images for several models (a paired bootstrap) without re-matching."""
    t = per_image(m, iou, score)
    return {"iou": iou, "score": score, "image_id": [int(i) for i in t.index],
            **{k: [int(v) for v in t[k]] for k in ("tp", "fp", "n_gt")}}


def _interval(v: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite values (NaN, NaN when there are none)."""
    v = v[np.isfinite(v)]
    if not len(v):
        return math.nan, math.nan
    return float(np.percentile(v, (1 - level) / 2 * 100)), float(np.percentile(v, (1 + level) / 2 * 100))


#: training seeds each trained arm of a comparison needs before its difference can be decided
MIN_SEEDS = 3

#: a comparison's verdict: the difference's interval lies above zero, below it, or holds it; or
#: it cannot be decided (an arm has fewer than MIN_SEEDS training seeds)
VERDICTS = ("higher", "lower", "not decided", "cannot decide")


def excludes_zero(low: float, high: float) -> bool:
    """Whether an interval excludes zero at the 3 decimals the documents show (a bound that prints
    as 0.000 does not count as excluding it)."""
    return not (math.isnan(low) or math.isnan(high)) and (round(low, 3) > 0 or round(high, 3) < 0)


def verdict(low: float, high: float, decidable: bool) -> str:
    """One of :data:`VERDICTS` for a difference with interval [low, high]."""
    if not decidable:
        return "cannot decide"
    if not excludes_zero(low, high):
        return "not decided"
    return "higher" if round(low, 3) > 0 else "lower"


def recipe_bootstrap(arms: dict[str, Sequence[dict[str, Any]]], baseline: str, n: int = 1000, seed: int = 0,
                     level: float = 0.95, fixed: Sequence[str] = (),
                     min_seeds: int = MIN_SEEDS) -> dict[str, dict[str, dict[str, Any]]]:
    """Compare training recipes (arms) scored on the same test images, with intervals that hold
    training-seed variance as well as test-galaxy variance.

    ``arms`` maps a name to one :func:`per_image_record` per training seed (one trained model
    each); ``fixed`` names arms that are not trained (a classical finder: one record, no seed
    variance). Each resample draws the test images with replacement once, shared by every arm
    (paired), and, independently for each arm, its training seeds with replacement; an arm's value
    in the resample is the mean over its drawn seeds of each seed's completeness, purity or F1 on
    the drawn images. Seeds and images are crossed factors (every model is scored on every image),
    and resampling both independently is Owen's (2007) pigeonhole bootstrap, which is mildly
    conservative. For each arm and measure:

    * ``value``: the mean over its seeds; ``low``/``high``: percentile interval over the resamples;
    * ``diff`` = value - baseline's value, ``diff_low``/``diff_high`` on the same resamples;
    * ``galaxy_low``/``galaxy_high`` and ``diff_galaxy_low``/``diff_galaxy_high``: the intervals
      from resampling the test images alone, seeds held fixed: they describe these trained models,
      not the recipes (with one seed per arm, the only interval there is);
    * ``n_seeds``, ``seed_sd`` (standard deviation over seeds, NaN for one);
    * ``decidable``: this arm and the baseline each have ``min_seeds`` seeds or are fixed;
      ``verdict``: :func:`verdict` of the difference (the baseline's own is None).
    """
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not one of the compared arms {sorted(arms)}")
    ref_ids = arms[baseline][0]["image_id"]
    tables: dict[str, np.ndarray] = {}
    for name, records in arms.items():
        if not records:
            raise ValueError(f"arm {name!r} has no per-image record")
        if name in fixed and len(records) != 1:
            raise ValueError(f"arm {name!r} is not trained (fixed) but has {len(records)} records")
        for r in records:
            if r["image_id"] != ref_ids:
                raise ValueError(f"arm {name!r} was scored on other test images than {baseline!r}; "
                                 "a paired comparison needs the same test split")
        tables[name] = np.stack([np.column_stack([r["tp"], r["fp"], r["n_gt"]]).astype(np.float64)
                                 for r in records])  # seeds x images x (tp, fp, n_gt)
    idx = np.random.default_rng(seed).integers(0, len(ref_ids), size=(n, len(ref_ids)))
    per_seed = {name: _ratios_per_seed(t, idx) for name, t in tables.items()}  # measure -> seeds x resamples
    galaxy = {name: {k: v.mean(axis=0) for k, v in r.items()} for name, r in per_seed.items()}
    both: dict[str, dict[str, np.ndarray]] = {}
    for j, name in enumerate(sorted(tables)):  # each arm's seed draws: its own stream, whatever the others
        n_seeds = len(tables[name])
        draws = np.random.default_rng([seed, 1, j]).integers(0, n_seeds, size=(n, n_seeds))
        cols = np.arange(n)[:, None]
        both[name] = {k: np.mean(v[draws, cols], axis=1) for k, v in per_seed[name].items()}
    full = {name: _ratios_per_seed(t, None) for name, t in tables.items()}  # measure -> seeds x 1
    enough = {name: name in fixed or len(t) >= min_seeds for name, t in tables.items()}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, t in tables.items():
        out[name] = {}
        for k in ("completeness", "purity", "f1"):
            value, base = float(np.mean(full[name][k])), float(np.mean(full[baseline][k]))
            low, high = _interval(both[name][k], level)
            d_low, d_high = _interval(both[name][k] - both[baseline][k], level)
            g_low, g_high = _interval(galaxy[name][k], level)
            gd_low, gd_high = _interval(galaxy[name][k] - galaxy[baseline][k], level)
            decidable = enough[name] and enough[baseline]
            seeds = full[name][k][:, 0]
            out[name][k] = {"value": value, "low": low, "high": high, "diff": value - base, "diff_low": d_low,
                            "diff_high": d_high, "galaxy_low": g_low, "galaxy_high": g_high,
                            "diff_galaxy_low": gd_low, "diff_galaxy_high": gd_high, "n_seeds": len(t),
                            "seed_sd": float(np.std(seeds, ddof=1)) if len(t) > 1 else math.nan,
                            "decidable": decidable,
                            "verdict": None if name == baseline else verdict(d_low, d_high, decidable)}
    return out


def _ratios_per_seed(table: np.ndarray, idx: np.ndarray | None) -> dict[str, np.ndarray]:
    """Completeness, purity and F1 of each seed's table (seeds x images x (tp, fp, n_gt)) summed
    over the image indices ``idx`` (resamples x images; None: every image once): seeds x
    resamples (x 1 for None). F1 is 0 where nothing was found, as in :func:`counts`."""
    if idx is None:
        tp, fp, g = (table[:, :, k].sum(axis=1, keepdims=True) for k in range(3))
    else:
        tp, fp, g = (table[:, idx, k].sum(axis=2) for k in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        c, p = tp / g, tp / (tp + fp)
        f1 = np.where((tp == 0) & (g > 0), 0.0, 2 * c * p / (c + p))
    return {"completeness": c, "purity": p, "f1": f1}
