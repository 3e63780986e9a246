"""The classical clump finder baseline: it finds point-like clumps on a smooth galaxy, drops the
bulge, sizes boxes like the labels, and chooses its filter on the validation split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clumpfinder.scoring import classical
from clumpfinder.scoring.evaluate import labels_as_results


def _galaxy(clumps=((30, 60), (70, 40)), size=96, fwhm=4.0, seed=0, clump_peak=60.0):
    """An RGB uint8 image: an exponential disc with a bright bulge, point-like clumps, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    c = (size - 1) / 2
    r = np.hypot(x - c, y - c)
    img = 120 * np.exp(-r / 12) + 100 * np.exp(-(r / 3) ** 2)
    sigma = fwhm / 2.3548
    for cx, cy in clumps:
        img += clump_peak * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    img += rng.normal(0, 2.0, img.shape)
    band = np.clip(img, 0, 255).astype(np.uint8)
    return np.stack([band // 2, band, band // 3], axis=-1)


def test_finds_the_clumps_and_drops_the_bulge():
    spec = classical.ClassicalSpec(channel="green")
    peaks = classical.find_clumps(_galaxy(), fwhm_px=4.0, filter_fwhm=4.0, spec=spec)
    strong = peaks[peaks["snr"] > 5]
    assert len(strong) == 2
    found = sorted(zip(strong["x"], strong["y"]))
    assert found == [(30.0, 60.0), (70.0, 40.0)]
    centre = (96 - 1) / 2
    assert (np.hypot(peaks["x"] - centre, peaks["y"] - centre) > spec.centre_radius_fwhm * 4.0).all()
    # a galaxy without clumps: nothing significant
    assert (classical.find_clumps(_galaxy(clumps=()), 4.0, 4.0, spec)["snr"] < 5).all()


def test_smooth_model_on_blocks_follows_the_full_median():
    from scipy.ndimage import median_filter

    data = _galaxy(clumps=())[..., 1].astype(float)
    full = median_filter(data, size=17, mode="reflect")
    fast = classical.smooth_model(data, 17.0)
    assert fast.shape == data.shape
    assert np.abs(fast - full)[10:-10, 10:-10].mean() < 2.0  # grey levels of 255


def test_boxes_have_the_label_size_and_scores_follow_significance():
    spec = classical.ClassicalSpec(channel="green")
    img = _galaxy(clumps=((30, 60), (3, 50)))
    res = classical.predict([img], [7], [8.0], 4.0, spec, box_scale=2.0)
    assert res and all(r["image_id"] == 7 and r["category_id"] == 1 for r in res)
    inner = [r for r in res if r["bbox"][0] > 5]
    assert all(r["bbox"][2] == pytest.approx(8.0) and r["bbox"][3] == pytest.approx(8.0) for r in inner)
    assert all(r["bbox"][0] >= 0 and r["bbox"][0] + r["bbox"][2] <= 96 for r in res)  # clipped at the edge
    peaks = classical.find_clumps(img, 4.0, 4.0, spec).sort_values("snr")
    scores = sorted(r["score"] for r in res)
    assert scores == pytest.approx(sorted(peaks["snr"] / (peaks["snr"] + spec.snr_half)), abs=1e-5)


def _coco(images, boxes):
    return {"images": [{"id": i, "file_name": f"{i}.png", "width": 96, "height": 96} for i in range(len(images))],
            "annotations": [{"id": k + 1, "image_id": i, "category_id": 1, "bbox": [x - 4, y - 4, 8, 8], "area": 64,
                             "iscrowd": 0} for k, (i, x, y) in enumerate(boxes)],
            "categories": [{"id": 1, "name": "clump"}, {"id": 2, "name": "odd_clump"}]}


def test_filter_choice_on_validation():
    clumps = [((30, 60), (70, 40)), ((25, 30),), ()]
    images = [_galaxy(c, seed=k) for k, c in enumerate(clumps)]
    val = _coco(images, [(i, x + 0.5, y + 0.5) for i, c in enumerate(clumps) for x, y in c])
    spec = classical.ClassicalSpec(channel="green", filter_fwhm=(1.0, 4.0))
    scores = [round(0.05 * i, 2) for i in range(1, 20)]
    choice = classical.choose_filter(val, images, [8.0] * 3, spec, 2.0, 0.5, scores)
    assert [t["filter_fwhm"] for t in choice["trials"]] == [1.0, 4.0]
    best = max(choice["trials"], key=lambda t: t["f1"])
    assert choice["filter_fwhm"] == best["filter_fwhm"] and best["f1"] == 1.0
    assert choice["score"] == best["score"]


def test_box_sides_and_settings_errors():
    coco = _coco([None, None], [])
    subjects = pd.DataFrame({"subject_id": [0], "box_side": [9.0]})
    with pytest.raises(KeyError, match=r"subjects \[1\]"):
        classical.box_sides(coco, subjects)
    subjects = pd.DataFrame({"subject_id": [0, 1], "box_side": [9.0, 7.5]})
    assert classical.box_sides(coco, subjects) == [9.0, 7.5]
    with pytest.raises(ValueError, match="unknown classical settings"):
        classical.ClassicalSpec.from_config({"channel": "green", "k": 3})
    with pytest.raises(ValueError, match="channel 'ultraviolet'"):
        classical.ClassicalSpec(channel="ultraviolet")


def test_labels_as_results_skip_ignored_boxes():
    coco = _coco([None], [(0, 20, 20), (0, 50, 50)])
    coco["annotations"][1]["iscrowd"] = 1
    res = labels_as_results(coco)
    assert len(res) == 1 and res[0]["score"] == 1.0 and res[0]["bbox"] == [16, 16, 8, 8]
