"""Does a training recipe make detectors that work on real galaxies? Two arms of one cell (e.g.
with and without ``training.survey_look``), each trained with several seeds on the development
simulation, scored on the simulation's validation split and on the 30 real development galaxies.

    python benchmarks/survey_look_choice.py --folder ../shared/real-galaxies \\
        --arm "no look" dev config/development.yaml \\
        --arm "look 0.5" dev_look config/development.yaml look.yaml \\
        --backbone resnet18_morphology --n-train 300

Each ``--arm`` is a name, a workflow directory and the configuration files it was run with. For
every seed evaluated in the cell: the validation F1 the evaluation chose its threshold by (the
simulation's validation split; the test split is never read), and on the real galaxies
(:mod:`real_galaxies`: the model exported with its field, as the workflow exports it, through
``clumpfinder detect``'s path) the scores at the model's own threshold and the best F1 over
thresholds; per arm, the label ceiling of its validation galaxies (their consensus labels against
the simulated truth: arms may differ in their simulation). Per arm the seed mean and standard deviation; per measure the difference of the arms'
means with a Welch t interval over seeds (the galaxies are the same for every model, so this holds
the seed scatter, not the sampling of galaxies: 30 galaxies and 16 giant clumps make every real-galaxy
figure coarse). Writes ``--out`` (JSON, with command, date, commit and data seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import command_line, git_commit, merged_config, run_data_seeds  # noqa: E402
from real_galaxies import THRESHOLDS, detections, match, read_set, run_detector, scores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MEASURES = ("val_f1", "real_f1", "real_purity_clump", "real_giant_found", "real_best_f1")


def seed_scores(folder: Path, workdir: Path, configfiles: list[str], backbone: str, n_train: str) -> dict[int, dict]:
    """The measures of every seed evaluated in one cell of a run."""
    from clumpfinder.clumps.field import field_from_config
    from clumpfinder.clumps.model import export_detector

    cfg = merged_config(configfiles)
    res = workdir / "results"
    _, clumps = read_set(folder)
    out = {}
    for ev in sorted((res / "eval" / backbone / f"n{n_train}").glob("seed*/metrics.json")):
        seed = int(ev.parent.name.removeprefix("seed"))
        m = json.loads(ev.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / "detector.pt"
            export_detector(res / "models" / backbone / f"n{n_train}" / f"seed{seed}" / "model.pt", model,
                            {"crop": cfg["labels"]["crop"], "png": cfg["simulate"]["png"],
                             "field": field_from_config(cfg, simulated=True).to_dict()},
                            {"backbone": backbone, "n_train": n_train, "seed": seed, "score": m["score"]})
            cat = run_detector(folder, model)
        matched = match(detections(cat), clumps)
        at = scores(matched, clumps, m["score"])
        best = max((scores(matched, clumps, t) for t in THRESHOLDS), key=lambda r: r["f1"] or 0)
        out[seed] = {"score": m["score"], "val_f1": round(m["threshold"]["val_at_score"]["f1"], 4),
                     "real_f1": at["f1"], "real_purity_clump": at["purity_clump"],
                     "real_giant_found": at["giant_clumps_found"], "real_best_f1": best["f1"],
                     "real_best_score": best["score"]}
        print(workdir, seed, out[seed], flush=True)
    if not out:
        raise SystemExit(f"no evaluation of {backbone} at n = {n_train} under {res}/eval")
    return out


def val_label_ceiling(workdir: Path, configfiles: list[str]) -> dict | None:
    """The consensus labels of the run's validation galaxies scored against its simulated truth
    (classes merged, every box at score 1), as the workflow's label ceiling scores the test split:
    how good the labels a detector of this arm learns from are. None for a run without a truth."""
    import pandas as pd

    from clumpfinder.labels.coco import coco_dataset, truth_boxes
    from clumpfinder.scoring.evaluate import EvalSpec, evaluate_reference, labels_as_results

    cfg = merged_config(configfiles)
    res = workdir / "results"
    if not (res / "survey" / "truth.csv").exists():
        return None
    val = json.loads((res / "labels" / "val.json").read_text())
    manifest = pd.read_csv(res / "survey" / "manifest.csv")
    ev = cfg["evaluation"]
    boxes = truth_boxes(manifest, pd.read_csv(res / "survey" / "truth.csv"), cfg["consensus"]["box_scale"],
                        ev["truth_min_flux_fraction"], ev["truth_ignore_min_flux_fraction"])
    ids = {im["id"] for im in val["images"]}
    images = manifest[manifest["subject_id"].isin(ids)].rename(columns={"png": "file_name"})
    gt = coco_dataset(images, boxes, "simulated truth, validation split", extra_fields=("flux_fraction_g",),
                      crop=cfg["labels"]["crop"])
    m = evaluate_reference(gt, labels_as_results(val), EvalSpec.from_config(ev), 1.0)["merged"]
    return {k: round(float(m[k]), 4) for k in ("completeness", "purity", "f1")} | {"n_images": len(ids)}


def _summary(values: list[float]) -> dict:
    v = np.asarray([np.nan if x is None else x for x in values], float)
    return {"mean": round(float(np.nanmean(v)), 4), "sd": round(float(np.nanstd(v, ddof=1)), 4) if len(v) > 1 else None,
            "n": int(np.isfinite(v).sum())}


def welch(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """Mean of b minus mean of a with a Welch t interval over seeds."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else np.inf
    d = b.mean() - a.mean()
    half = stats.t.ppf(0.5 + level / 2, df) * se if se > 0 else 0.0
    return {"diff": round(float(d), 4), "low": round(float(d - half), 4), "high": round(float(d + half), 4),
            "decided": bool(len(a) >= 3 and len(b) >= 3 and (d - half > 0 or d + half < 0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--arm", nargs="+", action="append", required=True, metavar=("NAME DIR", "CONFIGFILE"))
    ap.add_argument("--backbone", default="resnet18_morphology")
    ap.add_argument("--n-train", default="300")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "survey_look_development.json")
    a = ap.parse_args()
    if len(a.arm) != 2:
        raise SystemExit("give two --arm NAME DIR [CONFIGFILE ...]")
    arms = {}
    for name, workdir, *configfiles in a.arm:
        per_seed = seed_scores(a.folder, Path(workdir), configfiles, a.backbone, a.n_train)
        arms[name] = {"workdir": workdir, "configfiles": configfiles,
                      "data_seeds": run_data_seeds(Path(workdir) / "results", configfiles),
                      "val_label_ceiling": val_label_ceiling(Path(workdir), configfiles),
                      "training": merged_config(configfiles)["training"], "seeds": per_seed,
                      "summary": {k: _summary([s[k] for s in per_seed.values()]) for k in MEASURES}}
    (first, one), (second, two) = arms.items()
    diffs = {k: welch([s[k] for s in one["seeds"].values()], [s[k] for s in two["seeds"].values()]) for k in MEASURES}
    out = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
           "data_seeds": [arm["data_seeds"] for arm in arms.values()], "cell": [a.backbone, a.n_train],
           "folder": str(a.folder), "arms": arms, f"{second} - {first}": diffs}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1, default=float) + "\n")
    for k in MEASURES:
        print(f"{k}: {first} {one['summary'][k]} | {second} {two['summary'][k]} | diff {diffs[k]}")
    print(f"validation labels against the truth: {first} {one['val_label_ceiling']} | {second} {two['val_label_ceiling']}")


if __name__ == "__main__":
    main()
