"""Is the galaxy-pretrained backbone better than scratch, beyond training-seed noise?

Retrains the default's two ResNet-18 arms (scratch, pretrain:morphology) on the same training
subsets with several training seeds, using the outputs of a finished default run (labels, images,
the pretraining stage's encoder), and scores each on the test split against the consensus and the
simulated truth (IoU 0.5, score 0.5, classes merged, as the summary does).

    python benchmarks/pretrain_effect.py --results results --n 30 100 --seeds 1 2 3

Writes benchmarks/results/pretrain_effect.json: per arm, size and seed the metrics, and per arm
and size the mean and standard deviation over seeds. Two jobs run at a time, one thread each.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from clumpfinder.detector import BackboneSpec, DetectorSpec  # noqa: E402
from clumpfinder import metrics  # noqa: E402
from clumpfinder.evaluate import coco_ap, predict  # noqa: E402
from clumpfinder.io import read_json  # noqa: E402
from clumpfinder.train import TrainSpec, train_detector  # noqa: E402

ARMS = ("resnet18_scratch", "resnet18_morphology")


def one_job(args: tuple[str, int, int, str]) -> dict:
    arm, n, seed, results = args
    res = Path(results)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    entry = copy.deepcopy(cfg["backbones"][arm])
    if entry["init"] == "pretrain:morphology":
        entry["init_file"] = str(res / "pretrain" / "morphology" / f"{entry['arch']}_{entry['normalization']}" /
                                 "encoder.pt")
    backbone = BackboneSpec(**entry)
    detector = DetectorSpec.from_config(cfg["detector"])
    spec = TrainSpec.from_config({**cfg["training"], "seed": seed})
    model, trained = train_detector(read_json(res / "labels" / f"train_n{n}.json"), res / "survey" / "png",
                                    backbone, detector, spec, threads=1)
    model.eval()
    test = read_json(res / "labels" / "test.json")
    preds = predict(model, test, res / "survey" / "png", agnostic_nms=detector.class_agnostic_nms)
    out = {"arm": arm, "n_train": n, "seed": seed, "train_seconds": trained["seconds"]}
    for name, gt in {"consensus": test, "truth": read_json(res / "labels" / "test_truth.json")}.items():
        c = metrics.counts(metrics.match(gt, preds, (0.5,)), 0.5, 0.5)
        out[name] = {"completeness": c["completeness"], "purity": c["purity"], "AP50": coco_ap(gt, preds)["AP50"]}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="results folder of a finished default run")
    ap.add_argument("--n", type=int, nargs="+", default=[30])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pretrain_effect.json"))
    args = ap.parse_args()
    jobs = [(arm, n, s, args.results) for n in args.n for s in args.seeds for arm in ARMS]
    with ProcessPoolExecutor(2) as pool:
        runs = list(pool.map(one_job, jobs))
    summary = {}
    for arm in ARMS:
        for n in args.n:
            rows = [r for r in runs if r["arm"] == arm and r["n_train"] == n]
            summary[f"{arm}/n{n}"] = {
                f"{ref}_{k}": {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v, ddof=1)), 4)
                               if len(v) > 1 else None}
                for ref in ("consensus", "truth") for k in ("completeness", "purity", "AP50")
                for v in [[r[ref][k] for r in rows]]
            }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"seeds": args.seeds, "runs": runs, "summary": summary}, indent=1))
    for key, s in summary.items():
        print(key, " ".join(f"{k} {v['mean']:.3f}±{v['std'] or 0:.3f}" for k, v in s.items()))


if __name__ == "__main__":
    main()
