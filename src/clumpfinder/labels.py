"""Training labels: stratified train/val/test splits, nested training subsets, COCO JSON.

Splits are stratified on what the volunteers did with each subject (SWAP's verdict and clicks per
classification, which do not depend on the consensus method) with a fixed seed. The training pool is put in a
fixed *nested* order, stratified as well: the subset of size n is the first n subjects of that
order, so it lies inside every larger subset and has about the pool's mix of strata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

CATEGORIES = [
    {"id": 1, "name": "clump", "supercategory": "clump"},
    {"id": 2, "name": "odd_clump", "supercategory": "clump"},
]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}
SPLITS = ("train", "val", "test")


def strata(subjects: pd.DataFrame, min_count: int = 4) -> pd.Series:
    """Stratum label per subject from what the volunteers did, whatever the consensus method:
    '<SWAP verdict>-<clicks per classification bin>'; rare strata merged.

    Strata do not depend on ``consensus.method``, so every method gets the same train/val/test
    galaxies and the same nested subsets, and their detectors can be compared on one test set.
    """
    p = subjects["swap_prob"].to_numpy()
    verdict = np.select([p <= 0.1, p >= 0.9], ["no", "yes"], "unsure")
    rate = subjects["n_clicks"].to_numpy() / np.maximum(subjects["n_classifications"].to_numpy(), 1)
    clicks = np.digitize(rate, [1e-9, 0.5, 1.5])  # none, < 0.5, 0.5-1.5, more per classification
    key = pd.Series(verdict, dtype=object) + "-" + pd.Series(clicks).astype(str)
    counts = key.value_counts()
    rare = counts[counts < min_count].index
    key = key.where(~key.isin(rare), "rare")
    if (key == "rare").sum() < min_count and (key == "rare").any():
        key = key.where(key != "rare", counts.index[0])  # fold into the largest stratum
    return pd.Series(key.to_numpy(), index=subjects["subject_id"].to_numpy(), name="stratum")


def make_splits(subjects: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.DataFrame:
    """Assign each subject to train/val/test; returns subject_id, split, stratum. ``subjects``
    needs swap_prob, n_clicks and n_classifications (the consensus subject table)."""
    total = sum(fractions[s] for s in SPLITS)
    if not np.isclose(total, 1.0):
        raise ValueError(f"labels.split_fractions must sum to 1, got {total:g}")
    key = strata(subjects)
    ids = key.index.to_numpy()
    n = len(ids)
    n_test = int(round(fractions["test"] * n))
    n_val = int(round(fractions["val"] * n))
    if min(n_test, n_val, n - n_test - n_val) < 1:
        raise ValueError(f"labels: {n} subjects are too few for split fractions {fractions}")

    def split(x, y, size, rs):
        try:
            return train_test_split(x, y, test_size=size, random_state=rs, stratify=y)
        except ValueError:  # a stratum too small for this split size: fall back to random
            return train_test_split(x, y, test_size=size, random_state=rs)

    rest, test, key_rest, _ = split(ids, key.to_numpy(), n_test, seed)
    train, val, _, _ = split(rest, key_rest, n_val, seed + 1)
    out = pd.DataFrame(
        {"subject_id": np.concatenate([train, val, test]),
         "split": ["train"] * len(train) + ["val"] * len(val) + ["test"] * len(test)}
    )
    out["stratum"] = out["subject_id"].map(key)
    return out.sort_values("subject_id").reset_index(drop=True)


def nested_order(splits: pd.DataFrame, seed: int) -> np.ndarray:
    """Training subject ids in nested-subset order (stratified prefixes)."""
    rng = np.random.default_rng(seed)
    train = splits[splits["split"] == "train"].sort_values("subject_id")
    keys = np.empty(len(train))
    for _, idx in train.groupby("stratum").indices.items():
        perm = rng.permutation(len(idx))
        keys[idx[perm]] = (np.arange(len(idx)) + rng.uniform(size=len(idx))) / len(idx)
    return train["subject_id"].to_numpy()[np.argsort(keys, kind="stable")]


def read_image(image_dir: str | Path, image: dict[str, Any]) -> np.ndarray:
    """RGB uint8 array (H, W, 3) of one COCO image entry, cut to its ``crop`` window [x0, y0] when
    it has one; a missing, unreadable or wrongly sized image raises an error naming the file."""
    path = Path(image_dir) / image["file_name"]
    try:
        with Image.open(path) as pil:
            arr = np.asarray(pil.convert("RGB"))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot read image {path} (image id {image['id']}): {err}") from err
    w, h = image["width"], image["height"]
    if "crop" in image:
        x0, y0 = image["crop"]
        if arr.shape[0] < y0 + h or arr.shape[1] < x0 + w:
            raise ValueError(f"image {path} is {arr.shape[1]}x{arr.shape[0]} px, too small for the "
                             f"{w}x{h} px crop at ({x0}, {y0}) in the labels")
        arr = arr[y0:y0 + h, x0:x0 + w]
    elif arr.shape[:2] != (h, w):
        raise ValueError(f"image {path} is {arr.shape[1]}x{arr.shape[0]} px but the labels say {w}x{h}")
    return arr


def pool_size(splits: pd.DataFrame) -> int:
    """Size of the training pool: what training-set size 'full' means."""
    return int((splits["split"] == "train").sum())


def coco_dataset(
    images: pd.DataFrame, boxes: pd.DataFrame, description: str, extra_fields: Iterable[str] = (),
    crop: int | None = None,
) -> dict[str, Any]:
    """COCO detection dataset. ``images``: subject_id, file_name, width, height (+ image scale
    of the click frame: click_width/click_height, optional); ``boxes``: subject_id, x1, y1, x2,
    y2, category (+ iscrowd and ``extra_fields`` kept per annotation).

    ``crop``: the images are the central ``crop`` x ``crop`` pixels of the files (Popp et al. fed
    the detector the central 200 px of the 400 px Clump Scout images): each image entry carries
    its window as ``crop: [x0, y0]``, boxes are moved into the window, clipped to it, and boxes
    whose centre falls outside are left out (counted in ``info['boxes_outside_crop']``).
    """
    imgs = []
    scale: dict[int, tuple[float, float]] = {}
    offset: dict[int, tuple[int, int, int, int]] = {}
    for r in images.itertuples(index=False):
        sid = int(r.subject_id)
        w, h = int(r.width), int(r.height)
        entry = {"id": sid, "file_name": r.file_name, "width": w, "height": h}
        if crop is not None:
            if crop > min(w, h):
                raise ValueError(f"labels.crop {crop} is larger than image {sid} ({w}x{h} px)")
            x0, y0 = (w - crop) // 2, (h - crop) // 2
            entry.update(width=crop, height=crop, crop=[x0, y0])
            offset[sid] = (x0, y0, crop, crop)
        else:
            offset[sid] = (0, 0, w, h)
        imgs.append(entry)
        cw = getattr(r, "click_width", np.nan)
        ch = getattr(r, "click_height", np.nan)
        scale[sid] = (r.width / cw if pd.notna(cw) else 1.0, r.height / ch if pd.notna(ch) else 1.0)
    anns = []
    outside = 0
    sel = boxes[boxes["subject_id"].isin(scale)]
    for b in sel.itertuples(index=False):
        sx, sy = scale[int(b.subject_id)]
        x0, y0, w, h = offset[int(b.subject_id)]
        x1, y1, x2, y2 = b.x1 * sx - x0, b.y1 * sy - y0, b.x2 * sx - x0, b.y2 * sy - y0
        if crop is not None:
            if not (0 <= (x1 + x2) / 2 <= w and 0 <= (y1 + y2) / 2 <= h):
                outside += 1
                continue
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        ann = {
            "id": len(anns) + 1, "image_id": int(b.subject_id), "category_id": CATEGORY_ID[b.category],
            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
            "area": round((x2 - x1) * (y2 - y1), 3), "iscrowd": int(getattr(b, "iscrowd", 0)),
        }
        for f in extra_fields:
            v = getattr(b, f)
            v = v.item() if hasattr(v, "item") else v
            ann[f] = None if isinstance(v, float) and np.isnan(v) else v  # JSON has no NaN
        anns.append(ann)
    info: dict[str, Any] = {"description": description}
    if crop is not None:
        info.update(crop=crop, boxes_outside_crop=outside)
    return {
        "info": info,
        "images": imgs,
        "annotations": anns,
        "categories": CATEGORIES,
    }


def subset(coco: dict[str, Any], image_ids: Iterable[int], description: str) -> dict[str, Any]:
    keep = set(int(i) for i in image_ids)
    missing = keep - {im["id"] for im in coco["images"]}
    if missing:
        raise ValueError(f"{len(missing)} requested images are not in the dataset, e.g. {sorted(missing)[:3]}")
    return {
        "info": {"description": description},
        "images": [im for im in coco["images"] if im["id"] in keep],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
        "categories": coco["categories"],
    }


def square_boxes(x, y, side, width, height) -> dict[str, np.ndarray]:
    """Corners x1, y1, x2, y2 of squares of ``side`` centred on (x, y), clipped to the image."""
    x, y, half = np.asarray(x, float), np.asarray(y, float), np.asarray(side, float) / 2
    return {"x1": np.maximum(x - half, 0.0), "y1": np.maximum(y - half, 0.0),
            "x2": np.minimum(x + half, width), "y2": np.minimum(y + half, height)}


def truth_boxes(manifest: pd.DataFrame, truth: pd.DataFrame, box_scale: float, min_flux_fraction: float) -> pd.DataFrame:
    """Boxes around the simulated objects, sized like the consensus boxes (box_scale x FWHM).

    Clumps fainter than ``min_flux_fraction`` (g-band clump/galaxy) are marked ``iscrowd=1``:
    COCO evaluation then ignores them (a detection on one is neither a hit nor a false positive).
    """
    m = manifest.set_index("subject_id")
    side = truth["subject_id"].map(m["psf_fwhm_pixels"]) * box_scale
    w = truth["subject_id"].map(m["width"])
    h = truth["subject_id"].map(m["height"])
    out = pd.DataFrame(
        {
            "subject_id": truth["subject_id"],
            **square_boxes(truth["x"], truth["y"], side, w, h),
            "category": np.where(truth["kind"] == "odd", "odd_clump", "clump"),
            "iscrowd": ((truth["kind"] == "clump") & (truth["flux_fraction_g"] < min_flux_fraction)).astype(int),
            "flux_fraction_g": truth["flux_fraction_g"],
        }
    )
    return out
