"""Training and inference speed of the detector on this machine: the settings before the CPU
speed-up and after it, and the steps in between, measured in one run.

    python benchmarks/train_throughput.py --workdir dev [--rounds 3] [--steps 24] [--threads 1]

``--workdir`` is a workflow directory run with ``--configfile config/development.yaml`` up to its
labels and image caches (``results/labels/train_n300.json``, ``results/cache/train.*``): the
training images are real simulated galaxies with their consensus boxes, read through the
training's own data path. Each setup is the workflow's configuration (config/config.yaml +
config/development.yaml) with an override (``SETUPS`` below: ``before`` is the configuration of
the code before the speed-up; ``after`` is the configuration as it is); ``compile`` adds
``torch.compile`` of the backbone, ``bf16`` mixed precision, which is measured only on a CPU that
computes bf16 natively (AVX512-BF16 or AMX; elsewhere it is emulated and slow, so the row says
so instead).

Each setup trains the ``resnet18_scratch`` detector with :func:`clumpfinder.detection.train.train_detector`
(data loader, augmentation, AdamW, the loop) for ``--warmup`` + ``--steps`` steps, timed after the
warm-up, in ``--rounds`` rounds that visit every setup in turn (so that a change in the machine's
speed during the run touches all setups alike); the median over the rounds is reported, as
training images per second per thread (one thread: per core). Inference: the trained model
predicts the validation images (``predict_images``, batch 16). Then a ``torch.profiler`` table of
5 training steps of ``before`` and ``after`` (self CPU time by operator). Writes
``benchmarks/results/train_throughput.json`` with command, date, commit and the CPU's flags.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from clumpfinder.compute import ComputeSpec
from clumpfinder.config import deep_update
from clumpfinder.detection import train as train_module
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, build_detector, predict_images
from clumpfinder.detection.train import TrainSpec, load_targets, train_detector
from clumpfinder.io import read_json
from clumpfinder.labels.cache import ImageCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import command_line, git_commit, run_data_seeds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: the configuration of the code before the speed-up (commit d1820d2): an FPN of 64 channels on all
#: four ResNet stages, RoIAlign with 2 x 2 samples per bin, 32 RoIs per image, batches of 8
BEFORE = {"detector": {"max_stride": 32, "anchor_sizes": [8, 16, 32, 64, 128], "roi_sampling_ratio": 2,
                       "box_batch_size_per_image": 32},
          "training": {"batch_size": 8},
          "backbones": {"resnet18_scratch": {"fpn_channels": 64}}}


def _step(*overrides: dict) -> dict:
    out = copy.deepcopy(BEFORE)
    for o in overrides:
        out = deep_update(out, o)
    return out


_STRIDE16 = {"detector": {"max_stride": 16, "anchor_sizes": [8, 16, 32, 64]}}
_SAMPLING1 = {"detector": {"roi_sampling_ratio": 1}}
#: the steps from ``before`` to ``after`` (each adds one change to the one above it; the last is the
#: configuration as it is), and variants of ``after``
SETUPS: dict[str, dict] = {
    "before": {"override": BEFORE},
    "stride16": {"override": _step(_STRIDE16)},
    "stride16_sampling1": {"override": _step(_STRIDE16, _SAMPLING1)},
    "after": {"override": {}},
    "after_rois16": {"override": {"detector": {"box_batch_size_per_image": 16}}},
    "after_batch16": {"override": {"training": {"batch_size": 16}}},
    "after_compile": {"override": {}, "compile": True},
    "after_bf16": {"override": {}, "bf16": True},
}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def setup_config(base: dict, setup: dict) -> tuple[DetectorSpec, dict, BackboneSpec]:
    """The detector, training settings and ``resnet18_scratch`` backbone of a setup."""
    cfg = deep_update(copy.deepcopy(base), setup["override"])
    entry = cfg["backbones"]["resnet18_scratch"]
    return (DetectorSpec.from_config(cfg["detector"]), {**cfg["training"], **entry.get("training", {})},
            BackboneSpec(**{k: v for k, v in entry.items() if k != "training"}))


def compiled_builder(*args, **kwargs):
    model = build_detector(*args, **kwargs)
    model.backbone.body = torch.compile(model.backbone.body)
    return model


def time_setup(name: str, setup: dict, base: dict, coco: dict, cache: ImageCache, val: dict,
               val_cache: ImageCache, warmup: int, steps: int, threads: int) -> dict:
    det, training, spec = setup_config(base, setup)
    # eval_every = warmup: the first history block is the warm-up, the blocks after it are timed
    tspec = TrainSpec.from_config({**training, "steps": warmup + steps, "eval_every": warmup, "patience": 0,
                                   "warmup_steps": 1, "seed": 0})
    compute = ComputeSpec(precision="bf16" if setup.get("bf16") else "fp32")
    train_module.build_detector = compiled_builder if setup.get("compile") else build_detector
    try:
        t0 = time.perf_counter()
        model, m = train_detector(coco, cache, spec, det, tspec, threads=threads, compute=compute,
                                  device=torch.device("cpu"))
        wall = time.perf_counter() - t0
    finally:
        train_module.build_detector = build_detector
    timed = m["history"][1:]
    images = sum(r["img_per_s"] * r["seconds"] for r in timed)
    seconds = sum(r["seconds"] for r in timed)
    images_val = val_cache.images(val)
    t0 = time.perf_counter()
    predict_images(model, images_val, [im["id"] for im in val["images"]], det.class_agnostic_nms)
    infer = len(images_val) / (time.perf_counter() - t0)
    return {"setup": name, "train_img_per_s": round(images / seconds, 2), "eval_img_per_s": round(infer, 2),
            "batch_size": tspec.batch_size, "timed_steps": steps,
            "job_seconds": round(wall, 1)}


def profile_steps(setup: dict, base: dict, coco: dict, cache: ImageCache, n_steps: int = 5,
                  rows: int = 12) -> list[dict]:
    """Self CPU time by operator over ``n_steps`` training steps (after 3 unprofiled ones)."""
    from torch.profiler import ProfilerActivity, profile

    det, training, spec = setup_config(base, setup)
    torch.manual_seed(0)
    model = build_detector(spec, det, pretrained=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3, fused=True)
    images, targets = cache.images(coco), load_targets(coco)
    bs = training["batch_size"]
    model.train()

    def step(k: int) -> None:
        idx = [(k * bs + j) % len(images) for j in range(bs)]
        loss = sum(model([images[i].float() / 255.0 for i in idx], [targets[i] for i in idx]).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for k in range(3):
        step(k)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(n_steps):
            step(3 + k)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 4),
             "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / n_steps, 2), "calls_per_step":
             round(e.count / n_steps, 1)} for e in events[:rows]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--n", type=int, default=300, help="training subset whose images are used")
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--steps", type=int, default=24, help="timed steps per setup and round (batch 8 setups: twice)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_throughput.json")
    a = ap.parse_args()
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    base = deep_update(base, yaml.safe_load((REPO / "config" / "development.yaml").read_text()))
    res = a.workdir / "results"
    coco = read_json(res / "labels" / f"train_n{a.n}.json")
    cache = ImageCache(res / "cache" / "train.npy", res / "cache" / "train.json")
    val = read_json(res / "labels" / "val.json")
    val_cache = ImageCache(res / "cache" / "val.npy", res / "cache" / "val.json")
    torch.set_num_threads(a.threads)
    skipped = {}
    setups = [s for s in a.setups if not (SETUPS[s].get("bf16") and not native_bf16())]
    if "after_bf16" in a.setups and "after_bf16" not in setups:
        skipped["after_bf16"] = ("this CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag; torch CPU "
                                 f"capability {torch.backends.cpu.get_cpu_capability()}): bf16 would be emulated")
    rounds: dict[str, list[dict]] = {s: [] for s in setups}
    for r in range(a.rounds):
        for name in setups:
            bs = setup_config(base, SETUPS[name])[1]["batch_size"]
            steps = max(1, a.steps * 16 // bs // 2)  # about the same images per setup
            row = time_setup(name, SETUPS[name], base, coco, cache, val, val_cache, a.warmup, steps, a.threads)
            row["round"] = r
            print(json.dumps(row), flush=True)
            rounds[name].append(row)
    summary = []
    for name, rows in rounds.items():
        summary.append({"setup": name, "override": SETUPS[name]["override"],
                        "compile": bool(SETUPS[name].get("compile")), "bf16": bool(SETUPS[name].get("bf16")),
                        "batch_size": rows[0]["batch_size"], "threads": a.threads,
                        "train_img_per_s_per_thread": round(statistics.median(x["train_img_per_s"] for x in rows)
                                                            / a.threads, 2),
                        "eval_img_per_s_per_thread": round(statistics.median(x["eval_img_per_s"] for x in rows)
                                                           / a.threads, 2),
                        "rounds": [x["train_img_per_s"] for x in rows]})
    by = {s["setup"]: s for s in summary}
    ratios = {}
    if "before" in by:
        ratios = {name: {"train": round(s["train_img_per_s_per_thread"] / by["before"]["train_img_per_s_per_thread"], 2),
                         "eval": round(s["eval_img_per_s_per_thread"] / by["before"]["eval_img_per_s_per_thread"], 2)}
                  for name, s in by.items()}
    profiles = {} if a.no_profile else {name: profile_steps(SETUPS[name], base, coco, cache)
                                        for name in ("before", "after") if name in by}
    out = {"command": command_line(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "commit": git_commit(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                               "processor": platform.processor(),
                                               "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                               "native_bf16": native_bf16()},
           "data_seeds": run_data_seeds(res, [REPO / "config" / "development.yaml"]),
           "data": {"workdir": str(a.workdir), "train_images": len(coco["images"]), "val_images": len(val["images"])},
           "load_average_before": list(os.getloadavg()), "setups": summary, "speedup_vs_before": ratios,
           "skipped": skipped, "profile": profiles, "rounds": rounds}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    for s in summary:
        print(f"{s['setup']:>20}: train {s['train_img_per_s_per_thread']:6.2f} img/s/thread, "
              f"eval {s['eval_img_per_s_per_thread']:6.2f}  x{ratios.get(s['setup'], {}).get('train', float('nan'))}")


if __name__ == "__main__":
    main()
