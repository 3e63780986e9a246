"""Stratified train/val/test split and COCO labels of the consensus boxes."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.io import setup_logging, write_csv, write_json  # noqa: E402
from clumpfinder.labels import SPLITS, coco_dataset, make_splits, nested_order  # noqa: E402

log = setup_logging(snakemake.log[0])
manifest = pd.read_csv(snakemake.input.manifest)
boxes = pd.read_csv(snakemake.input.boxes)
subjects = pd.read_csv(snakemake.input.subjects)
p = snakemake.params
no_image = ~subjects["subject_id"].isin(manifest["subject_id"])
if no_image.any():  # e.g. cutouts that could not be downloaded (download_failures.csv)
    log.warning("%d labelled subjects have no image and are left out", int(no_image.sum()))
    subjects = subjects[~no_image].reset_index(drop=True)
splits = make_splits(subjects, p.fractions, p.seed)
order = nested_order(splits, p.seed)
splits["train_rank"] = splits["subject_id"].map({sid: k for k, sid in enumerate(order)})
images = manifest.rename(columns={"png": "file_name"}).merge(
    subjects[["subject_id", "width", "height"]].rename(columns={"width": "click_width", "height": "click_height"}),
    on="subject_id",
)
for name in SPLITS:
    ids = splits.loc[splits["split"] == name, "subject_id"]
    coco = coco_dataset(images[images["subject_id"].isin(ids)], boxes, f"consensus labels, {name} split",
                        extra_fields=("n_votes", "odd_fraction", "false_pos_prob", "inaccurate_prob"), crop=p.crop)
    write_json(coco, snakemake.output[name])
    log.info("%s: %d images, %d boxes (%s boxes outside the crop)", name, len(coco["images"]),
             len(coco["annotations"]), coco["info"].get("boxes_outside_crop", "no"))
write_csv(splits, snakemake.output.splits)
