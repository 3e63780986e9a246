"""Effort curves: human classifications spent against label F1 (vs a truth) and subjects decided.

A strategy *reaches* the fixed-20 consensus when its label F1 against the truth is at least the
F1 of the ``fixed`` strategy's final consensus minus ``f1_tolerance``; its *human share* is the
number of human classifications it had used at the first curve point where it did, divided by
the number the fixed strategy used (None when it never does). Intervals come from a bootstrap
over the scored subjects: each resample re-scores every curve point of every strategy on the same
subjects, so the target moves with the curves.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from clumpfinder import metrics
from clumpfinder.crowd.consensus import ConsensusResult
from clumpfinder.labels.coco import CATEGORY_ID
from clumpfinder.partnership.replay import MACHINE_USER, ReplayResult

#: the skills of the machine agent and of the volunteers, as the final consensus learned them
SKILLS = ("swap_pl", "swap_pd", "p_fp", "p_fn", "variance")


class TruthScorer:
    """Label F1 of a consensus against a truth (COCO, in the survey's image pixels), classes
    merged, every consensus box counted (score 1); per-subject counts kept for the bootstrap.

    Consensus boxes are in the frame the volunteers clicked in (the consensus subjects' width and
    height); they are scaled to the truth's image size."""

    def __init__(self, truth: dict[str, Any], iou: float):
        self.truth, self.iou = truth, float(iou)
        self.image_ids = np.array([im["id"] for im in truth["images"]], np.int64)
        self.size = {im["id"]: (im["width"], im["height"]) for im in truth["images"]}

    def __call__(self, consensus: ConsensusResult) -> dict[str, Any]:
        boxes = consensus.boxes[consensus.boxes["subject_id"].isin(self.image_ids)]
        frame = consensus.subjects.set_index("subject_id")[["width", "height"]]
        sx = boxes["subject_id"].map(lambda s: self.size[s][0]) / boxes["subject_id"].map(frame["width"])
        sy = boxes["subject_id"].map(lambda s: self.size[s][1]) / boxes["subject_id"].map(frame["height"])
        results = [
            {"image_id": int(b.subject_id), "category_id": CATEGORY_ID[b.category],
             "bbox": [b.x1 * fx, b.y1 * fy, (b.x2 - b.x1) * fx, (b.y2 - b.y1) * fy], "score": 1.0}
            for b, fx, fy in zip(boxes.itertuples(index=False), sx.to_numpy(), sy.to_numpy())
        ]
        m = metrics.match(self.truth, results, (self.iou,))
        table = metrics.per_image(m, self.iou, 1.0).reindex(self.image_ids)
        c = metrics.counts(m, self.iou, 1.0)
        return {"f1": c["f1"], "completeness": c["completeness"], "purity": c["purity"],
                "tp": table["tp"].to_numpy(), "fp": table["fp"].to_numpy(), "n_gt": table["n_gt"].to_numpy()}


def _f1(tp: np.ndarray, fp: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """F1 = 2 TP / (TP + FP + n_gt), NaN where there is nothing to score."""
    den = tp + fp + n_gt
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2.0 * tp / den, np.nan)


def _first_reached(f1: np.ndarray, humans: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per column (a bootstrap resample), the human classifications at the first point (row) whose
    F1 reaches the column's target; NaN where none does."""
    reached = f1 >= target[None, :]
    first = reached.argmax(axis=0)
    return np.where(reached.any(axis=0), humans[first].astype(float), np.nan)


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def effort(results: dict[str, ReplayResult], n_subjects: int, tolerance: float,
           bootstrap: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The effort curves (one row per point of every strategy) and the human shares with their
    intervals; ``n_subjects``: the survey's subjects (the denominator of the decided share).
    Without scores (no truth) the F1 columns and the shares are None."""
    fixed = results["fixed"]
    total = fixed.points[-1].human_classifications
    rows = []
    for name, res in results.items():
        for p in res.points:
            s = p.score or {}
            rows.append({"strategy": name, "human_classifications": p.human_classifications,
                         "share_of_fixed": p.human_classifications / total if total else math.nan,
                         "arrivals": p.arrivals, "subjects_seen": p.subjects_seen,
                         "subjects_decided": p.subjects_decided, "decided_share": p.subjects_decided / n_subjects,
                         "machine_rounds": p.machine_rounds, "time": p.time,
                         "f1": s.get("f1"), "completeness": s.get("completeness"), "purity": s.get("purity")})
    curves = pd.DataFrame(rows)
    summary: dict[str, Any] = {"fixed_human_classifications": total, "f1_tolerance": tolerance,
                               "strategies": {}}
    scored = fixed.points[-1].score is not None
    level, n_boot = float(bootstrap["level"]), int(bootstrap["n"])
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    if scored:
        n_img = len(fixed.points[-1].score["tp"])
        rng = np.random.default_rng(int(bootstrap["seed"]))
        weights = np.stack([np.bincount(rng.integers(0, n_img, n_img), minlength=n_img) for _ in range(n_boot)], 1)

        def resampled(res: ReplayResult) -> np.ndarray:  # points x resamples
            tp, fp, n_gt = (np.stack([p.score[k] for p in res.points]).astype(float) for k in ("tp", "fp", "n_gt"))
            return _f1(tp @ weights, fp @ weights, n_gt @ weights)

        boot = {name: resampled(res) for name, res in results.items()}
        target_point = fixed.points[-1].score["f1"] - tolerance
        target_boot = boot["fixed"][-1] - tolerance
        curves["f1_low"] = np.nan
        curves["f1_high"] = np.nan
        for name, res in results.items():
            sel = (curves["strategy"] == name).to_numpy()
            curves.loc[sel, "f1_low"] = np.nanpercentile(boot[name], lo_q, axis=1)
            curves.loc[sel, "f1_high"] = np.nanpercentile(boot[name], hi_q, axis=1)
        summary["target_f1"] = target_point
    for name, res in results.items():
        last = res.points[-1]
        entry: dict[str, Any] = {
            "human_classifications": last.human_classifications,
            "share_of_fixed": last.human_classifications / total if total else None,
            "subjects_decided": last.subjects_decided, "machine_rounds": last.machine_rounds,
            "retired_as": res.report["retired_as"],
        }
        if scored:
            f1 = np.array([p.score["f1"] for p in res.points], float)
            humans = np.array([p.human_classifications for p in res.points])
            first = _first_reached(f1[:, None], humans, np.array([target_point]))[0]
            # a resample that never reaches the target needs more than every classification: +inf
            shares = np.nan_to_num(_first_reached(boot[name], humans, target_boot) / total, nan=np.inf)
            entry.update(
                f1=last.score["f1"], completeness=last.score["completeness"], purity=last.score["purity"],
                f1_interval=[float(np.nanpercentile(boot[name][-1], q)) for q in (lo_q, hi_q)],
                # paired: the same resampled subjects for both strategies
                f1_minus_fixed=last.score["f1"] - fixed.points[-1].score["f1"],
                f1_minus_fixed_interval=[float(np.nanpercentile(boot[name][-1] - boot["fixed"][-1], q))
                                         for q in (lo_q, hi_q)],
                human_share=None if math.isnan(first) else first / total,
                # None for a bound in the resamples that never reach it ("never")
                human_share_interval=[_finite(np.percentile(shares, q, method="nearest")) for q in (lo_q, hi_q)],
                reached_in_resamples=float(np.isfinite(shares).mean()),
            )
        summary["strategies"][name] = entry
    for name in ("machine", "retirement"):
        if name in summary["strategies"]:
            summary[f"human_share_{name}"] = summary["strategies"][name].get("human_share")
    summary["bootstrap"] = {"n": n_boot, "seed": int(bootstrap["seed"]), "level": level}
    return curves, summary


def skills(volunteers: pd.DataFrame, min_classifications: int = 10) -> dict[str, Any]:
    """The machine agent's learned skills next to the volunteers' (median and quartiles over
    volunteers with at least ``min_classifications`` used classifications)."""
    is_machine = volunteers["user"] == MACHINE_USER
    humans = volunteers[~is_machine & (volunteers["n_classifications"] >= min_classifications)]
    out: dict[str, Any] = {"volunteers": len(humans), "min_classifications": min_classifications,
                           "machine": None, "volunteer_quartiles": {}}
    if is_machine.any():
        row = volunteers[is_machine].iloc[0]
        out["machine"] = {k: float(row[k]) for k in SKILLS} | {"n_classifications": int(row["n_classifications"])}
    for k in SKILLS:
        v = humans[k].dropna().to_numpy(float)
        out["volunteer_quartiles"][k] = [float(q) for q in np.percentile(v, [25, 50, 75])] if len(v) else None
    return out
