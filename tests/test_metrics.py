"""Completeness, purity, thresholds, curves and bootstrap intervals on hand-built cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clumpfinder import metrics as M
from clumpfinder.scoring.evaluate import EvalSpec, choose_score, evaluate_reference

CATS = [{"id": 1, "name": "clump"}, {"id": 2, "name": "odd_clump"}]


def dataset(boxes_per_image: list[list[tuple[float, float, int]]], crowd: set[int] = frozenset()) -> dict:
    """Images of 96 px with 10 px boxes at (x, y) of a category; annotation ids from 1."""
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 96, "height": 96})
        for x, y, c in boxes:
            aid = len(anns) + 1
            anns.append({"id": aid, "image_id": i, "category_id": c, "bbox": [x, y, 10.0, 10.0], "area": 100.0,
                         "iscrowd": int(aid in crowd), "flux_fraction_g": 0.01 * aid})
    return {"images": images, "annotations": anns, "categories": CATS}


def det(image: int, x: float, y: float, score: float, c: int = 1) -> dict:
    return {"image_id": image, "category_id": c, "bbox": [x, y, 10.0, 10.0], "score": score}


GT = dataset([[(10, 10, 1), (50, 50, 1)], [(20, 20, 2)], []])  # 3 boxes; image 3 is empty


def test_perfect_predictions():
    res = [det(1, 10, 10, 0.9), det(1, 50, 50, 0.8), det(2, 20, 20, 0.7, 2)]
    m = M.match(GT, res)
    c = M.counts(m, 0.5, 0.5)
    assert (c["tp"], c["fp"], c["n_gt"], c["completeness"], c["purity"], c["f1"]) == (3, 0, 3, 1.0, 1.0, 1.0)
    ci = M.bootstrap(m, 0.5, 0.5, n=200)
    assert ci["completeness"] == {"low": 1.0, "high": 1.0}


def test_all_false_positives_and_empty_images():
    res = [det(1, 80, 80, 0.9), det(3, 40, 40, 0.9)]  # nothing near a ground truth; one on the empty image
    c = M.counts(M.match(GT, res), 0.5, 0.1)
    assert (c["tp"], c["fp"], c["completeness"], c["purity"], c["f1"]) == (0, 2, 0.0, 0.0, 0.0)
    empty = dataset([[], []])
    c = M.counts(M.match(empty, [det(1, 5, 5, 0.9)]), 0.5, 0.5)
    assert c["n_gt"] == 0 and math.isnan(c["completeness"]) and c["purity"] == 0.0
    c = M.counts(M.match(empty, []), 0.5, 0.5)
    assert math.isnan(c["completeness"]) and math.isnan(c["purity"])


def test_no_detections_at_all():
    spec = EvalSpec(0.5, None, (0.3, 0.5), (0.1, 0.5), {"n": 50, "seed": 0, "level": 0.9}, (0.0, 1.0))
    out = evaluate_reference(GT, [], spec, 0.5, flux_field="flux_fraction_g")
    assert out["merged"]["tp"] == 0 and out["merged"]["completeness"] == 0.0 and math.isnan(out["merged"]["purity"])
    assert out["pr"]["0.5"] == {"recall": [], "precision": [], "score": []}
    assert out["AP50"] == 0.0 and all(b["found"] == 0 for b in out["by_flux"])
    assert choose_score(GT, [], spec)["score"] == 0.1


def test_score_thresholds_iou_and_classes():
    # a 10 px box shifted by 3 px: IoU = 7*10/(200-70) = 0.538; by 5 px: 0.333
    res = [det(1, 13, 10, 0.9), det(1, 55, 50, 0.6), det(2, 20, 20, 0.3, 1), det(1, 70, 70, 0.2)]
    m = M.match(GT, res)
    assert M.counts(m, 0.5, 0.5)[("tp")] == 1 and M.counts(m, 0.3, 0.5)["tp"] == 2
    c = M.counts(m, 0.3, 0.25)  # the wrong-class detection counts when classes are merged
    assert (c["tp"], c["fp"]) == (3, 0)
    per_class = M.match(GT, res, use_cats=True)
    assert M.counts(per_class, 0.3, 0.25, 1)["fp"] == 1 and M.counts(per_class, 0.3, 0.25, 2)["tp"] == 0
    grid = M.grid(m, [0.1, 0.5, 0.95])
    assert [(g["iou"], g["score"], g["tp"], g["fp"]) for g in grid] == [
        (0.3, 0.1, 3, 1), (0.3, 0.5, 2, 0), (0.3, 0.95, 0, 0), (0.5, 0.1, 2, 2), (0.5, 0.5, 1, 1), (0.5, 0.95, 0, 0)]
    # F1 at IoU 0.3: 0.1 -> 6/7, 0.5 -> 0.8, 0.95 -> 0: the lowest threshold wins
    assert M.best_score(m, 0.3, [0.1, 0.5, 0.95]) == 0.1
    curve = M.pr_curve(m, 0.3)
    assert curve["score"] == [0.9, 0.6, 0.3, 0.2] and curve["recall"] == pytest.approx([1 / 3, 2 / 3, 1, 1], abs=1e-5)
    assert curve["precision"] == pytest.approx([1, 1, 1, 0.75])


def test_crowd_boxes_are_neither_found_nor_false():
    gt = dataset([[(10, 10, 1), (50, 50, 1)]], crowd={2})
    m = M.match(gt, [det(1, 10, 10, 0.9), det(1, 50, 50, 0.9)], extra_fields=("flux_fraction_g",))
    c = M.counts(m, 0.5, 0.5)
    assert (c["tp"], c["fp"], c["n_gt"]) == (1, 0, 1)
    by = M.completeness_by(m, "flux_fraction_g", [0.0, 0.015, 1.0], 0.5, 0.5)
    assert [(b["n"], b["found"]) for b in by] == [(1, 1), (1, 1)]


def test_bootstrap_is_seeded_and_brackets_the_value():
    gt = dataset([[(10, 10, 1)] for _ in range(40)])
    res = [det(i, 10, 10, 0.9) for i in range(1, 41) if i % 3] + [det(i, 60, 60, 0.9) for i in range(1, 41, 4)]
    m = M.match(gt, res)
    a, b = M.bootstrap(m, 0.5, 0.5, n=500, seed=3), M.bootstrap(m, 0.5, 0.5, n=500, seed=3)
    assert a == b and a != M.bootstrap(m, 0.5, 0.5, n=500, seed=4)
    c = M.counts(m, 0.5, 0.5)
    for k in ("completeness", "purity", "f1"):
        assert a[k]["low"] < c[k] < a[k]["high"]


def test_headline_threshold_from_validation_and_reference_metrics():
    spec = EvalSpec(0.5, None, (0.3, 0.5), (0.1, 0.5, 0.8), {"n": 100, "seed": 0, "level": 0.9}, (0.0, 0.02, 1.0))
    val_res = [det(1, 10, 10, 0.9), det(1, 50, 50, 0.6), det(2, 20, 20, 0.4, 2), det(1, 80, 80, 0.3)]
    # F1 at 0.1: 3 tp 1 fp -> 0.857; at 0.5: 2 tp 0 fp -> 0.8; at 0.8: 1 tp -> 0.5
    chosen = choose_score(GT, val_res, spec)
    assert chosen["score"] == 0.1 and chosen["val_at_score"]["tp"] == 3
    fixed = EvalSpec(0.5, 0.7, (0.3, 0.5), (0.1, 0.5), {"n": 100, "seed": 0, "level": 0.9}, (0.0, 1.0))
    assert choose_score(GT, val_res, fixed) == {"score": 0.7, "source": "configuration (evaluation.score)"}
    out = evaluate_reference(GT, val_res, spec, 0.5, flux_field="flux_fraction_g")
    assert out["merged"]["tp"] == 2 and set(out["merged"]["ci"]) == {"completeness", "purity", "f1"}
    assert set(out["by_class"]["per_class"]) == {"clump", "odd_clump"} and len(out["grid"]) == 6
    assert len(out["grid_per_class"]) == 12 and set(out["pr"]) == {"0.3", "0.5"}
    assert [b["n"] for b in out["by_flux"]] == [1, 1]  # the two clumps (flux 0.01, 0.02); the odd one is left out
    with pytest.raises(ValueError, match="evaluation.iou 0.4 is not one of"):
        EvalSpec(0.4, None, (0.3, 0.5), (0.5,), {"n": 10, "seed": 0, "level": 0.9}, (0.0, 1.0))


def _record(m, score=0.5):
    return M.per_image_record(m, 0.5, score)


def test_recipe_intervals_single_seed_matches_the_bootstrap_and_is_zero_against_itself():
    gt = dataset([[(10, 10, 1)] for _ in range(40)])
    res = [det(i, 10, 10, 0.9) for i in range(1, 41) if i % 3] + [det(i, 60, 60, 0.9) for i in range(1, 41, 4)]
    m = M.match(gt, res)
    rec = _record(m)
    assert rec["image_id"] == list(range(1, 41)) and sum(rec["n_gt"]) == 40 and sum(rec["tp"]) == 27
    out = M.recipe_intervals({"a": [rec], "b": [rec]}, "a", n=300, seed=7, level=0.9)
    single = M.bootstrap(m, 0.5, 0.5, n=300, seed=7, level=0.9)
    c = M.counts(m, 0.5, 0.5)
    for k in ("completeness", "purity", "f1"):
        assert out["a"][k]["value"] == pytest.approx(c[k])
        # one seed: no seed variance to add, its interval is the test-galaxy bootstrap's
        for lo, hi in (("low", "high"), ("galaxy_low", "galaxy_high")):
            assert (out["a"][k][lo], out["a"][k][hi]) == pytest.approx((single[k]["low"], single[k]["high"]))
        assert out["b"][k]["diff"] == 0 and out["b"][k]["diff_galaxy_low"] == 0 and out["b"][k]["diff_galaxy_high"] == 0
        assert math.isnan(out["b"][k]["diff_low"])  # no interval over seeds from one seed
        assert math.isnan(out["b"][k]["seed_sd"]) and out["b"][k]["n_seeds"] == 1
        assert out["b"][k]["verdict"] == "cannot decide" and out["a"][k]["verdict"] is None
    again = M.recipe_intervals({"a": [rec], "b": [rec]}, "a", n=300, seed=7, level=0.9)
    assert json.dumps(out, sort_keys=True) == json.dumps(again, sort_keys=True)  # seeded


def _hits(n_found: int, n: int = 200, offset: int = 0) -> dict:
    """A per-image record of ``n`` one-clump images, ``n_found`` of them found (a block starting at
    ``offset``), no false positives."""
    found = {(offset + i) % n for i in range(n_found)}
    return {"iou": 0.5, "score": 0.5, "image_id": list(range(n)), "tp": [int(i in found) for i in range(n)],
            "fp": [0] * n, "n_gt": [1] * n}


def test_recipe_intervals_refuse_one_seed_and_decide_a_difference_larger_than_the_seed_spread():
    # one training seed per arm: even a difference of 0.4 in completeness cannot be decided, though
    # the per-model interval over galaxies is far from zero
    one = M.recipe_intervals({"base": [_hits(60)], "new": [_hits(140)]}, "base", n=400)["new"]["completeness"]
    assert one["diff"] == pytest.approx(0.4) and one["diff_galaxy_low"] > 0.3
    assert one["verdict"] == "cannot decide" and not one["decidable"]
    # three seeds per arm, spread 0.02 around a planted difference of 0.2: decided
    planted = M.recipe_intervals({"base": [_hits(96), _hits(100, offset=50), _hits(104, offset=100)],
                                  "new": [_hits(136), _hits(140, offset=30), _hits(144, offset=90)]}, "base", n=400)
    c = planted["new"]["completeness"]
    assert c["diff"] == pytest.approx(0.2) and c["verdict"] == "higher" and c["decidable"]
    assert c["seed_sd"] == pytest.approx(0.02) and c["n_seeds"] == 3
    assert c["diff_low"] > 0.1 and c["diff_high"] < 0.3 and 2 < c["dof"] < 400
    reverse = M.recipe_intervals({"new": [_hits(136), _hits(140), _hits(144)],
                                  "base": [_hits(96), _hits(100), _hits(104)]}, "new", n=400)
    assert reverse["base"]["completeness"]["verdict"] == "lower"
    # three seeds whose spread (0.1) dwarfs the difference (0.02): the seeds' scatter keeps it open,
    # while the galaxy-only interval of these six models excludes zero (every image found by the
    # baseline's seed is found by the other arm's seed too)
    spread = M.recipe_intervals({"base": [_hits(80), _hits(100), _hits(120)],
                                 "new": [_hits(84), _hits(104), _hits(124)]}, "base", n=400)["new"]["completeness"]
    assert spread["diff"] == pytest.approx(0.02) and spread["diff_galaxy_low"] > 0
    assert spread["diff_low"] < 0 < spread["diff_high"] and spread["verdict"] == "not decided"
    # the seed part widens the interval of each arm's own value too
    assert spread["high"] - spread["low"] > spread["galaxy_high"] - spread["galaxy_low"]
    # the baseline needs its seeds as well
    thin_base = M.recipe_intervals({"base": [_hits(100)], "new": [_hits(136), _hits(140), _hits(144)]}, "base", n=100)
    assert thin_base["new"]["completeness"]["verdict"] == "cannot decide"


def test_recipe_intervals_rarely_decide_between_identical_recipes():
    """Two arms of 3 seeds drawn from one recipe (seed scatter 0.1 in completeness, each model's
    clumps found image by image): at 95 % a difference should be decided about 5 % of the time.
    (A percentile bootstrap that resamples the 3 seeds decides it more than twice as often:
    benchmarks/verdict_calibration.py.)"""
    rng = np.random.default_rng(3)

    def arm() -> list[dict]:
        out = []
        for _ in range(3):
            p = 0.6 + rng.normal(0, 0.1)
            out.append({"image_id": list(range(300)), "tp": (rng.random(300) < p).astype(int).tolist(),
                        "fp": (rng.random(300) < 0.2).astype(int).tolist(), "n_gt": [1] * 300})
        return out

    decided = [M.recipe_intervals({"a": arm(), "b": arm()}, "a", n=100, seed=e)["b"]["f1"]["verdict"]
               in ("higher", "lower") for e in range(150)]
    assert sum(decided) / len(decided) <= 0.09


def test_recipe_intervals_fixed_arms_errors_and_undefined_measures():
    gt = dataset([[(10, 10, 1), (50, 50, 1)] for _ in range(30)])
    weak = M.match(gt, [det(i, 10, 10, 0.9) for i in range(1, 31)])  # finds half
    strong = M.match(gt, [det(i, x, x, 0.9) for i in range(1, 31) for x in (10, 50)])  # finds all
    # a fixed arm (the classical finder: not trained) needs no seeds; the trained arm needs three
    out = M.recipe_intervals({"classical": [_record(weak)], "detector": [_record(strong)] * 3}, "classical",
                             n=200, fixed=("classical",))
    c = out["detector"]["completeness"]
    assert c["value"] == pytest.approx(1.0) and c["diff"] == pytest.approx(0.5) and c["verdict"] == "higher"
    assert c["diff_low"] == pytest.approx(0.5) and c["diff_high"] == pytest.approx(0.5)  # every image alike
    assert c["seed_sd"] == 0 and out["classical"]["purity"]["value"] == 1.0
    two = M.recipe_intervals({"classical": [_record(weak)], "detector": [_record(strong), _record(weak)]},
                             "classical", n=200, fixed=("classical",))["detector"]["completeness"]
    assert two["value"] == pytest.approx(0.75) and two["seed_sd"] == pytest.approx(math.sqrt(0.125))
    assert two["verdict"] == "cannot decide"
    with pytest.raises(ValueError, match="'classical' is not trained"):
        M.recipe_intervals({"classical": [_record(weak)] * 2}, "classical", fixed=("classical",))
    with pytest.raises(ValueError, match="baseline 'x' is not one of"):
        M.recipe_intervals({"weak": [_record(weak)]}, "x")
    other = M.match(dataset([[(10, 10, 1)]] * 5), [])
    with pytest.raises(ValueError, match="'other' was scored on other test images"):
        M.recipe_intervals({"weak": [_record(weak)], "other": [_record(other)]}, "weak")
    nothing = M.recipe_intervals({"none": [_record(other)]}, "none", n=50)["none"]
    assert nothing["completeness"]["value"] == 0 and nothing["f1"]["value"] == 0
    assert math.isnan(nothing["purity"]["value"]) and math.isnan(nothing["purity"]["low"])
    # a seed model that detects nothing has no purity: no verdict on purity, F1 still decides
    silent = _record(M.match(gt, []))
    mixed = M.recipe_intervals({"weak": [_record(weak)] * 3, "new": [_record(strong), _record(strong), silent]},
                               "weak", n=100)["new"]
    assert math.isnan(mixed["purity"]["value"]) and mixed["purity"]["verdict"] == "cannot decide"
    assert math.isnan(mixed["purity"]["diff_low"]) and mixed["f1"]["verdict"] in VERDICTS


VERDICTS = ("higher", "lower", "not decided")


def test_an_interval_touching_zero_at_the_shown_precision_is_not_decided():
    assert M.excludes_zero(0.001, 0.2) and M.excludes_zero(-0.3, -0.0006)
    assert not M.excludes_zero(0.0003, 0.2) and not M.excludes_zero(-0.3, -0.0004)
    assert not M.excludes_zero(float("nan"), 0.2)
    assert M.verdict(0.001, 0.2, True) == "higher" and M.verdict(-0.3, -0.0006, True) == "lower"
    assert M.verdict(0.0003, 0.2, True) == "not decided" and M.verdict(0.1, 0.2, False) == "cannot decide"


def test_matching_leaves_its_inputs_untouched():
    import copy

    gt = dataset([[(10, 10, 1), (50, 50, 2)], [(20, 20, 1)]], crowd={3})
    res = [det(1, 10, 10, 0.9), det(2, 20, 20, 0.4), det(2, 70, 70, 0.3)]
    before = copy.deepcopy((gt, res))
    M.match(gt, res, use_cats=True)
    evaluate_reference(gt, res, EvalSpec(0.5, None, (0.5,), (0.5,), {"n": 10, "seed": 0, "level": 0.9},
                                         (0.0, 1.0)), 0.5, flux_field="flux_fraction_g")
    assert (gt, res) == before


def test_coco_ap_equals_pycocotools_summarize():
    """coco_ap evaluates only the 'all' area range; its numbers must be summarize()'s."""
    import contextlib
    import io

    import numpy as np
    from pycocotools.cocoeval import COCOeval

    from clumpfinder.scoring.evaluate import coco_ap

    rng = np.random.default_rng(5)
    gt = dataset([[(float(x), float(y), int(c)) for x, y, c in zip(rng.uniform(0, 80, k), rng.uniform(0, 80, k),
                                                                   rng.integers(1, 3, k))]
                  for k in rng.integers(0, 4, 60)])
    res = [det(a["image_id"], a["bbox"][0] + rng.normal(0, 2), a["bbox"][1] + rng.normal(0, 2), float(rng.uniform()),
               a["category_id"] if rng.random() < 0.8 else 3 - a["category_id"]) for a in gt["annotations"]]
    res += [det(int(i), float(x), float(y), float(s)) for i, x, y, s in
            zip(rng.integers(1, 61, 40), rng.uniform(0, 80, 40), rng.uniform(0, 80, 40), rng.uniform(0, 1, 40))]
    for use_cats in (True, False):
        coco = M.coco_index(gt)
        ev = COCOeval(coco, M.load_results(coco, res), "bbox")
        ev.params.useCats = int(use_cats)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        expected = {"AP": ev.stats[0], "AP50": ev.stats[1], "AP75": ev.stats[2], "AR": ev.stats[8]}
        got = coco_ap(gt, res, use_cats=use_cats)
        assert got == pytest.approx(expected, abs=1e-12) and 0.1 < got["AP50"] < 1
