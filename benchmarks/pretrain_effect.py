"""Is the galaxy-pretrained backbone better than scratch, beyond training-seed noise, and with
which BatchNorm? A benchmark that compares settings: it scores the VALIDATION split of a
DEVELOPMENT run, never a test split (docs/protocol.md).

    snakemake --cores 2 --configfile config/development.yaml --directory dev   # once
    python benchmarks/pretrain_effect.py --results dev/results --n 30 100 --seeds 1 2 3

Retrains the default's ResNet-18 arms (scratch; pretrain:morphology with trainable BatchNorm
statistics, the default; the same encoder with frozen statistics, torchvision's and Popp et al.'s
default for pretrained backbones) on the run's nested training subsets with several training
seeds, using its labels, images and pretraining encoder, and scores each on the validation split
against the consensus and the simulated truth (IoU 0.5, score 0.5, classes merged; the truth
counted as the evaluation counts it). Refuses a run whose summary says it reports the reporting
seeds (its summary.md names its seeds). Writes benchmarks/results/pretrain_effect.json: per arm, size and seed the metrics, and per
arm and size the mean and standard deviation over seeds. Two jobs run at a time, one thread each.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from clumpfinder import metrics  # noqa: E402
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec  # noqa: E402
from clumpfinder.detection.detector import predict  # noqa: E402
from clumpfinder.scoring.evaluate import coco_ap  # noqa: E402
from clumpfinder.io import read_json  # noqa: E402
from clumpfinder.labels.coco import coco_dataset, truth_boxes  # noqa: E402
from clumpfinder.detection.train import TrainSpec, train_detector  # noqa: E402
from provenance import git_commit  # noqa: E402

#: arm -> (backbone of config/config.yaml, overrides)
ARMS = {
    "resnet18_scratch": ("resnet18_scratch", {}),
    "resnet18_morphology": ("resnet18_morphology", {"batchnorm": "trainable"}),
    "resnet18_morphology_frozen_bn": ("resnet18_morphology", {"batchnorm": "frozen"}),
}


def validation_truth(res: Path, cfg: dict) -> dict:
    """COCO truth of the validation split, as truth_labels makes it for the test split."""
    manifest = pd.read_csv(res / "survey" / "manifest.csv")
    splits = pd.read_csv(res / "labels" / "splits.csv")
    ev = cfg["evaluation"]
    boxes = truth_boxes(manifest, pd.read_csv(res / "survey" / "truth.csv"), cfg["consensus"]["box_scale"],
                        ev["truth_min_flux_fraction"], ev["truth_ignore_min_flux_fraction"])
    images = manifest[manifest["subject_id"].isin(splits.loc[splits["split"] == "val", "subject_id"])]
    return coco_dataset(images.rename(columns={"png": "file_name"}), boxes, "simulated truth, validation split",
                        crop=cfg["labels"]["crop"])


def one_job(args: tuple[str, int, int, str]) -> dict:
    arm, n, seed, results = args
    res = Path(results)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    name, over = ARMS[arm]
    entry = {**copy.deepcopy(cfg["backbones"][name]), **over}
    if entry["init"] == "pretrain:morphology":
        entry["init_file"] = str(res / "pretrain" / "morphology" / f"{entry['arch']}_{entry['normalization']}" /
                                 "encoder.pt")
    backbone = BackboneSpec(**entry)
    detector = DetectorSpec.from_config(cfg["detector"])
    spec = TrainSpec.from_config({**cfg["training"], "seed": seed})
    model, trained = train_detector(read_json(res / "labels" / f"train_n{n}.json"), res / "survey" / "png",
                                    backbone, detector, spec, threads=1)
    model.eval()
    val = read_json(res / "labels" / "val.json")
    preds = predict(model, val, res / "survey" / "png", agnostic_nms=detector.class_agnostic_nms)
    out = {"arm": arm, "n_train": n, "seed": seed, "train_seconds": trained["seconds"]}
    for ref, gt in {"consensus": val, "truth": validation_truth(res, cfg)}.items():
        c = metrics.counts(metrics.match(gt, preds, (0.5,)), 0.5, 0.5)
        out[ref] = {"completeness": c["completeness"], "purity": c["purity"], "f1": c["f1"],
                    "AP50": coco_ap(gt, preds)["AP50"]}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="dev/results", help="results folder of a finished development run")
    ap.add_argument("--n", type=int, nargs="+", default=[30])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pretrain_effect.json"))
    args = ap.parse_args()
    summary_md = Path(args.results) / "summary.md"
    if summary_md.exists() and "**development seeds**" not in summary_md.read_text():
        raise SystemExit(f"{args.results} is a run on the reporting seeds: compare settings on a development run "
                         "(--configfile config/development.yaml)")
    jobs = [(arm, n, s, args.results) for n in args.n for s in args.seeds for arm in args.arms]
    with ProcessPoolExecutor(2) as pool:
        runs = list(pool.map(one_job, jobs))
    summary = {}
    for arm in args.arms:
        for n in args.n:
            rows = [r for r in runs if r["arm"] == arm and r["n_train"] == n]
            summary[f"{arm}/n{n}"] = {
                f"{ref}_{k}": {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v, ddof=1)), 4)
                               if len(v) > 1 else None}
                for ref in ("consensus", "truth") for k in ("completeness", "purity", "f1", "AP50")
                for v in [[r[ref][k] for r in rows]]
            }
    out = {"command": "python benchmarks/pretrain_effect.py " + " ".join(sys.argv[1:]),
           "date": dt.date.today().isoformat(), "commit": git_commit(), "split": "val",
           "seeds": args.seeds, "runs": runs, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for key, s in summary.items():
        print(key, " ".join(f"{k} {v['mean']:.3f}±{v['std'] or 0:.3f}" for k, v in s.items()))


if __name__ == "__main__":
    main()
