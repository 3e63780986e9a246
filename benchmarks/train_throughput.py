"""Training and inference throughput of the configured detectors on this machine, before and
after the CPU speed-ups of the training loop.

    python benchmarks/train_throughput.py [--threads 1 2] [--steps 20] [--configfile extra.yaml]

Builds each backbone of the configuration (config/config.yaml, plus overrides) with the
configured detector settings, and times optimiser steps and inference on images of the configured
size carrying two clump-sized boxes each, in two set-ups: ``before`` (contiguous weights, the
for-each AdamW, prediction under ``no_grad``: the loop before issue 16) and ``after`` (what
``clumpfinder.detection.train`` and ``clumpfinder.detection.detector.predict_images`` now do: channels-last weights,
the fused AdamW, ``inference_mode``). Writes benchmarks/results/train_throughput.json with the
command, date and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

from clumpfinder.config import deep_update  # noqa: E402
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, build_detector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def measure(spec: BackboneSpec, det: DetectorSpec, batch: int, steps: int, after: bool) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_detector(spec, det, pretrained=False)  # channels-last weights; speed does not depend on values
    if not after:
        model = model.to(memory_format=torch.contiguous_format)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4, fused=after)
    s = det.image_size
    imgs = [torch.rand(3, s, s) for _ in range(batch)]
    side = s / 12
    targets = [{"boxes": torch.tensor([[s * 0.3, s * 0.3, s * 0.3 + side, s * 0.3 + side],
                                       [s * 0.6, s * 0.5, s * 0.6 + side, s * 0.5 + side]]),
                "labels": torch.tensor([1, 2])} for _ in range(batch)]
    model.train()
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        loss = sum(model(imgs, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = batch * steps / (time.perf_counter() - t0)
    model.eval()
    with torch.inference_mode() if after else torch.no_grad():
        model(imgs)
        t0 = time.perf_counter()
        for _ in range(steps // 2 or 1):
            model(imgs)
    infer = batch * (steps // 2 or 1) / (time.perf_counter() - t0)
    return {"train_img_per_s": round(train, 2), "eval_img_per_s": round(infer, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--configfile", action="append", default=[])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_throughput.json")
    a = ap.parse_args()
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for extra in a.configfile:
        cfg = deep_update(cfg, yaml.safe_load(Path(extra).read_text()))
    det = DetectorSpec.from_config(cfg["detector"])
    batch = cfg["training"]["batch_size"]
    rows = []
    for name, entry in cfg["backbones"].items():
        spec = BackboneSpec(**{k: v for k, v in entry.items() if k != "training"})
        for threads in a.threads:
            torch.set_num_threads(threads)
            for setup in ("before", "after"):
                r = {"backbone": name, "arch": spec.arch, "setup": setup, "threads": threads, "batch": batch,
                     "image_size": det.image_size, **measure(spec, det, batch, a.steps, setup == "after")}
                print(r, flush=True)
                rows.append(r)
    out = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "commit": git_commit(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "load_average_before": list(os.getloadavg()), "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
