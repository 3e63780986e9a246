"""Every figure is drawn from real evaluation records (PNG and PDF), and bad input is refused."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clumpfinder.scoring.evaluate import EvalSpec, evaluate_reference
from clumpfinder.report.figures import (pick_gallery, plot_consensus, plot_flux_completeness, plot_gallery,
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
    fig = plot_pr_curves(r, 0.5, tmp_path / "pr.png", tmp_path / "pr.pdf")
    _written(tmp_path, "pr")
    # rows: consensus, truth; columns: n = 10, 30; one curve per backbone and seed, plus its operating point
    assert [ax.get_title() for ax in fig.axes] == ["n = 10, vs consensus", "n = 30, vs consensus",
                                                   "n = 10, vs truth", "n = 30, vs truth"]
    ax = fig.axes[0]
    assert len(ax.lines) == 2 * 2 * 2
    assert sorted(t.get_text() for t in fig.axes[1].get_legend().get_texts()) == ["galaxy", "scratch"]
    first = next(m for b, n, seed, m in r if (b, n, seed) == ("galaxy", 10, 0))  # drawn first (by name, seed)
    m = first["references"]["consensus"]
    assert list(ax.lines[0].get_xdata()) == m["pr"]["0.5"]["recall"]
    assert list(ax.lines[1].get_xdata()) == [m["merged"]["completeness"]]
    # a bin with every clump found (Wilson's upper bound rounds below 1 for n = 5) and an empty one
    b, n, s, m = r[0]
    perfect = copy.deepcopy(m)
    perfect["references"]["truth"]["by_flux"] = [
        {"low": 0.0, "high": 0.02, "n": 5, "found": 5, "completeness": 1.0},
        {"low": 0.02, "high": 0.05, "n": 9, "found": 0, "completeness": 0.0},
        {"low": 0.05, "high": 0.3, "n": 0, "found": 0, "completeness": float("nan")}]
    fig = plot_flux_completeness(r + [("perfect", n, s, perfect)], 0.03, tmp_path / "flux.png", tmp_path / "flux.pdf")
    _written(tmp_path, "flux")
    assert [ax.get_title() for ax in fig.axes] == ["n = 10", "n = 30"]
    legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]  # on the last panel
    assert "galaxy (mean of 2 seeds)" in legend and "scratch (mean of 2 seeds)" in legend
    # the perfect model's line at n = 10: 1.0 in the full bin, 0.0 in the missed one, the empty bin not drawn
    perfect_line = [c for c in fig.axes[0].containers if c.get_label() == "perfect"][0]
    assert list(perfect_line.lines[0].get_ydata()) == [1.0, 0.0]
    assert fig.axes[0].lines[-1].get_xdata()[0] == pytest.approx(3.0)  # the 3 % line that the headline counts from
    consensus_only = [(b, n, s, {**m, "references": {"consensus": m["references"]["consensus"]}})
                      for b, n, s, m in r]
    fig = plot_pr_curves(consensus_only, 0.5, tmp_path / "pr1.png", tmp_path / "pr1.pdf")
    assert len(fig.axes) == 2  # no truth row
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
    fig = plot_gallery(gt, tmp_path, preds, {"scratch": 0.5, "galaxy": 0.35}, ids, tmp_path / "g.png",
                       tmp_path / "g.pdf", truth=truth, title="n = 10")
    _written(tmp_path, "g")
    assert len(fig.axes) == 2 * 4  # models (rows) x galaxies (columns), landscape
    assert [ax.get_title() for ax in fig.axes[:4]] == [f"galaxy {i}" for i in ids]
    assert [fig.axes[k].get_ylabel() for k in (0, 4)] == ["scratch\nscore >= 0.50", "galaxy\nscore >= 0.35"]
    width, height = fig.get_size_inches()
    assert width <= 10 and height <= 0.75 * width  # fits the report's image pane
    for j, model in enumerate(preds):  # a score tag per detection above each model's threshold (room for all)
        for i, image_id in enumerate(ids):
            shown = sorted(f"{d['score']:.2f}" for d in preds[model]
                           if d["image_id"] == image_id and d["score"] >= {"scratch": 0.5, "galaxy": 0.35}[model])
            assert sorted(t.get_text() for t in fig.axes[4 * j + i].texts) == shown
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["volunteer consensus", "truth (thin: too faint to count)"]
    with pytest.raises(ValueError, match=r"gallery images \[999\] are not in the test labels"):
        plot_gallery(gt, tmp_path, preds, {"scratch": 0.5, "galaxy": 0.5}, [999], tmp_path / "h.png",
                     tmp_path / "h.pdf")


def test_score_labels_stay_clear_of_each_other_and_of_the_boxes():
    from clumpfinder.report.figures import place_labels

    # three detections in a row, 10 px apart, with a consensus box just above the first: the tags
    # (12 x 5 px) go where they overlap neither each other nor a box
    boxes = [[20, 40, 6, 6], [30, 40, 6, 6], [40, 40, 6, 6]]
    consensus = [[18, 30, 8, 8]]
    spots = place_labels(boxes, (12, 5), (96, 96), avoid=consensus)
    rects = [(x, y, 12, 5) for x, y in spots]
    for k, r in enumerate(rects):
        assert 0 <= r[0] <= 96 - 12 and 0 <= r[1] <= 96 - 5  # inside the image
        assert all(_overlap(r, q) == 0 for q in rects[:k] + rects[k + 1:])
        assert all(_overlap(r, tuple(q)) == 0 for q in boxes + consensus)
    assert spots[1] == (30, 34)  # the first choice, above its box, when free
    # at the image's edge the tag is pulled inside
    assert place_labels([[0, 0, 5, 5]], (12, 5), (96, 96)) == [(0, 6)]
    # a crowded image: a box with no spot free of earlier tags gets none, and at most `most` are placed
    crowd = [[40, 40, 4, 4], [40, 40, 4, 4], [40, 40, 4, 4], [40, 40, 4, 4], [40, 40, 4, 4]]
    spots = place_labels(crowd, (12, 5), (96, 96))
    assert spots[:4] != [None] * 4 and spots[4] is None
    assert place_labels([[10 * k, 80, 4, 4] for k in range(9)], (6, 5), (96, 96), most=3)[3:] == [None] * 6


def _overlap(a, b):
    return max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])) * max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))


def test_every_figure_fits_the_report_pane():
    from clumpfinder.report.figures import report_size

    for w, h in ((14, 4.4), (3.4, 6.2), (30, 30), (10, 7.5), (4, 3)):
        fw, fh = report_size(w, h)
        shown = 150 * fh * min(1, 1050 / (150 * fw))  # pixels tall once the viewer fits the pane's width
        assert fw <= 10 and shown <= 860, (w, h)


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
    fig = plot_consensus(volunteers, subjects, tmp_path / "c.png", tmp_path / "c.pdf", true_volunteers=true)
    _written(tmp_path, "c")
    assert len(fig.axes) == 4
    trained = int((volunteers["swap_n_trained"] > 0).sum())
    assert fig.axes[0].get_ylabel() == f"volunteers (of {trained} who saw gold)"
    gold_legend = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert gold_legend == [f"not gold ({(subjects['gold'] == -1).sum()})",
                           f"gold: has clumps ({(subjects['gold'] == 1).sum()})",
                           f"gold: no clumps ({(subjects['gold'] == 0).sum()})"]
    # the skill scatter: every simulated volunteer with >= 5 classifications, by kind
    shown = sum(len(c.get_offsets()) for c in fig.axes[3].collections)
    assert shown == int((volunteers["n_classifications"] >= 5).sum())
    no_em = volunteers.assign(p_fp=np.nan, p_fn=np.nan, variance=np.nan)  # consensus.method dbscan
    fig = plot_consensus(no_em, subjects, tmp_path / "d.png", tmp_path / "d.pdf")
    _written(tmp_path, "d")
    assert len(fig.axes) == 3 and "no EM skills" in fig.axes[1].texts[0].get_text()
