"""Completeness, purity, F1 and precision-recall from one pycocotools matching, with bootstrap
confidence intervals over test images, and the comparison of training recipes whose intervals
hold training-seed variance too (:func:`recipe_intervals`).

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


def recipe_intervals(arms: dict[str, Sequence[dict[str, Any]]], baseline: str, n: int = 1000, seed: int = 0,
                     level: float = 0.95, fixed: Sequence[str] = (),
                     min_seeds: int = MIN_SEEDS) -> dict[str, dict[str, dict[str, Any]]]:
    """Compare training recipes (arms) scored on the same test images, with intervals that hold
    training-seed variance as well as test-galaxy variance.

    ``arms`` maps a name to one :func:`per_image_record` per training seed (one trained model
    each); ``fixed`` names arms that are not trained (a classical finder: one record, no seed
    variance). The value of an arm is the mean over its seeds of each seed model's completeness,
    purity or F1. Its uncertainty has two parts, for the crossed design of models x test images:

    * the test galaxies: the variance of the value (or of a difference of two arms' values) over
      ``n`` bootstrap resamples of the images, the same resamples for every arm (paired: the
      galaxy-to-galaxy variance the arms share cancels in a difference);
    * the training seeds: s^2 / S for an arm of S seeds whose values have sample variance s^2
      (a trained arm; fixed arms have none).

    The interval is value (or difference) +- t x sqrt(sum of the parts), with t Student's
    quantile at Satterthwaite's (1946) effective degrees of freedom (the seed parts have S - 1
    each, the galaxy part one less than the images): with 3 seeds per arm and seed scatter that
    dominates, t is near that of 4 degrees of freedom (2.8 at 95 %), as a Welch t-test on the
    seeds' values would use. The seed part counts the models' scatter on these very galaxies, so
    the seed-by-galaxy interaction enters twice and the interval errs on the wide side. (A
    bootstrap that also resamples the 3 seeds of each arm, Owen's 2007 pigeonhole bootstrap,
    decided differences between identical recipes far more often than 5 % in simulations: with 3
    values a resample of seeds understates their spread; ``tests/test_metrics.py``.)

    Per arm and measure: ``value``, ``low``/``high``; ``diff`` (value - baseline's value),
    ``diff_low``/``diff_high``; ``galaxy_low``/``galaxy_high`` and ``diff_galaxy_low``/
    ``diff_galaxy_high``, the percentile intervals over test galaxies alone with the seeds' models
    held fixed (they describe these trained models, not the recipes; with one seed per arm, the
    only interval there is: then ``low``/``high`` are these too); ``n_seeds``; ``seed_sd``
    (standard deviation over seeds, NaN for one); ``dof`` of the difference; ``decidable`` (this
    arm and the baseline each have ``min_seeds`` seeds or are fixed, and the measure is defined
    for every model); ``verdict`` (:func:`verdict`; None for the baseline).
    """
    from scipy.stats import t as student

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
    galaxy = {name: {k: v.mean(axis=0) for k, v in _ratios_per_seed(t, idx).items()}  # seed mean per resample
              for name, t in tables.items()}
    full = {name: _ratios_per_seed(t, None) for name, t in tables.items()}  # measure -> seeds x 1
    enough = {name: name in fixed or len(t) >= min_seeds for name, t in tables.items()}
    q = (1 + level) / 2
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, t in tables.items():
        out[name] = {}
        for k in ("completeness", "purity", "f1"):
            seeds, base_seeds = full[name][k][:, 0], full[baseline][k][:, 0]
            value, base = float(np.mean(seeds)), float(np.mean(base_seeds))
            g_low, g_high = _interval(galaxy[name][k], level)
            gd_low, gd_high = _interval(galaxy[name][k] - galaxy[baseline][k], level)
            defined = all(np.isfinite(v).all() for v in (seeds, base_seeds, galaxy[name][k], galaxy[baseline][k]))
            seed_part = [] if name in fixed else [(seeds, len(t))]
            low, high, _ = _t_interval(value, galaxy[name][k], seed_part, len(ref_ids), q, student)
            if name == baseline:
                d_low = d_high = 0.0 if defined else math.nan
                dof = math.nan
            else:
                parts = seed_part + ([] if baseline in fixed else [(base_seeds, len(tables[baseline]))])
                d_low, d_high, dof = _t_interval(value - base, galaxy[name][k] - galaxy[baseline][k], parts,
                                                 len(ref_ids), q, student)
            no_seed_part = name in fixed or len(t) < 2  # its own interval: over galaxies alone
            decidable = enough[name] and enough[baseline] and defined
            out[name][k] = {"value": value, "low": g_low if no_seed_part else low,
                            "high": g_high if no_seed_part else high,
                            "diff": value - base, "diff_low": d_low, "diff_high": d_high,
                            "galaxy_low": g_low, "galaxy_high": g_high,
                            "diff_galaxy_low": gd_low, "diff_galaxy_high": gd_high, "n_seeds": len(t),
                            "seed_sd": float(np.std(seeds, ddof=1)) if len(t) > 1 else math.nan, "dof": dof,
                            "decidable": decidable,
                            "verdict": None if name == baseline else verdict(d_low, d_high, decidable)}
    return out


def _t_interval(estimate: float, galaxy_resamples: np.ndarray, seed_parts: list[tuple[np.ndarray, int]],
                n_images: int, q: float, student) -> tuple[float, float, float]:
    """estimate +- t_q(dof) sqrt(V): V = the variance of the galaxy resamples + s^2 / S of each
    seed part (values of S seeds); dof by Satterthwaite. NaN where a part is undefined (an arm
    with one seed has no seed variance: its interval is the galaxy one, and it is not decided)."""
    if not np.isfinite(estimate) or not np.isfinite(galaxy_resamples).all():
        return math.nan, math.nan, math.nan
    parts = [(float(np.var(galaxy_resamples, ddof=1)), n_images - 1)]
    for values, s in seed_parts:
        if s < 2:
            return math.nan, math.nan, math.nan
        parts.append((float(np.var(values, ddof=1)) / s, s - 1))
    total = sum(v for v, _ in parts)
    if total == 0:
        return estimate, estimate, math.inf
    dof = total ** 2 / sum(v ** 2 / d for v, d in parts if v > 0)
    half = float(student.ppf(q, dof)) * math.sqrt(total)
    return estimate - half, estimate + half, dof


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
