"""How often does the summary decide a difference that is not there, and how often does it find
one that is? Simulated comparisons of two recipes with 3 training seeds each.

    python benchmarks/verdict_calibration.py [--experiments 400]

Each simulated experiment scores two arms of ``--seeds`` trained models on the same ``--images``
one-clump test images: each model finds a clump with a probability drawn around the arm's mean
(the seed scatter, ``--seed-sd``) and makes a false positive with probability 0.2, image by image.
Under the null both arms share their mean; under an effect the second arm's mean is higher by
``--effect``. Two interval methods decide (the interval of the F1 difference excludes zero):

* ``recipe_intervals`` (clumpfinder.metrics, what the summary uses): galaxy bootstrap variance +
  the seeds' variance of the mean, Student's t at Satterthwaite's degrees of freedom;
* ``pigeonhole percentile``: a percentile bootstrap resampling the test images (shared by the
  arms) and each arm's seeds with replacement (Owen 2007), as a first version of the summary did.

Writes ``--out`` (JSON): per seed scatter, each method's rate of false decisions (null) and of
decisions (effect). No simulated survey is involved (data_seeds null).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from clumpfinder.metrics import recipe_intervals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import command_line, git_commit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def arm(rng: np.random.Generator, seeds: int, mean: float, seed_sd: float, images: int) -> list[dict]:
    records = []
    for _ in range(seeds):
        p = float(np.clip(mean + rng.normal(0, seed_sd), 0.01, 0.99))
        records.append({"image_id": list(range(images)), "tp": (rng.random(images) < p).astype(int).tolist(),
                        "fp": (rng.random(images) < 0.2).astype(int).tolist(), "n_gt": [1] * images})
    return records


def _f1(table: np.ndarray) -> np.ndarray:
    """F1 of seeds x resamples x images x (tp, fp, n_gt) summed over images."""
    tp, fp, g = (table[..., k].sum(axis=-1) for k in range(3))
    return 2 * tp / (2 * tp + fp + (g - tp))


def pigeonhole_decides(a: list[dict], b: list[dict], n: int, seed: int, level: float = 0.95) -> bool:
    """The percentile pigeonhole bootstrap's verdict on F1(b) - F1(a)."""
    rng = np.random.default_rng(seed)
    ta, tb = (np.stack([np.column_stack([r["tp"], r["fp"], r["n_gt"]]) for r in arm_]).astype(float) for arm_ in (a, b))
    idx = rng.integers(0, ta.shape[1], size=(n, ta.shape[1]))
    fa, fb = _f1(ta[:, idx]), _f1(tb[:, idx])  # seeds x resamples
    cols = np.arange(n)[:, None]
    da = rng.integers(0, len(ta), size=(n, len(ta)))
    db = rng.integers(0, len(tb), size=(n, len(tb)))
    diff = fb[db, cols].mean(axis=1) - fa[da, cols].mean(axis=1)
    low, high = np.percentile(diff, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return bool(round(low, 3) > 0 or round(high, 3) < 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--seed-sd", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1])
    ap.add_argument("--effect", type=float, default=0.1)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "verdict_calibration.json")
    a = ap.parse_args()
    rows = []
    for sd in a.seed_sd:
        row = {"seed_sd": sd}
        for case, effect in (("null", 0.0), ("effect", a.effect)):
            rng = np.random.default_rng([int(sd * 1000), int(effect * 1000)])
            ours = theirs = 0
            for e in range(a.experiments):
                x, y = arm(rng, a.seeds, 0.6, sd, a.images), arm(rng, a.seeds, 0.6 + effect, sd, a.images)
                ours += recipe_intervals({"a": x, "b": y}, "a", n=a.resamples, seed=e)["b"]["f1"]["verdict"] in (
                    "higher", "lower")
                theirs += pigeonhole_decides(x, y, a.resamples, e)
            row[case] = {"recipe_intervals": round(ours / a.experiments, 3),
                         "pigeonhole_percentile": round(theirs / a.experiments, 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
           "data_seeds": None, "experiments": a.experiments, "seeds_per_arm": a.seeds, "images": a.images,
           "effect": a.effect, "resamples": a.resamples, "level": 0.95,
           "what": "rate of decided differences: false ones under the null, true ones under the effect", "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
