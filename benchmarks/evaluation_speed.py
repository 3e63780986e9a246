"""Time the evaluation of one (backbone, n_train, seed) cell at survey scale.

    python benchmarks/evaluation_speed.py [--images 10000] [--dets 10]

Synthetic test set: 96 px images with 0-4 clumps each (a tenth odd), ``--dets`` detections per
image (jittered copies of the clumps plus random boxes, random scores). Times the functions the
evaluate rule runs, with the default evaluation settings: the validation threshold choice
(on a validation set as large as the test set), everything against the consensus (pycocotools
AP numbers; matches at IoU 0.3 and 0.5, merged and per class; the grids; PR curves; 1,000
bootstrap resamples; per-image counts) and the same against a truth with flux fractions (plus
completeness by flux bin); and the summary's recipe bootstrap for two arms x three seeds.
Prediction itself is not included. Writes benchmarks/results/evaluation_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from clumpfinder import metrics as M  # noqa: E402
from clumpfinder.scoring.evaluate import EvalSpec, choose_score, evaluate_reference  # noqa: E402
from provenance import command_line, git_commit  # noqa: E402


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
    rng = np.random.default_rng(1)
    truth = copy.deepcopy(gt)
    for a in truth["annotations"]:  # a flux fraction per clump, a tenth of them too faint to count
        a["flux_fraction_g"] = float(rng.uniform(0.015, 0.25))
        a["iscrowd"] = int(a["flux_fraction_g"] < 0.03)
    spec = EvalSpec.from_config({"iou": 0.5, "score": None, "ious": [0.3, 0.5],
                                 "scores": [round(0.05 * k, 2) for k in range(1, 20)],
                                 "bootstrap": {"n": 1000, "seed": 0, "level": 0.95},
                                 "flux_bins": [0.0, 0.015, 0.03, 0.05, 0.08, 0.12, 0.3]})
    times = {}
    t0 = time.perf_counter()
    score = choose_score(gt, results, spec)["score"]  # the validation split, here as large as the test split
    times["choose_score_on_val"] = time.perf_counter() - t0
    t = time.perf_counter()
    consensus = evaluate_reference(gt, results, spec, score)
    times["evaluate_vs_consensus"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluate_reference(truth, results, spec, score, flux_field="flux_fraction_g")
    times["evaluate_vs_truth_with_flux_bins"] = time.perf_counter() - t
    times["evaluate_rule_total"] = time.perf_counter() - t0
    t = time.perf_counter()
    record = consensus["per_image"]
    M.recipe_intervals({"a": [record] * 3, "b": [record] * 3}, "a", n=1000)  # summary: 2 arms x 3 seeds
    times["summary_recipe_intervals_2_arms_3_seeds"] = time.perf_counter() - t
    out = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
           "data_seeds": None, "images": args.images, "detections": len(results), "ground_truths": len(gt["annotations"]),
           "score": score, "seconds": {k: round(v, 2) for k, v in times.items()}}
    path = REPO / "benchmarks" / "results" / "evaluation_speed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
