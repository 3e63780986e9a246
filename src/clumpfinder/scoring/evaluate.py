"""COCO-style evaluation of a trained detector: predictions, AP (pycocotools), the headline score
threshold, and per label set everything :mod:`clumpfinder.metrics` derives from pycocotools' own
matching (completeness, purity, F1 with bootstrap intervals, grids, curves, flux bins).

A detection with score >= s is a true positive if COCO matched it to a ground-truth box, a false
positive if it matched nothing, and ignored if it matched an ignored ("crowd") ground truth such
as a sub-threshold simulated clump, so the counts are consistent with the AP numbers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.cocoeval import COCOeval

from clumpfinder.io import known_fields
from clumpfinder import metrics

log = logging.getLogger(__name__)


def coco_ap(gt_dataset: dict[str, Any], results: list[dict[str, Any]], use_cats: bool = True) -> dict[str, float]:
    """AP@[.5:.95], AP50, AP75 and AR@100 as pycocotools' ``summarize()`` reports them (0 when
    there are no detections or no ground truth). Only the 'all' area range and 100 detections
    per image are evaluated (the other ranges of the standard summary cost 3 more matchings
    and are not used); the numbers are read from ``accumulate()``'s arrays as summarize does."""
    keys = ("AP", "AP50", "AP75", "AR")
    if not results or not gt_dataset["annotations"]:
        return {k: 0.0 for k in keys}
    gt = metrics.coco_index(gt_dataset)
    ev = COCOeval(gt, metrics.load_results(gt, results), "bbox")
    ev.params.useCats = int(use_cats)
    ev.params.areaRng = [[0.0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.params.maxDets = [100]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    precision, recall = ev.eval["precision"][..., 0, 0], ev.eval["recall"][..., 0, 0]  # [T, R, K], [T, K]
    iou = list(np.round(ev.params.iouThrs, 2))

    def mean(a: np.ndarray) -> float:
        a = a[a > -1]  # -1: no ground truth of that category
        return max(0.0, float(a.mean())) if a.size else 0.0

    return {"AP": mean(precision), "AP50": mean(precision[iou.index(0.5)]), "AP75": mean(precision[iou.index(0.75)]),
            "AR": mean(recall)}


@dataclass(frozen=True)
class EvalSpec:
    """The ``evaluation`` section of the configuration."""

    iou: float
    score: float | None
    ious: tuple[float, ...]
    scores: tuple[float, ...]
    bootstrap: dict[str, Any]
    flux_bins: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.iou not in self.ious:
            raise ValueError(f"evaluation.iou {self.iou} is not one of evaluation.ious {list(self.ious)}")
        if list(self.flux_bins) != sorted(self.flux_bins):
            raise ValueError(f"evaluation.flux_bins must increase, got {list(self.flux_bins)}")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "EvalSpec":
        # the truth's flux cuts are read by the truth_labels rule
        known_fields(cls, cfg, "evaluation", elsewhere=("truth_min_flux_fraction", "truth_ignore_min_flux_fraction"))
        return cls(float(cfg["iou"]), None if cfg["score"] is None else float(cfg["score"]),
                   tuple(float(t) for t in cfg["ious"]), tuple(sorted(float(s) for s in cfg["scores"])),
                   dict(cfg["bootstrap"]), tuple(float(b) for b in cfg["flux_bins"]))


def choose_score(val: dict[str, Any], val_results: list[dict[str, Any]], spec: EvalSpec) -> dict[str, Any]:
    """The headline score threshold: fixed in the configuration, or the F1-best one on the
    validation split (classes merged, IoU ``spec.iou``, against the consensus)."""
    if spec.score is not None:
        return {"score": spec.score, "source": "configuration (evaluation.score)"}
    m = metrics.match(val, val_results, (spec.iou,))
    best = metrics.best_score(m, spec.iou, spec.scores)
    return {"score": best, "source": "highest F1 on the validation split (consensus, classes merged)",
            "val_at_score": metrics.counts(m, spec.iou, best),
            "val_grid": metrics.grid(m, spec.scores)}


def evaluate_reference(gt: dict[str, Any], results: list[dict[str, Any]], spec: EvalSpec, score: float,
                       flux_field: str | None = None) -> dict[str, Any]:
    """Everything about one label set: COCO AP numbers; headline completeness / purity / F1
    (classes merged, with a bootstrap interval, and per class) and its per-image counts; the grid
    over IoU x score; the precision-recall curve at each IoU; optionally the completeness of the clumps binned by
    ``flux_field``, every clump counted (the faint ones the headline ignores included)."""
    out: dict[str, Any] = coco_ap(gt, results)
    merged = metrics.match(gt, results, spec.ious)
    per_class = metrics.match(gt, results, spec.ious, use_cats=True)
    b = spec.bootstrap
    out["merged"] = metrics.counts(merged, spec.iou, score)
    out["merged"]["ci"] = metrics.bootstrap(merged, spec.iou, score, n=b["n"], seed=b["seed"], level=b["level"])
    out["per_image"] = metrics.per_image_record(merged, spec.iou, score)  # for paired comparisons of models
    names = {c["id"]: c["name"] for c in gt["categories"]}
    out["by_class"] = {"per_class": {names[c]: metrics.counts(per_class, spec.iou, score, c) for c in names}}
    out["grid"] = metrics.grid(merged, spec.scores)
    out["grid_per_class"] = [dict(metrics.counts(per_class, t, s, c), category=names[c])
                             for c in names for t in spec.ious for s in spec.scores]
    out["pr"] = {f"{t:g}": metrics.pr_curve(merged, t) for t in spec.ious}
    if flux_field is not None:
        every = copy.deepcopy(gt)
        for a in every["annotations"]:
            a["iscrowd"] = 0
        m = metrics.match(every, results, (spec.iou,), extra_fields=(flux_field,))
        clump = next(c["id"] for c in gt["categories"] if c["name"] == "clump")
        out["by_flux"] = metrics.completeness_by(m, flux_field, spec.flux_bins, spec.iou, score, category_id=clump)
    out["n_images"] = len(gt["images"])
    return out


def labels_as_results(coco: dict[str, Any], score: float = 1.0) -> list[dict[str, Any]]:
    """A label set (e.g. the consensus boxes of the test galaxies) as COCO results with one score,
    to score labels against another label set (the simulated truth) like a detector."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
            for a in coco["annotations"] if not a.get("iscrowd", 0)]
