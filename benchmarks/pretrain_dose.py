"""How much galaxy pretraining does the detector need? Detectors started from encoder snapshots
taken along one morphology pretraining, against the workflow's scratch recipe, on the development
simulation.

    python benchmarks/pretrain_budget.py --configfile config/development.yaml \\
        --arm "64 px, 1 view, 20 epochs" image_size=64 views=1 epochs=20 \\
        --snapshot-dir snaps --snapshot-epochs 2 6 20
    python benchmarks/pretrain_dose.py --run dev --configfile config/development.yaml \\
        --snapshot "10 %" snaps/64_px__1_view__20_epochs/epoch2.pt \\
        --snapshot "30 %" snaps/64_px__1_view__20_epochs/epoch6.pt \\
        --snapshot "100 %" snaps/64_px__1_view__20_epochs/epoch20.pt \\
        --n-train 30 300 --seeds 0 1 2 --jobs 2 --work dose_work

``--run`` is a workflow directory of the development configuration whose labels and image caches
are made (``snakemake --until image_cache subset``). Each snapshot arm trains the configuration's
``resnet18_morphology`` recipe (the backbone entry, the training settings and seed) with the
encoder file swapped for the snapshot; the reference arm trains ``resnet18_scratch`` ("0 %": no
pretraining). Every arm x training-set size x seed is one training, run ``--jobs`` at a time (one
thread each) and kept in ``--work`` (a rerun trains only what is missing). Each detector is scored as
the workflow's evaluation chooses its threshold: F1 against the consensus labels of the validation
split at the validation split's best score threshold. The test split is never read. Per arm and
size the seed mean and standard deviation of that F1; per snapshot arm and size the difference
from scratch with a Welch t interval over seeds (95 %), decided when it excludes 0. A figure of
ΔF1 against the share of the pretraining goes to ``--figure``. Writes ``--out`` (JSON, with
command, date, commit and data seeds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
from provenance import command_line, git_commit, merged_config, run_data_seeds  # noqa: E402

SCRATCH, RECIPE = "resnet18_scratch", "resnet18_morphology"


def _plan(cfg: dict, results: str):
    from clumpfinder.config import Plan

    return Plan(cfg, results, yaml.safe_load((REPO / "config" / "schema.yaml").read_text()))


def train_one(cfg: dict, results: str, arm: str, encoder: str | None, n_train: int, seed: int) -> dict:
    """One detector of the cell, trained and scored on the validation split (in a process of its own)."""
    from clumpfinder.compute import ComputeSpec
    from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, predict
    from clumpfinder.detection.train import Selection, TrainSpec, train_detector
    from clumpfinder.io import read_json
    from clumpfinder.labels.cache import ImageCache
    from clumpfinder.scoring.evaluate import EvalSpec, choose_score

    plan = _plan(cfg, results)
    backbone = plan.backbone_spec(SCRATCH if encoder is None else RECIPE)
    if encoder is not None:
        backbone["init_file"] = encoder
    train = TrainSpec.from_config(plan.training_spec(SCRATCH if encoder is None else RECIPE, seed))
    val = read_json(f"{results}/labels/val.json")
    val_images = ImageCache(f"{results}/cache/val.npy", f"{results}/cache/val.json")
    detector = DetectorSpec.from_config(cfg["detector"])
    t0 = time.perf_counter()
    model, metrics = train_detector(
        read_json(f"{results}/labels/train_n{n_train}.json"),
        ImageCache(f"{results}/cache/train.npy", f"{results}/cache/train.json"), BackboneSpec(**backbone),
        detector, train, threads=1, val=val, val_images=val_images,
        selection=Selection(float(cfg["evaluation"]["iou"]), tuple(float(s) for s in cfg["evaluation"]["scores"])),
        compute=ComputeSpec(device="cpu", precision="fp32"))
    threshold = choose_score(val, predict(model, val, val_images, agnostic_nms=detector.class_agnostic_nms),
                             EvalSpec.from_config(cfg["evaluation"]))
    return {"arm": arm, "n_train": n_train, "seed": seed, "val_f1": round(threshold["val_at_score"]["f1"], 4),
            "score": threshold["score"], "best_step": metrics.get("best_step"), "seconds": round(time.perf_counter() - t0, 1)}


def welch(a: list[float], b: list[float]) -> dict:
    """Mean difference a - b with a Welch t interval (95 %) over seeds."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"diff": round(diff, 4), "low": None, "high": None, "decided": False}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    if se == 0:
        return {"diff": round(diff, 4), "low": round(diff, 4), "high": round(diff, 4), "decided": diff != 0}
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, dof)) * se
    return {"diff": round(diff, 4), "low": round(diff - half, 4), "high": round(diff + half, 4),
            "decided": bool(diff - half > 0 or diff + half < 0)}


def figure(summary: dict, shares: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for n, cells in summary.items():
        x, y, lo, hi = [0.0], [0.0], [0.0], [0.0]
        for arm, share in sorted(shares.items(), key=lambda kv: kv[1]):
            d = cells.get(arm, {}).get("vs_scratch")
            if d and d["low"] is not None:
                x.append(share), y.append(d["diff"]), lo.append(d["diff"] - d["low"]), hi.append(d["high"] - d["diff"])
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=f"n = {n}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("share of the pretraining budget (0 = scratch)")
    ax.set_ylabel("ΔF1 vs scratch (validation, 95 % Welch)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="development workflow directory (labels, caches)")
    ap.add_argument("--configfile", action="append", default=[])
    ap.add_argument("--snapshot", nargs=2, action="append", required=True, metavar=("NAME", "ENCODER"))
    ap.add_argument("--share", nargs=2, action="append", default=[], metavar=("NAME", "SHARE"),
                    help="a snapshot's share of the pretraining budget (figure axis; default from 'NN %%' names)")
    ap.add_argument("--n-train", type=int, nargs="+", default=[30, 300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", type=Path, required=True, help="one JSON per finished training (resumable)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pretrain_dose_development.json")
    ap.add_argument("--figure", type=Path, default=REPO / "docs" / "figures" / "pretrain_dose.png")
    a = ap.parse_args()
    cfg = merged_config(a.configfile)
    if cfg["report"]["seed_role"] != "development":
        raise SystemExit("pretrain_dose compares settings: run it on the development seeds (config/development.yaml)")
    results = str(a.run / "results")
    for f in ("labels/val.json", "cache/val.npy", "cache/train.npy", *(f"labels/train_n{n}.json" for n in a.n_train)):
        if not Path(results, f).exists():
            raise SystemExit(f"{results}/{f} is missing: make the run's labels and caches first")
    encoders = {"scratch": None, **{name: str(Path(p).resolve()) for name, p in a.snapshot}}
    for name, p in encoders.items():
        if p is not None and not Path(p).is_file():
            raise SystemExit(f"snapshot {name!r}: no file {p}")
    shares = {name: float(s) for name, s in a.share}
    for name, _ in a.snapshot:
        shares.setdefault(name, float(name.split("%")[0]) / 100 if "%" in name else float("nan"))
    a.work.mkdir(parents=True, exist_ok=True)
    jobs = [(arm, n, s) for n in a.n_train for s in a.seeds for arm in encoders]
    done = {}
    for arm, n, s in jobs:
        f = a.work / f"{''.join(c if c.isalnum() else '_' for c in arm)}_n{n}_seed{s}.json"
        if f.exists():
            done[(arm, n, s)] = json.loads(f.read_text())
    todo = [j for j in jobs if j not in done]
    print(f"{len(jobs)} trainings, {len(done)} done before, {len(todo)} to run, {a.jobs} at a time", flush=True)
    with ProcessPoolExecutor(a.jobs, max_tasks_per_child=1) as pool:
        futures = {pool.submit(train_one, cfg, results, arm, encoders[arm], n, s): (arm, n, s) for arm, n, s in todo}
        for k, fut in enumerate(as_completed(futures), 1):
            arm, n, s = futures[fut]
            row = fut.result()
            done[(arm, n, s)] = row
            f = a.work / f"{''.join(c if c.isalnum() else '_' for c in arm)}_n{n}_seed{s}.json"
            f.write_text(json.dumps(row) + "\n")
            print(f"[{k}/{len(todo)}] {arm} n={n} seed {s}: val F1 {row['val_f1']} ({row['seconds']} s)", flush=True)
    summary: dict = {}
    for n in a.n_train:
        cells = summary.setdefault(str(n), {})
        scratch = [done[("scratch", n, s)]["val_f1"] for s in a.seeds]
        for arm in encoders:
            f1 = [done[(arm, n, s)]["val_f1"] for s in a.seeds]
            cells[arm] = {"val_f1": f1, "mean": round(float(np.mean(f1)), 4),
                          "std": round(float(np.std(f1, ddof=1)), 4) if len(f1) > 1 else None}
            if arm != "scratch":
                cells[arm]["vs_scratch"] = welch(f1, scratch)
    figure(summary, shares, a.figure)
    out = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
           "data_seeds": run_data_seeds(results, a.configfile), "run": str(a.run), "measure": "validation F1 vs consensus at the "
           "validation split's best threshold (the test split is never read)", "seeds": a.seeds,
           "snapshots": {name: {"file": p, "share": shares.get(name),
                                "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest() if p else None}
                         for name, p in encoders.items()},
           "cells": summary, "trainings": [done[j] for j in jobs], "figure": str(a.figure)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    for n, cells in summary.items():
        for arm, c in cells.items():
            print(f"n={n} {arm}: F1 {c['mean']} ± {c['std']}", c.get("vs_scratch", ""), flush=True)


if __name__ == "__main__":
    main()
