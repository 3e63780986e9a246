"""Detector and schedule choices, compared on the *development* survey's validation split.

    python benchmarks/detector_choices.py --workdir dev --n 300 \
        --variant base '{}' --variant small_anchors '{"detector": {"anchor_sizes": [6, 12, 24, 48, 96]}}'

``--workdir`` is a workflow directory run with ``--configfile config/development.yaml`` up to its
labels (and the pretrained encoder when a backbone needs it). Each variant is the workflow's configuration (config/config.yaml + config/development.yaml) with a
JSON override; it trains each named backbone on ``train_n{n}.json`` with validation every
``eval_every`` steps (the training's own checkpoint selection) and scores the chosen weights on the
whole validation split against the consensus. The test split is never read. Writes the learning
curves and scores to ``--out`` (JSON), with command, date and commit.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from clumpfinder.config import deep_update  # noqa: E402
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec  # noqa: E402
from clumpfinder.detection.train import Selection, TrainSpec, train_detector, validation_score  # noqa: E402
from clumpfinder.detection.detector import load_images  # noqa: E402
from provenance import command_line, git_commit, run_data_seeds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--n", type=int, nargs="+", default=[300])
    ap.add_argument("--backbones", nargs="+", default=["resnet18_scratch"])
    ap.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = deep_update(cfg, yaml.safe_load((REPO / "config" / "development.yaml").read_text()))
    res = a.workdir / "results"
    seeds = run_data_seeds(res, [REPO / "config" / "development.yaml"])
    val_full = json.loads((res / "labels" / "val.json").read_text())
    image_dir = res / "survey" / "png"
    rows = json.loads(a.out.read_text())["runs"] if a.out.exists() else []
    done = {(r["variant"], r["backbone"], r["n_train"], r["seed"]) for r in rows}
    for name, override in a.variant:
        vcfg = deep_update(copy.deepcopy(cfg), json.loads(override))
        for backbone in a.backbones:
            entry = dict(vcfg["backbones"][backbone])
            train_over = entry.pop("training", {})
            if entry["init"].startswith("pretrain:"):
                task = entry["init"].split(":")[1]
                entry["init_file"] = str(res / "pretrain" / task / f"{entry['arch']}_{entry['normalization']}"
                                         / "encoder.pt")
            spec = BackboneSpec(**entry)
            det = DetectorSpec.from_config(vcfg["detector"])
            for n in a.n:
                for seed in a.seeds:
                    if (name, backbone, n, seed) in done:
                        continue
                    tcfg = dict(vcfg["training"], **train_over, seed=seed)
                    coco = json.loads((res / "labels" / f"train_n{n}.json").read_text())
                    sel = Selection(vcfg["evaluation"]["iou"], tuple(vcfg["evaluation"]["scores"]))
                    t0 = time.perf_counter()
                    model, m = train_detector(coco, image_dir, spec, det, TrainSpec.from_config(tcfg),
                                              threads=a.threads, val=val_full, selection=sel)
                    final = validation_score(model, val_full, load_images(val_full, image_dir), det, sel)
                    row = {"variant": name, "override": json.loads(override), "backbone": backbone, "n_train": n,
                           "seed": seed, "steps": m["steps"], "best_step": m["best_step"],
                           "seconds": round(time.perf_counter() - t0, 1), "img_per_s": m["img_per_s"],
                           "val_full": final,
                           "curve": [{k: r.get(k) for k in ("step", "loss", "val_f1", "img_per_s")} for r in m["history"]]}
                    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
                    rows.append(row)
                    out = {"command": command_line(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "commit": git_commit(), "data_seeds": seeds, "workdir": str(a.workdir),
                           "simulate_seed": vcfg["simulate"]["seed"], "split": "val (consensus labels)",
                           "runs": rows}
                    a.out.parent.mkdir(parents=True, exist_ok=True)
                    a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
