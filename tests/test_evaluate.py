"""Completeness, purity and AP on hand-built cases with known answers (through the evaluate
rule's own path: pycocotools AP, and clumpfinder.metrics on one matching)."""

from __future__ import annotations

import math

import pytest

from clumpfinder import metrics as M
from clumpfinder.scoring.evaluate import EvalSpec, coco_ap, evaluate_reference
from clumpfinder.labels.coco import CATEGORIES


def gt(boxes_per_image, crowd=()):
    """boxes_per_image: {image_id: [(x, y, w, h, cat), ...]}; crowd: ids of annotations to ignore."""
    images, anns = [], []
    for iid, boxes in boxes_per_image.items():
        images.append({"id": iid, "file_name": f"{iid}.png", "width": 96, "height": 96})
        for x, y, w, h, c in boxes:
            k = len(anns) + 1
            anns.append({"id": k, "image_id": iid, "category_id": c, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(k in crowd)})
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def det(iid, x, y, w=8, h=8, c=1, s=0.9):
    return {"image_id": iid, "category_id": c, "bbox": [x, y, w, h], "score": s}


def completeness_purity(gt_dataset, results, iou, score, use_cats=False):
    """Counts at one (IoU, score); with ``use_cats`` also per category name."""
    m = M.match(gt_dataset, results, (iou,), use_cats=use_cats)
    out = M.counts(m, iou, score)
    if use_cats:
        out["per_class"] = {c["name"]: M.counts(m, iou, score, c["id"]) for c in gt_dataset["categories"]}
    return out


GT = gt({1: [(10, 10, 8, 8, 1), (40, 40, 8, 8, 2)], 2: [(20, 20, 8, 8, 1)], 3: []})


def test_perfect_predictions():
    res = [det(1, 10, 10), det(1, 40, 40, c=2), det(2, 20, 20)]
    spec = EvalSpec(0.5, 0.5, (0.5,), (0.5,), {"n": 50, "seed": 0, "level": 0.9}, (0.0, 1.0))
    m = evaluate_reference(GT, res, spec, 0.5)
    assert m["merged"]["completeness"] == 1.0 and m["merged"]["purity"] == 1.0 and m["merged"]["f1"] == 1.0
    assert m["AP50"] == pytest.approx(1.0) and m["AP"] == pytest.approx(1.0)
    assert m["by_class"]["per_class"]["odd_clump"]["completeness"] == 1.0


def test_all_false_positives():
    res = [det(1, 70, 70), det(3, 30, 30), det(2, 60, 10)]
    m = completeness_purity(GT, res, 0.5, 0.5)
    assert m["tp"] == 0 and m["fp"] == 3 and m["n_gt"] == 3
    assert m["completeness"] == 0.0 and m["purity"] == 0.0 and m["f1"] == 0.0
    assert coco_ap(GT, res)["AP"] == 0.0


def test_no_predictions():
    m = completeness_purity(GT, [], 0.5, 0.5)
    assert m["completeness"] == 0.0 and math.isnan(m["purity"]) and m["tp"] + m["fp"] == 0
    assert coco_ap(GT, []) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0}


def test_empty_image_detection_is_false_positive():
    m = completeness_purity(GT, [det(1, 10, 10), det(3, 50, 50)], 0.5, 0.5)
    assert m["tp"] == 1 and m["fp"] == 1 and m["purity"] == 0.5 and m["completeness"] == pytest.approx(1 / 3)


def test_score_threshold():
    res = [det(1, 10, 10, s=0.9), det(2, 20, 20, s=0.4), det(3, 5, 5, s=0.3)]
    hi = completeness_purity(GT, res, 0.5, 0.5)
    lo = completeness_purity(GT, res, 0.5, 0.2)
    assert (hi["tp"], hi["fp"]) == (1, 0) and (lo["tp"], lo["fp"]) == (2, 1)


def test_iou_threshold():
    # shifted by 3 px on an 8 px box: IoU = 5*8 / (2*64 - 40) = 0.4545
    res = [det(2, 23, 20)]
    assert completeness_purity(GT, res, 0.5, 0.5)["tp"] == 0
    assert completeness_purity(GT, res, 0.4, 0.5)["tp"] == 1


def test_duplicate_detection_counts_once():
    res = [det(2, 20, 20, s=0.9), det(2, 20.5, 20, s=0.8)]
    m = completeness_purity(GT, res, 0.5, 0.5)
    assert m["tp"] == 1 and m["fp"] == 1


def test_class_matters_only_per_class():
    res = [det(2, 20, 20, c=2)]  # right place, wrong class
    merged = completeness_purity(GT, res, 0.5, 0.5, use_cats=False)
    per = completeness_purity(GT, res, 0.5, 0.5, use_cats=True)
    assert merged["tp"] == 1
    assert per["tp"] == 0 and per["per_class"]["odd_clump"]["fp"] == 1 and per["per_class"]["clump"]["n_gt"] == 2


def test_crowd_truth_is_ignored():
    g = gt({1: [(10, 10, 8, 8, 1), (50, 50, 8, 8, 1)]}, crowd={2})
    m = completeness_purity(g, [det(1, 10, 10), det(1, 50, 50)], 0.5, 0.5)
    assert m["n_gt"] == 1 and m["tp"] == 1 and m["fp"] == 0  # the detection on the faint clump is ignored
    m = completeness_purity(g, [det(1, 10, 10)], 0.5, 0.5)
    assert m["completeness"] == 1.0  # missing the faint clump costs nothing
