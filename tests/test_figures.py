"""Every figure is drawn from real evaluation records (PNG and PDF), and bad input is refused."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clumpfinder.evaluate import EvalSpec, evaluate_reference
from clumpfinder.figures import (pick_gallery, plot_consensus, plot_flux_completeness, plot_gallery,
                                 plot_pr_curves)

SPEC = EvalSpec(0.5, None, (0.3, 0.5), (0.1, 0.5, 0.9), {"n": 50, "seed": 0, "level": 0.95},
                (0.0, 0.02, 0.05, 0.3))
CATS = [{"id": 1, "name": "clump"}, {"id": 2, "name": "odd_clump"}]


def labels(n_images: int = 6) -> dict:
    images = [{"id": 100 + i, "file_name": f"{100 + i}.png", "width": 48, "height": 48} for i in range(n_images)]
    anns = []
    for i in range(n_images):
        for k, (x, c) in enumerate(((8, 1), (28, 1), (20, 2))[: 1 + i % 3]):
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": c, "bbox": [x, x, 6.0, 6.0],
                         "area": 36.0, "iscrowd": 0, "flux_fraction_g": 0.01 + 0.03 * k})
    return {"images": images, "annotations": anns, "categories": CATS}


def predictions(gt: dict, skip_every: int) -> list[dict]:
    out = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.3 + 0.1 * (k % 6)}
           for k, a in enumerate(gt["annotations"]) if k % skip_every]
    return out + [{"image_id": 100, "category_id": 1, "bbox": [38.0, 5.0, 6.0, 6.0], "score": 0.95}]


def runs(gt: dict) -> list:
    out = []
    for backbone, skip in (("scratch", 2), ("galaxy", 5)):
        for n in (10, 30):
            for seed in (0, 1):
                res = predictions(gt, skip + seed)
                refs = {"consensus": evaluate_reference(gt, res, SPEC, 0.5),
                        "truth": evaluate_reference(gt, res, SPEC, 0.5, flux_field="flux_fraction_g")}
                out.append((backbone, n, seed, {"iou": 0.5, "score": 0.5, "references": refs}))
    return out


def _written(tmp_path, name):
    for ext in ("png", "pdf"):
        assert (tmp_path / f"{name}.{ext}").stat().st_size > 2000, ext
    assert not list(tmp_path.glob(".*"))  # nothing half-written left


def test_pr_and_flux_figures(tmp_path):
    r = runs(labels())
    plot_pr_curves(r, 0.5, tmp_path / "pr.png", tmp_path / "pr.pdf")
    _written(tmp_path, "pr")
    # a bin with every clump found (Wilson's upper bound rounds below 1 for n = 5) and an empty one
    b, n, s, m = r[0]
    perfect = copy.deepcopy(m)
    perfect["references"]["truth"]["by_flux"] = [
        {"low": 0.0, "high": 0.02, "n": 5, "found": 5, "completeness": 1.0},
        {"low": 0.02, "high": 0.05, "n": 9, "found": 0, "completeness": 0.0},
        {"low": 0.05, "high": 0.3, "n": 0, "found": 0, "completeness": float("nan")}]
    plot_flux_completeness(r + [("perfect", n, s, perfect)], 0.03, tmp_path / "flux.png", tmp_path / "flux.pdf")
    _written(tmp_path, "flux")
    consensus_only = [(b, n, s, {**m, "references": {"consensus": m["references"]["consensus"]}})
                      for b, n, s, m in r]
    plot_pr_curves(consensus_only, 0.5, tmp_path / "pr1.png", tmp_path / "pr1.pdf")
    with pytest.raises(ValueError, match="needs the simulated truth"):
        plot_flux_completeness(consensus_only, 0.03, tmp_path / "x.png", tmp_path / "x.pdf")
    assert not (tmp_path / "x.png").exists()


def test_gallery(tmp_path):
    gt = labels()
    rng = np.random.default_rng(0)
    for im in gt["images"]:
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / im["file_name"])
    ids = pick_gallery([im["id"] for im in gt["images"]], 4, seed=1)
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert pick_gallery([im["id"] for im in reversed(gt["images"])], 4, seed=1) == ids  # order does not matter
    assert pick_gallery([1, 2], 5, 0) == [1, 2]
    truth = labels()
    truth["annotations"][0]["iscrowd"] = 1
    preds = {"scratch": predictions(gt, 2), "galaxy": predictions(gt, 5)}
    plot_gallery(gt, tmp_path, preds, {"scratch": 0.5, "galaxy": 0.35}, ids, tmp_path / "g.png", tmp_path / "g.pdf",
                 truth=truth, title="n = 10")
    _written(tmp_path, "g")
    with pytest.raises(ValueError, match=r"gallery images \[999\] are not in the test labels"):
        plot_gallery(gt, tmp_path, preds, {"scratch": 0.5, "galaxy": 0.5}, [999], tmp_path / "h.png",
                     tmp_path / "h.pdf")


def test_consensus_diagnostics(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    volunteers = pd.DataFrame({"user": [f"id:{1000 + i}" for i in range(n - 2)] + ["name:anon-a", "name:anon-b"],
                               "n_classifications": rng.integers(1, 30, n), "n_clicks": rng.integers(0, 50, n),
                               "swap_pl": rng.uniform(0.4, 1, n), "swap_pd": rng.uniform(0.4, 1, n),
                               "swap_n_trained": rng.integers(0, 5, n), "p_fp": rng.uniform(0, 0.3, n),
                               "p_fn": rng.uniform(0, 0.6, n), "variance": rng.uniform(0.01, 1, n)})
    subjects = pd.DataFrame({"swap_prob": np.concatenate([rng.uniform(0, 1, 50), [0.0, 1.0, 1e-9]]),
                             "gold": np.concatenate([rng.choice([-1, 0, 1], 50), [0, 1, -1]])})
    true = pd.DataFrame({"user_id": [1000 + i for i in range(n - 2)] + [np.nan, np.nan],
                         "user_name": [f"volunteer_{i}" for i in range(n - 2)] + ["anon-a", "anon-b"],
                         "miss": rng.uniform(0, 0.6, n), "kind": ["normal"] * (n - 5) + ["spammer"] * 5})
    plot_consensus(volunteers, subjects, tmp_path / "c.png", tmp_path / "c.pdf", true_volunteers=true)
    _written(tmp_path, "c")
    no_em = volunteers.assign(p_fp=np.nan, p_fn=np.nan, variance=np.nan)  # consensus.method dbscan
    plot_consensus(no_em, subjects, tmp_path / "d.png", tmp_path / "d.pdf")
    _written(tmp_path, "d")
