"""Splits, nested subsets and COCO labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clumpfinder.labels import coco_dataset, make_splits, nested_order, strata, subset, truth_boxes

FRACTIONS = {"train": 0.7, "val": 0.2, "test": 0.1}


def fake(n=300, seed=0):
    rng = np.random.default_rng(seed)
    subjects = pd.DataFrame({"subject_id": np.arange(n) + 1000, "n_classifications": 20,
                             "swap_prob": rng.choice([0.001, 0.5, 0.999], n, p=[0.4, 0.2, 0.4])})
    subjects["n_clicks"] = np.where(subjects["swap_prob"] > 0.1, rng.poisson(20, n), rng.poisson(2, n))
    rows = []
    for sid in subjects["subject_id"]:
        for _ in range(rng.poisson(1.2)):
            x, y = rng.uniform(10, 80, 2)
            rows.append((sid, x - 4, y - 4, x + 4, y + 4, "odd_clump" if rng.uniform() < 0.2 else "clump"))
    boxes = pd.DataFrame(rows, columns=["subject_id", "x1", "y1", "x2", "y2", "category"])
    return subjects, boxes


def test_splits_partition_and_are_deterministic():
    subjects, boxes = fake()
    a = make_splits(subjects, FRACTIONS, seed=3)
    b = make_splits(subjects, FRACTIONS, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["subject_id"]) == set(subjects["subject_id"]) and a["subject_id"].is_unique
    counts = a["split"].value_counts()
    assert counts["train"] == 210 and counts["val"] == 60 and counts["test"] == 30
    c = make_splits(subjects, FRACTIONS, seed=4)
    assert not (a["split"] == c["split"]).all()


def test_splits_are_stratified():
    subjects, boxes = fake(600)
    s = make_splits(subjects, FRACTIONS, seed=0)
    share = s.groupby("split")["stratum"].apply(lambda x: (x == "no-1").mean())
    assert 0.2 < share.mean() < 0.6
    assert share.max() - share.min() < 0.05


def test_bad_fractions_rejected():
    subjects, boxes = fake(50)
    with pytest.raises(ValueError, match="sum to 1"):
        make_splits(subjects, {"train": 0.7, "val": 0.2, "test": 0.2}, 0)
    with pytest.raises(ValueError, match="too few"):
        make_splits(subjects.iloc[:5], FRACTIONS, 0)


def test_rare_strata_merged():
    subjects, _ = fake(100)
    subjects.loc[:1, "n_clicks"] = 0  # two subjects in strata of their own
    subjects.loc[:1, "swap_prob"] = 0.5
    key = strata(subjects)
    assert key.value_counts().min() >= 4 and "unsure-0" not in set(key)


def test_strata_ignore_the_consensus_boxes():
    """Same volunteers, any consensus method: the same split."""
    subjects, _ = fake(200)
    a = make_splits(subjects, FRACTIONS, seed=2)
    b = make_splits(subjects.assign(n_boxes=0), FRACTIONS, seed=2)
    pd.testing.assert_frame_equal(a, b)


def test_nested_subsets_are_nested_and_stratified():
    subjects, boxes = fake(1000)
    s = make_splits(subjects, FRACTIONS, seed=0)
    order = nested_order(s, seed=1)
    train = set(s.loc[s["split"] == "train", "subject_id"])
    assert set(order) == train and len(order) == len(train)
    np.testing.assert_array_equal(order, nested_order(s, seed=1))
    # prefixes keep the pool's mix: the empty-galaxy share of the first 100 matches the pool's
    key = s.set_index("subject_id")["stratum"]
    pool_share = (key[list(train)] == "no-1").mean()
    assert abs((key[order[:100]] == "no-1").mean() - pool_share) < 0.03


def test_coco_dataset_and_subset():
    subjects, boxes = fake(20)
    images = pd.DataFrame({"subject_id": subjects["subject_id"], "file_name": [f"{s}.png" for s in subjects["subject_id"]],
                           "width": 96, "height": 96})
    coco = coco_dataset(images, boxes, "test")
    assert [c["name"] for c in coco["categories"]] == ["clump", "odd_clump"]
    assert len(coco["images"]) == 20 and len(coco["annotations"]) == len(boxes)
    a = coco["annotations"][0]
    assert a["bbox"][2] == pytest.approx(8.0) and a["area"] == pytest.approx(64.0) and a["iscrowd"] == 0
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    sub = subset(coco, subjects["subject_id"].iloc[:5], "sub")
    assert {im["id"] for im in sub["images"]} == set(subjects["subject_id"].iloc[:5])
    assert all(a["image_id"] in {im["id"] for im in sub["images"]} for a in sub["annotations"])
    with pytest.raises(ValueError, match="not in the dataset"):
        subset(coco, [1], "x")


def test_click_frame_rescaled_to_image():
    """Clicks made on a 400 px display of a 100 px image land at the right place."""
    images = pd.DataFrame({"subject_id": [1], "file_name": ["1.png"], "width": [100], "height": [100],
                           "click_width": [400], "click_height": [400]})
    boxes = pd.DataFrame([(1, 200.0, 100.0, 240.0, 140.0, "clump")], columns=["subject_id", "x1", "y1", "x2", "y2", "category"])
    a = coco_dataset(images, boxes, "x")["annotations"][0]
    assert a["bbox"] == [50.0, 25.0, 10.0, 10.0]


def test_truth_boxes_ignore_faint_clumps(tiny_survey):
    man, truth = tiny_survey["manifest"], tiny_survey["truth"]
    tb = truth_boxes(man, truth, box_scale=2.0, min_flux_fraction=0.03)
    faint = (truth["kind"] == "clump") & (truth["flux_fraction_g"] < 0.03)
    assert (tb["iscrowd"] == faint.astype(int)).all()
    assert (tb.loc[truth["kind"] == "odd", "category"] == "odd_clump").all()
    side = truth["subject_id"].map(man.set_index("subject_id")["psf_fwhm_pixels"]) * 2
    size = tiny_survey["spec"].image_size
    inside = (truth["x"] - side / 2 > 0) & (truth["x"] + side / 2 < size)
    np.testing.assert_allclose((tb["x2"] - tb["x1"])[inside], side[inside])


def test_central_crop_moves_clips_and_drops_boxes(tmp_path):
    """labels.crop: the detector sees the central crop (Popp et al.: 200 of 400 px)."""
    from PIL import Image

    from clumpfinder.labels import read_image

    images = pd.DataFrame({"subject_id": [1], "file_name": ["1.png"], "width": [40], "height": [40]})
    boxes = pd.DataFrame({"subject_id": [1, 1, 1], "x1": [18.0, 9.0, 0.0], "y1": [18.0, 9.0, 0.0],
                          "x2": [22.0, 13.0, 4.0], "y2": [22.0, 13.0, 4.0], "category": ["clump", "odd_clump", "clump"]})
    coco = coco_dataset(images, boxes, "t", crop=20)
    assert coco["images"] == [{"id": 1, "file_name": "1.png", "width": 20, "height": 20, "crop": [10, 10]}]
    # centre (20, 20) -> (10, 10); centre (11, 11) -> (1, 1), clipped at 0; centre (2, 2) is outside
    assert [a["bbox"] for a in coco["annotations"]] == [[8.0, 8.0, 4.0, 4.0], [0.0, 0.0, 3.0, 3.0]]
    assert [a["id"] for a in coco["annotations"]] == [1, 2] and coco["info"]["boxes_outside_crop"] == 1
    arr = np.zeros((40, 40, 3), np.uint8)
    arr[10, 10] = 255
    Image.fromarray(arr).save(tmp_path / "1.png")
    cut = read_image(tmp_path, coco["images"][0])
    assert cut.shape == (20, 20, 3) and cut[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="too small for the 35x35 px crop"):
        read_image(tmp_path, {**coco["images"][0], "width": 35, "height": 35})
    with pytest.raises(ValueError, match="larger than image 1"):
        coco_dataset(images, boxes, "t", crop=50)
    assert "crop" not in coco_dataset(images, boxes, "t")["images"][0]
