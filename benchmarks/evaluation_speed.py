"""Time the evaluation of one (backbone, n_train, seed) cell at survey scale.

    python benchmarks/evaluation_speed.py [--images 10000] [--dets 10]

Synthetic test set: 96 px images with 0-4 clumps each (a tenth odd), ``--dets`` detections per
image (jittered copies of the clumps plus random boxes, random scores). Times what the evaluate
rule does per reference label set: pycocotools AP/AP50/AP75/AR, the match at IoU 0.3 and 0.5
(classes merged and per class), the completeness / purity / F1 grid over 19 score thresholds,
a precision-recall curve and 1,000 bootstrap resamples. Writes
benchmarks/results/evaluation_speed.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from clumpfinder import metrics as M  # noqa: E402
from clumpfinder.evaluate import coco_ap  # noqa: E402


def synthetic(n_images: int, n_dets: int, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 96, "height": 96})
        boxes = []
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(10, 76, 2)
            boxes.append((x, y))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 2 if rng.random() < 0.1 else 1,
                         "bbox": [x, y, 12.0, 12.0], "area": 144.0, "iscrowd": 0})
        for k in range(n_dets):
            if k < len(boxes):
                x, y = np.array(boxes[k]) + rng.normal(0, 2, 2)
            else:
                x, y = rng.uniform(0, 84, 2)
            results.append({"image_id": i, "category_id": int(rng.integers(1, 3)), "bbox": [x, y, 12.0, 12.0],
                            "score": float(rng.uniform())})
    cats = [{"id": 1, "name": "clump"}, {"id": 2, "name": "odd_clump"}]
    return {"images": images, "annotations": anns, "categories": cats}, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--dets", type=int, default=10)
    args = ap.parse_args()
    gt, results = synthetic(args.images, args.dets)
    scores = [round(0.05 * k, 2) for k in range(1, 20)]
    times = {}
    t0 = time.perf_counter()
    coco_ap(gt, results)
    times["coco_ap"] = time.perf_counter() - t0
    t = time.perf_counter()
    merged = M.match(gt, results, (0.3, 0.5))
    times["match_merged"] = time.perf_counter() - t
    t = time.perf_counter()
    per_class = M.match(gt, results, (0.3, 0.5), use_cats=True)
    times["match_per_class"] = time.perf_counter() - t
    t = time.perf_counter()
    M.grid(merged, scores)
    s = M.best_score(merged, 0.5, scores)
    [M.counts(per_class, 0.5, s, c) for c in (1, 2)]
    M.pr_curve(merged, 0.5)
    times["grid_threshold_curve"] = time.perf_counter() - t
    t = time.perf_counter()
    M.bootstrap(merged, 0.5, s, n=1000)
    times["bootstrap_1000"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    out = {"images": args.images, "detections": len(results), "ground_truths": len(gt["annotations"]),
           "seconds": {k: round(v, 2) for k, v in times.items()}}
    path = REPO / "benchmarks" / "results" / "evaluation_speed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
