"""Training labels: COCO JSON of the consensus (or catalogue, or simulated truth) boxes, nested
training subsets, and the vocabulary the split uses (:mod:`clumpfinder.labels.splits` draws the split).

Splits are stratified on what the volunteers did with each subject (SWAP's verdict and clicks per
classification, which do not depend on the consensus method) with a fixed seed. They are drawn per
*galaxy*: Clump Scout showed some galaxies in several subjects, and every subject of one galaxy goes
to the same split, so a test galaxy was never seen in training. Subjects of known truth (SWAP's gold
subjects, and real subjects with synthetic clumps injected) are kept out of the splits (see
:func:`split_subjects`). The training pool is put in a fixed *nested* order, stratified as well and
galaxy by galaxy: the subset of size n is the first n subjects of that order, so it lies inside
every larger subset and has about the pool's mix of strata.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from clumpfinder.boxes import crop_window, square_boxes
from clumpfinder.data.kinds import FIELD, STAR_FORMING

CATEGORIES = [
    {"id": 1, "name": "clump", "supercategory": "clump"},
    {"id": 2, "name": "odd_clump", "supercategory": "clump"},
]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}
SPLITS = ("train", "val", "test")
#: split values (in splits.csv) of subjects kept out of the detection labels
EXCLUDED = ("gold", "injected")
#: columns the split reads from each of its tables
MANIFEST_NEEDS = ("subject_id", "png", "width", "height")
SUBJECTS_NEEDS = ("subject_id", "width", "height", "swap_prob", "n_clicks", "n_classifications")
BOXES_NEEDS = ("subject_id", "x1", "y1", "x2", "y2", "category", "n_votes", "odd_fraction", "false_pos_prob",
               "inaccurate_prob")
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
        try:
            offset[sid] = crop_window(w, h, crop)
        except ValueError:
            raise ValueError(f"labels.crop {crop} is larger than image {sid} ({w}x{h} px)") from None
        if crop is not None:
            entry.update(width=crop, height=crop, crop=list(offset[sid][:2]))
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


def truth_boxes(manifest: pd.DataFrame, truth: pd.DataFrame, box_scale: float, min_flux_fraction: float,
                ignore_min_flux_fraction: float) -> pd.DataFrame:
    """Boxes around the simulated objects that count, sized like the consensus boxes (box_scale x FWHM).

    What counts is decided by flux fraction (g-band object/galaxy), whatever the simulator called
    the object: a star-forming region (giant clump or knot) of at least ``min_flux_fraction`` is a
    clump to find; one between ``ignore_min_flux_fraction`` and that is marked ``iscrowd=1``, so
    COCO evaluation ignores it (a detection on it is neither a hit nor a false positive: near the
    threshold the definition is uncertain); fainter knots are not clumps and get no box (a
    detection on one is a false positive). Odd objects always count. Field sources (stars and
    galaxies beside the galaxy, down to the sky's faintest) are marked ``iscrowd=1``: not the
    galaxy's, so neither a clump to find nor a false positive when detected.
    """
    if not 0 <= ignore_min_flux_fraction <= min_flux_fraction:
        raise ValueError(f"evaluation: truth_ignore_min_flux_fraction ({ignore_min_flux_fraction}) must lie in "
                         f"[0, truth_min_flux_fraction ({min_flux_fraction})]")
    star_forming = truth["kind"].isin(STAR_FORMING)  # giant clumps and knots alike
    truth = truth[~star_forming | (truth["flux_fraction_g"] >= ignore_min_flux_fraction)]
    m = manifest.set_index("subject_id")
    side = truth["subject_id"].map(m["psf_fwhm_pixels"]) * box_scale
    w = truth["subject_id"].map(m["width"])
    h = truth["subject_id"].map(m["height"])
    out = pd.DataFrame(
        {
            "subject_id": truth["subject_id"],
            **square_boxes(truth["x"], truth["y"], side, w, h),
            "category": np.where(truth["kind"].isin(STAR_FORMING), "clump", "odd_clump"),
            "iscrowd": ((truth["kind"].isin(STAR_FORMING) & (truth["flux_fraction_g"] < min_flux_fraction))
                        | (truth["kind"] == FIELD)).astype(int),
            "flux_fraction_g": truth["flux_fraction_g"],
        }
    )
    return out.reset_index(drop=True)
