"""GPU smoke test and figures for docs/gpu.md: one prepared script for a machine with a GPU.

    python benchmarks/gpu_smoke.py                       # on the GPU machine (about 8 minutes on one GPU)
    python benchmarks/gpu_smoke.py --device cpu --quick  # the same code paths, tiny, on a CPU

Everything runs on galaxies it simulates itself (GalSim; no network, no hub weights), through the
package's own training, pretraining and prediction code, and writes what it measured to
``benchmarks/results/gpu_smoke.json`` after every section (a run cut short keeps what it did):

1. ``throughput``: training img/s of ``config/paper.yaml``'s detector (ResNet-50 FPN, the 200 px
   crop upsampled to 800 px, batch 4) for the arms' two compute shapes (backbone frozen /
   3 stages trainable, frozen BatchNorm as with pretrained weights), fp32 and mixed precision, fed
   from the memory-mapped image cache by DataLoader workers; GPU utilisation and memory; inference
   img/s. Target: >= 17 img/s with mixed precision (2x the torchvision reference's ~8.7 per V100).
2. ``amp_f1``: the default's detector (ResNet-18 FPN at 96 px, config/config.yaml's training) trained
   in fp32 and in mixed precision from the same seed; best validation F1 of each (validation
   galaxies only). Target: within 0.01.
3. ``predictions``: the fp32-trained model predicting in fp32 and in mixed precision: the share of
   its confident detections matched (IoU >= 0.9) and the largest score change.
4. ``pretrain``: a few epochs of the group-pooled pretraining in mixed precision: finite losses,
   invariance under rotations.
5. ``ddp``: with two or more GPUs, data-parallel training on 2 GPUs against 1 (target >= 1.8x).
6. ``cost``: GPU-hours of paper.yaml's grid and of the default at the measured speeds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from clumpfinder.compute import ComputeSpec, autocast_dtype
from clumpfinder.config import deep_update
from clumpfinder.data.simulate import SurveySpec, simulate_survey
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, build_encoder, load_model, predict_images, save_model
from clumpfinder.detection.parallel import train_job
from clumpfinder.detection.pretrain import PretrainSpec, pretrain_encoder
from clumpfinder.detection.train import TrainSpec, train_detector, validation_score, Selection
from clumpfinder.labels.cache import ImageCache, write_image_cache
from clumpfinder.labels.coco import coco_dataset, truth_boxes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import git_commit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER = deep_update(yaml.safe_load((REPO / "config" / "config.yaml").read_text()),
                    yaml.safe_load((REPO / "config" / "paper.yaml").read_text()))
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
REFERENCE_IMG_PER_S = 8.7  # torchvision's reference recipe, ResNet-50 FPN at 800 px, per V100 (docs/gpu.md)


def mixed(device: torch.device) -> str:
    """The mixed-precision setting to compare with fp32: what ``auto`` picks on a GPU; bf16 forced
    on a CPU (where ``auto`` is fp32), to run the same code paths."""
    return "auto" if device.type == "cuda" else "bf16"


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def survey(root: Path, n: int, size: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A simulated survey of ``n`` galaxies at ``size`` px, as (train, val) COCO sets with truth boxes."""
    spec = SurveySpec.from_config({**DEFAULT["simulate"], "n_galaxies": n, "image_size": size, "seed": seed})
    manifest, truth = simulate_survey(spec, root / "png", None, workers=max(1, min(8, torch.get_num_threads())))
    boxes = truth_boxes(manifest, truth, DEFAULT["consensus"]["box_scale"],
                        DEFAULT["evaluation"]["truth_min_flux_fraction"],
                        DEFAULT["evaluation"]["truth_ignore_min_flux_fraction"])
    images = manifest.rename(columns={"png": "file_name"})
    n_train = int(0.75 * n)
    return (coco_dataset(images.iloc[:n_train], boxes, "train"), coco_dataset(images.iloc[n_train:], boxes, "val"))


def cache(coco: dict[str, Any], root: Path, name: str) -> ImageCache:
    write_image_cache(coco, root / "png", root / f"{name}.npy", root / f"{name}.json")
    return ImageCache(root / f"{name}.npy", root / f"{name}.json")


def frozen_arm(tmp: Path, trainable: int) -> BackboneSpec:
    """A ResNet-50 FPN arm with the compute of a pretrained one (frozen BatchNorm, ``trainable``
    stages): random weights saved as a file init, since hub weights cannot be fetched offline."""
    path = tmp / "resnet50_encoder.pt"
    if not path.exists():
        torch.save(build_encoder(BackboneSpec("resnet50"))[0].state_dict(), path)
    return BackboneSpec("resnet50", init=f"file:{path}", trainable_layers=trainable, fpn_channels=256,
                        normalization="unit")


def last_block(metrics: dict[str, Any]) -> dict[str, Any]:
    row = metrics["history"][-1]
    return {k: row.get(k) for k in ("img_per_s", "gpu_util", "gpu_mem_gb", "loss")}


def section_throughput(out, tmp, device, quick, workers, state):
    det = DetectorSpec.from_config(PAPER["detector"] if not quick else {**PAPER["detector"], "image_size": 128})
    train, val = survey(tmp / "s200", 48 if quick else 160, 48 if quick else 200, seed=11)
    train_cache = cache(train, tmp / "s200", "train")
    state["s200"] = (train, train_cache)
    steps, block = (4, 2) if quick else (90, 30)
    rows = []
    for trainable in (0, 3):
        arm = frozen_arm(tmp, trainable)
        for precision in ("fp32", mixed(device)):
            spec = TrainSpec(**{**{k: PAPER["training"][k] for k in ("batch_size", "lr", "weight_decay", "grad_clip",
                                                                     "augment")},
                                "steps": steps, "eval_every": block, "warmup_steps": 1, "seed": 0})
            compute = ComputeSpec(precision=precision, loader_workers=workers)
            log(f"throughput: trainable_layers {trainable}, {precision}")
            model, m = train_detector(train, train_cache, arm, det, spec, device=device, compute=compute)
            images = train_cache.images(train)[:64]  # (the speed of prediction, not its quality)
            t0 = time.perf_counter()
            predict_images(model, images, list(range(len(images))), det.class_agnostic_nms, batch_size=16)
            if device.type == "cuda":
                torch.cuda.synchronize()
            infer = len(images) / (time.perf_counter() - t0)
            rows.append({"trainable_layers": trainable, "precision": m["precision"], **last_block(m),
                         "infer_img_per_s": round(infer, 1)})
            out["throughput"] = {"detector": {"image_size": det.image_size, "batch_size": spec.batch_size,
                                              "loader_workers": workers}, "rows": rows}
            log(f"  {rows[-1]}")
            del model
    amp = [r["img_per_s"] for r in rows if r["precision"] != "fp32"]
    out["throughput"]["target_17_img_per_s_met"] = bool(amp) and min(amp) >= 17


def section_amp_f1(out, tmp, device, quick, workers, state):
    train, val = survey(tmp / "s96", 60 if quick else 800, DEFAULT["simulate"]["image_size"], seed=12)
    train_cache, val_cache = cache(train, tmp / "s96", "train"), cache(val, tmp / "s96", "val")
    det = DetectorSpec.from_config(DEFAULT["detector"])
    arm = BackboneSpec(**DEFAULT["backbones"]["resnet18_scratch"])
    cfg = {**DEFAULT["training"], "seed": 0}
    if quick:
        cfg.update(steps=4, eval_every=2, val_images=10)
    spec = TrainSpec.from_config(cfg)
    result = {}
    for precision in ("fp32", mixed(device)):
        log(f"amp_f1: {precision}")
        model, m = train_detector(train, train_cache, arm, det, spec, device=device, val=val, val_images=val_cache,
                                  compute=ComputeSpec(precision=precision, loader_workers=workers))
        result[m["precision"]] = {"best_val_f1": m["best_val_f1"], "steps": m["steps"], "img_per_s": m["img_per_s"],
                                  "seconds": m["seconds"]}
        if precision == "fp32":
            save_model(model, arm, det, tmp / "fp32_model.pt")
        out["amp_f1"] = result
    f1 = [r["best_val_f1"] for r in result.values()]
    out["amp_f1"]["difference"] = round(abs(f1[0] - f1[1]), 4) if None not in f1 else None
    out["amp_f1"]["target_0_01_met"] = out["amp_f1"]["difference"] is not None and out["amp_f1"]["difference"] <= 0.01
    state.update(val=val, val_cache=val_cache, det=det)


def section_predictions(out, tmp, device, quick, state):
    from torchvision.ops import box_iou

    val, val_cache = state["val"], state["val_cache"]
    images = val_cache.images(val)
    ids = [im["id"] for im in val["images"]]
    runs = {}
    for precision in ("fp32", mixed(device)):
        model, det = load_model(tmp / "fp32_model.pt", device, autocast_dtype(precision, device))
        runs[precision] = predict_images(model, images, ids, det.class_agnostic_nms)
    sel = Selection()
    scores = {p: validation_score(load_model(tmp / "fp32_model.pt", device, autocast_dtype(p, device))[0], val, images,
                                  state["det"], sel)["val_f1"] for p in ("fp32", mixed(device))}
    matched = total = 0
    worst = 0.0
    for image_id in ids:
        a = [r for r in runs["fp32"] if r["image_id"] == image_id and r["score"] >= 0.5]
        b = [r for r in runs[mixed(device)] if r["image_id"] == image_id]
        if not a:
            continue
        total += len(a)
        if not b:
            continue
        xyxy = lambda rs: torch.tensor([[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],  # noqa: E731
                                         r["bbox"][1] + r["bbox"][3]] for r in rs])
        iou = box_iou(xyxy(a), xyxy(b))
        best, j = iou.max(1)
        for i, (v, k) in enumerate(zip(best.tolist(), j.tolist())):
            if v >= 0.9:
                matched += 1
                worst = max(worst, abs(a[i]["score"] - b[k]["score"]))
    out["predictions"] = {"confident_fp32_detections": total, "matched_share": round(matched / total, 4) if total else None,
                          "max_score_change": round(worst, 4), "val_f1": scores}


def section_pretrain(out, tmp, device, quick):
    rng = np.random.default_rng(0)
    n = 32 if quick else 512
    images = [torch.from_numpy(rng.integers(0, 255, (3, 64, 64), dtype=np.uint8)) for _ in range(n)]
    counts = rng.integers(0, 10, (n, 2)).astype(float)
    spec = PretrainSpec(epochs=1 if quick else 3, batch_size=16 if quick else 64, lr=1e-3, weight_decay=0.0,
                        warmup_steps=2, views=2, validation_fraction=0.2, seed=0)
    _, m = pretrain_encoder(images, counts, {"clumpy": (("yes", "no"), None)}, BackboneSpec("resnet50"), spec,
                            compute=ComputeSpec(precision=mixed(device)), device=device)
    out["pretrain"] = {"precision": m["precision"], "losses": [h["loss"] for h in m["history"]],
                       "finite": all(np.isfinite(h["loss"]) for h in m["history"]),
                       "max_logit_change_under_d4": m["max_logit_change_under_d4"],
                       "galaxies_per_s": m["galaxies_per_s"]}


def section_ddp(out, tmp, device, quick, workers, state):
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        out["ddp"] = {"skipped": f"{torch.cuda.device_count() if device.type == 'cuda' else 0} GPU(s): needs 2"}
        return
    if "s200" not in state:  # (--only ddp)
        train, _ = survey(tmp / "s200", 160, 200, seed=11)
        state["s200"] = (train, cache(train, tmp / "s200", "train"))
    train, train_cache = state["s200"]
    det = DetectorSpec.from_config(PAPER["detector"])
    arm = frozen_arm(tmp, 3)
    rows = {}
    for k in (1, 2):  # one GPU with the whole batch of 8; two with 4 each (micro_batches 2)
        spec = TrainSpec(steps=90, eval_every=30, batch_size=8, lr=1e-4, weight_decay=5e-5, warmup_steps=1,
                         grad_clip=10.0, augment=True, seed=0, micro_batches=k)
        log(f"ddp: {k} GPU(s)")
        train_job([torch.device("cuda", i) for i in range(k)], tmp / f"ddp{k}.pt", tmp / f"ddp{k}.json",
                  coco=train, images=train_cache, backbone=arm, detector=det, spec=spec,
                  compute=ComputeSpec(precision="auto", loader_workers=workers))
        rows[k] = last_block(json.loads((tmp / f"ddp{k}.json").read_text()))
    out["ddp"] = {"batch_size": 8, "rows": rows,
                  "speedup": round(rows[2]["img_per_s"] / rows[1]["img_per_s"], 2),
                  "target_1_8_met": rows[2]["img_per_s"] / rows[1]["img_per_s"] >= 1.8}


def section_cost(out):
    """GPU-hours at the measured speeds: every cell's full budget (early stopping only shortens it)."""
    rows = out.get("throughput", {}).get("rows", [])
    speed = {(r["trainable_layers"], r["precision"] != "fp32"): r["img_per_s"] for r in rows}
    infer = max((r["infer_img_per_s"] for r in rows if r["precision"] != "fp32"), default=None)
    t = PAPER["training"]
    per_cell_images = t["steps"] * t["batch_size"]
    val_images = t["steps"] // t["eval_every"] * t["val_images"]
    arms = {name: PAPER["backbones"][name]["trainable_layers"] for name in PAPER["sweep"]["backbones"]}
    sizes = len(PAPER["labels"]["n_train"])
    table = []
    for name, trainable in arms.items():
        s = speed.get((0 if trainable == 0 else 3, True))
        if not s:
            continue
        hours = (per_cell_images / s + (val_images / infer if infer else 0)) / 3600
        table.append({"arm": name, "img_per_s": s, "gpu_hours_per_cell": round(hours, 1),
                      "gpu_hours_all_sizes": round(hours * sizes, 1)})
    out["cost"] = {"paper_cells": len(arms) * sizes, "images_per_cell": per_cell_images, "arms": table,
                   "paper_gpu_hours": round(sum(r["gpu_hours_all_sizes"] for r in table), 1) if table else None}
    amp = out.get("amp_f1", {})
    default_speed = next((v["img_per_s"] for k, v in amp.items() if isinstance(v, dict) and k != "fp32"), None)
    if default_speed:
        d = DEFAULT["training"]
        cells = len(DEFAULT["backbones"]) * len(DEFAULT["labels"]["n_train"])
        out["cost"]["default_gpu_hours"] = round(cells * d["steps"] * d["batch_size"] / default_speed / 3600, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the code paths only (for a CPU)")
    ap.add_argument("--workers", type=int, default=6, help="DataLoader workers of each training")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_smoke.json"))
    ap.add_argument("--only", nargs="*", help="sections to run (default: all)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --quick to test the code paths")
    out: dict[str, Any] = {
        "command": "python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute()
                                         else sys.argv[0]] + sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "commit": git_commit(),
        "data_seeds": [{"simulate": 11}, {"simulate": 12}],  # the galaxies survey() simulates below
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "cuda": torch.version.cuda,
                    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                    if device.type == "cuda" else [], "bf16": device.type == "cuda" and torch.cuda.is_bf16_supported(),
                    "cpu_threads": torch.get_num_threads()},
        "quick": args.quick, "reference_img_per_s": REFERENCE_IMG_PER_S, "errors": {},
    }

    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")

    state: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as d:
        tmp = Path(d)
        sections = [("throughput", lambda: section_throughput(out, tmp, device, args.quick, args.workers, state)),
                    ("amp_f1", lambda: section_amp_f1(out, tmp, device, args.quick, args.workers, state)),
                    ("predictions", lambda: section_predictions(out, tmp, device, args.quick, state)),
                    ("pretrain", lambda: section_pretrain(out, tmp, device, args.quick)),
                    ("ddp", lambda: section_ddp(out, tmp, device, args.quick, args.workers, state)),
                    ("cost", lambda: section_cost(out))]
        for name, run in sections:
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            log(f"section {name}")
            try:
                run()
            except Exception as err:  # one failed section must not lose the others' figures
                out["errors"][name] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
            out.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
            save()
    log(f"wrote {args.out}")
    if out["errors"]:
        raise SystemExit(f"sections failed: {sorted(out['errors'])}")


if __name__ == "__main__":
    main()
