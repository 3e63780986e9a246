"""Splits, nested subsets and COCO labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clumpfinder.labels.coco import coco_dataset, subset, truth_boxes
from clumpfinder.labels.splits import make_splits, nested_order, strata

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


def test_truth_boxes_count_by_flux_fraction(tiny_survey):
    """Against the truth, what counts is decided by flux fraction, not by the simulator's class:
    star-forming regions >= 3 % are clumps, 1.5-3 % are ignored (iscrowd), fainter knots get no
    box (a detection there is false); odd objects always count."""
    man, truth = tiny_survey["manifest"], tiny_survey["truth"]
    tb = truth_boxes(man, truth, box_scale=2.0, min_flux_fraction=0.03, ignore_min_flux_fraction=0.015)
    star_forming = truth["kind"] != "odd"
    kept = truth[~star_forming | (truth["flux_fraction_g"] >= 0.015)].reset_index(drop=True)
    assert len(tb) == len(kept) and (truth["kind"] == "knot").sum() > 0
    assert (tb["flux_fraction_g"].to_numpy() == kept["flux_fraction_g"].to_numpy()).all()
    faint = (kept["kind"] != "odd") & (kept["flux_fraction_g"] < 0.03)
    assert (tb["iscrowd"] == faint.astype(int)).all() and faint.any() and (~faint).any()
    assert (tb.loc[kept["kind"] == "odd", "category"] == "odd_clump").all()
    assert (tb.loc[kept["kind"] != "odd", "category"] == "clump").all()
    side = kept["subject_id"].map(man.set_index("subject_id")["psf_fwhm_pixels"]) * 2
    size = tiny_survey["spec"].image_size
    inside = (kept["x"] - side / 2 > 0) & (kept["x"] + side / 2 < size)
    np.testing.assert_allclose((tb["x2"] - tb["x1"])[inside], side[inside])
    # ignoring nothing: every knot below 3 % is a region no detection may claim
    none = truth_boxes(man, truth, box_scale=2.0, min_flux_fraction=0.03, ignore_min_flux_fraction=0.03)
    assert none["iscrowd"].sum() == 0 and len(none) < len(tb)
    with pytest.raises(ValueError, match="truth_ignore_min_flux_fraction"):
        truth_boxes(man, truth, box_scale=2.0, min_flux_fraction=0.03, ignore_min_flux_fraction=0.05)
    # field sources beside the galaxy (stars, galaxies, however faint) are ignored: iscrowd
    field = truth[truth["kind"] == "odd"].assign(kind="field", flux_fraction_g=0.001)
    with_field = truth_boxes(man, pd.concat([truth, field]), box_scale=2.0, min_flux_fraction=0.03,
                             ignore_min_flux_fraction=0.015)
    assert len(with_field) == len(tb) + len(field) > len(tb)
    added = with_field.iloc[len(tb):]
    assert (added["category"] == "odd_clump").all() and (added["iscrowd"] == 1).all()
    pd.testing.assert_frame_equal(with_field.iloc[: len(tb)], tb)


def test_central_crop_moves_clips_and_drops_boxes(tmp_path):
    """labels.crop: the detector sees the central crop (Popp et al.: 200 of 400 px)."""
    from PIL import Image

    from clumpfinder.imaging import read_image

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


# ------------------------------------------------------------------ splits by galaxy, gold and injected subjects


def grouped(n_galaxies=300, seed=0):
    """``fake`` subjects where some galaxies were shown in 2 or 3 subjects (Clump Scout did), and
    the subjects of one galaxy look alike to the volunteers (mostly one stratum per galaxy)."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 2, 3], n_galaxies, p=[0.7, 0.2, 0.1])
    sizes[0] = 3  # galaxy G0 has three subjects
    subjects, boxes = fake(int(sizes.sum()), seed)
    galaxy = np.repeat([f"G{g}" for g in range(n_galaxies)], sizes)
    subjects["galaxy_id"] = rng.permutation(galaxy)  # a galaxy's subjects are not neighbours by id
    first = subjects.groupby("galaxy_id")["subject_id"].transform("min")
    lead = subjects.set_index("subject_id")
    for col in ("swap_prob", "n_clicks"):
        subjects[col] = np.where(rng.uniform(size=len(subjects)) < 0.8, first.map(lead[col]), subjects[col])
    return subjects, boxes


@pytest.mark.parametrize("seed", range(20))
def test_a_galaxy_never_straddles_splits(seed):
    subjects, _ = grouped(seed=seed)
    s = make_splits(subjects, FRACTIONS, seed=seed)
    assert set(s["subject_id"]) == set(subjects["subject_id"])
    per_galaxy = s.groupby("galaxy_id")["split"].nunique()
    assert (per_galaxy == 1).all()
    assert (s.loc[s["galaxy_id"] == "G0", "split"].nunique(), (s["galaxy_id"] == "G0").sum()) == (1, 3)
    # the galaxy column of splits.csv is the subjects' own
    assert s.set_index("subject_id")["galaxy_id"].equals(subjects.set_index("subject_id")["galaxy_id"].sort_index())
    # galaxies split 70/20/10
    n_gal = s.groupby("split")["galaxy_id"].nunique()
    assert (n_gal["test"], n_gal["val"], n_gal["train"]) == (30, 60, 210)
    # the nested order brings a galaxy's training subjects together, and only training subjects
    order = nested_order(s, seed=seed)
    assert set(order) == set(s.loc[s["split"] == "train", "subject_id"])
    gal = s.set_index("subject_id")["galaxy_id"][order].to_numpy()
    runs = gal[np.r_[True, gal[1:] != gal[:-1]]]
    assert len(runs) == len(set(runs))  # each galaxy is one run of the order


def test_grouped_splits_stay_stratified():
    subjects, _ = grouped(1000, seed=1)
    s = make_splits(subjects, FRACTIONS, seed=0)
    share = s.groupby("split")["stratum"].apply(lambda x: (x == "no-1").mean())
    assert 0.2 < share.mean() < 0.6 and share.max() - share.min() < 0.06
    frac = s["split"].value_counts(normalize=True)  # subject shares follow the galaxy shares
    assert abs(frac["train"] - 0.7) < 0.03 and abs(frac["val"] - 0.2) < 0.03 and abs(frac["test"] - 0.1) < 0.02
    # the nested prefixes keep the mix too
    order = nested_order(s, seed=1)
    key = s.set_index("subject_id")["stratum"]
    assert abs((key[order[:200]] == "no-1").mean() - (key[order] == "no-1").mean()) < 0.05


def test_one_subject_per_galaxy_is_the_old_split():
    """Without galaxy ids (or with one subject per galaxy) the split is the subject split."""
    subjects, _ = fake(300)
    a = make_splits(subjects, FRACTIONS, seed=3)
    b = make_splits(subjects.assign(galaxy_id=subjects["subject_id"].astype(str)), FRACTIONS, seed=3)
    assert (a["split"] == b["split"]).all() and (a["galaxy_id"] == a["subject_id"]).all()
    np.testing.assert_array_equal(nested_order(a, 1), nested_order(b, 1))


def test_empty_galaxy_ids_are_galaxies_of_their_own():
    subjects, _ = fake(100)
    subjects["galaxy_id"] = ["G"] * 3 + [None, np.nan, ""] * 2 + [f"H{i}" for i in range(91)]
    s = make_splits(subjects, FRACTIONS, seed=0)
    assert s.loc[s["galaxy_id"] == "G", "split"].nunique() == 1
    empty = s["subject_id"].isin(subjects["subject_id"].iloc[3:9])
    assert (s.loc[empty, "galaxy_id"] == s.loc[empty, "subject_id"]).all()  # galaxy_id = subject_id
    assert s.groupby("split")["galaxy_id"].nunique().sum() == 1 + 6 + 91


def split_inputs(n=200, seed=0):
    subjects, boxes = grouped(n, seed)
    manifest = pd.DataFrame({"subject_id": subjects["subject_id"], "galaxy_id": subjects["galaxy_id"],
                             "png": [f"{i}.png" for i in subjects["subject_id"]], "width": 8, "height": 8})
    return subjects.drop(columns="galaxy_id"), boxes, manifest


def test_gold_and_injected_subjects_are_never_detection_labels(tmp_path):
    from PIL import Image

    from clumpfinder.labels.splits import split_subjects
    from clumpfinder.detection.pretrain import pretraining_pool

    subjects, boxes, manifest = split_inputs()
    ids = subjects["subject_id"].to_numpy()
    gold, injected, no_image = ids[:20], ids[15:35], ids[-5:]  # five both gold and injected
    table, report = split_subjects(subjects, manifest[~manifest["subject_id"].isin(no_image)], FRACTIONS, 0,
                                   gold=gold, injected=injected, manifest_file="m.csv")
    by = table.set_index("subject_id")["split"]
    assert (by[gold] == "gold").all() and (by[ids[20:35]] == "injected").all()
    assert not set(no_image) & set(table["subject_id"])
    detect = table[table["split"].isin(["train", "val", "test"])]
    assert not set(detect["subject_id"]) & (set(gold) | set(injected))
    assert (detect.groupby("galaxy_id")["split"].nunique() == 1).all()
    assert table.loc[table["split"] == "train", "train_rank"].notna().all()
    assert table.loc[table["split"] != "train", "train_rank"].isna().all()
    assert report["gold_subjects_excluded"] == 20 and report["injected_subjects"] == 15
    assert report["subjects_without_image"] == 5 and report["gold_subjects_listed"] == 20
    assert sum(report["subjects"].values()) == len(ids) - 40 == len(detect)
    assert report["galaxies"] == detect.groupby("split")["galaxy_id"].nunique().to_dict()
    several = detect.groupby("galaxy_id").size()
    assert report["galaxies_with_several_subjects"] == (several > 1).sum() > 0
    assert report["subjects_in_galaxies_with_several_subjects"] == several[several > 1].sum()
    assert report["grouping"] == "manifest column galaxy_id" and report["subjects_without_galaxy_id"] == 0
    # a real subject may share its galaxy with an excluded one, in any split (counted)
    shared = set(table.loc[table["split"].isin(["gold", "injected"]), "galaxy_id"])
    assert report["galaxies_shared_with_excluded_subjects"] == {
        s: len(set(detect.loc[detect["split"] == s, "galaxy_id"]) & shared) for s in ("train", "val", "test")}
    # nested subsets and COCO files take their subjects from the train/val/test rows only
    order = table[table["split"] == "train"].sort_values("train_rank")["subject_id"]
    assert not set(order) & (set(gold) | set(injected))
    images = manifest.rename(columns={"png": "file_name"})
    coco = coco_dataset(images[images["subject_id"].isin(detect["subject_id"])], boxes, "all splits")
    assert not {im["id"] for im in coco["images"]} & (set(gold) | set(injected))
    # the pretraining pools select train and val: no gold or injected subject
    for sid in manifest["subject_id"]:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{sid}.png")
    labels = pd.DataFrame({"subject_id": ids, "v": 1.0})
    _, _, pool = pretraining_pool(manifest, table, ["train", "val"], labels, ["v"], tmp_path)
    assert pool["pool"] == report["subjects"]["train"] + report["subjects"]["val"]


def test_missing_grouping_column_names_file_and_column():
    from clumpfinder.labels.splits import split_subjects

    subjects, _, manifest = split_inputs(60)
    bare = manifest.drop(columns="galaxy_id")
    with pytest.raises(ValueError, match=r"results/survey/manifest.csv: .*no column 'galaxy_id' \(labels.group_by\)"):
        split_subjects(subjects, bare, FRACTIONS, 0, manifest_file="results/survey/manifest.csv")
    with pytest.raises(ValueError, match="no column 'dr8objid'"):
        split_subjects(subjects, manifest, FRACTIONS, 0, group_by="dr8objid")
    # a simulated survey has one subject per galaxy; group_by null: every subject its own galaxy
    for kw in ({"one_subject_per_galaxy_without_column": True}, {"group_by": None}):
        table, report = split_subjects(subjects, bare, FRACTIONS, 0, **kw)
        assert (table["galaxy_id"] == table["subject_id"]).all() and report["galaxies_with_several_subjects"] == 0
    table, report = split_subjects(subjects, manifest.assign(galaxy_id=np.nan), FRACTIONS, 0)
    assert report["subjects_without_galaxy_id"] == len(subjects) and "galaxy of its own" in report["note"]
    with pytest.raises(ValueError, match=f"no subject is left.*{len(subjects)} gold"):
        split_subjects(subjects, manifest, FRACTIONS, 0, gold=subjects["subject_id"])


# ------------------------------------------------------------------ unreadable or incomplete tables


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"cannot read the label box table"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00", r"cannot read the label box table"),
        (b"subject_id,x1,y1,x2\n1,0,0,1\n", r"lacks column\(s\) y2, category"),
        (b'subject_id,x1\n1,"unterminated\n', r"cannot read the label box table"),
        (b"subject_id,x1,y1,x2,y2,category\n1,0,0,1,1,clump\nabc,0,0,1,1,clump\n",
         r"line 3: column subject_id of the label box table must be an integer, got 'abc'"),
    ],
)
def test_bad_label_table_names_file_and_column(tmp_path, content, message):
    from clumpfinder.tables import read_table

    path = tmp_path / "boxes.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"boxes.csv: .*{message}"):
        read_table(path, "label box table", ["subject_id", "x1", "y1", "x2", "y2", "category"])


def test_label_tables_the_split_reads_name_what_they_lack(tmp_path):
    from clumpfinder.labels.coco import BOXES_NEEDS, SUBJECTS_NEEDS
    from clumpfinder.tables import read_table

    subjects, boxes = fake(10)
    subjects.drop(columns="swap_prob").to_csv(tmp_path / "subjects.csv", index=False)
    with pytest.raises(ValueError, match=r"subjects.csv: the labelled subject table lacks column\(s\) width, height, "
                                         r"swap_prob \(columns are subject_id, n_classifications, n_clicks\)"):
        read_table(tmp_path / "subjects.csv", "labelled subject table", SUBJECTS_NEEDS)
    boxes.to_csv(tmp_path / "boxes.csv", index=False)  # the clustering attributes are missing
    with pytest.raises(ValueError, match=r"boxes.csv: .*lacks column\(s\) n_votes, odd_fraction"):
        read_table(tmp_path / "boxes.csv", "label box table", BOXES_NEEDS)
    with pytest.raises(ValueError, match="nowhere.csv: cannot read"):
        read_table(tmp_path / "nowhere.csv", "label box table")


def test_unreadable_gold_table_names_the_file(tmp_path):
    from clumpfinder.tables import read_gold

    path = tmp_path / "gold.csv"
    path.write_bytes(b"\xff\xfe\x00\x01\x02garbage")
    with pytest.raises(ValueError, match="gold.csv: cannot read the gold subject table"):
        read_gold(path)
    path.write_text("subject_id,has_clumps\n1,1\nx,0\n")
    with pytest.raises(ValueError, match="gold.csv: line 3: column subject_id .* must be an integer"):
        read_gold(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_gold(tmp_path)  # a directory
