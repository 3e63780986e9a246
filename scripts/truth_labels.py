"""COCO labels of the simulated truth for the test split."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.io import setup_logging, write_json  # noqa: E402
from clumpfinder.data.kinds import FIELD, STAR_FORMING  # noqa: E402
from clumpfinder.labels.coco import coco_dataset, truth_boxes  # noqa: E402

log = setup_logging(snakemake.log[0])
manifest = pd.read_csv(snakemake.input.manifest)
truth = pd.read_csv(snakemake.input.truth)
splits = pd.read_csv(snakemake.input.splits)
test_ids = splits.loc[splits["split"] == "test", "subject_id"]
boxes = truth_boxes(manifest, truth, snakemake.params.box_scale, snakemake.params.min_flux_fraction,
                    snakemake.params.ignore_min_flux_fraction)
images = manifest[manifest["subject_id"].isin(test_ids)].rename(columns={"png": "file_name"})
coco = coco_dataset(images, boxes, "simulated truth, test split", extra_fields=("flux_fraction_g",),
                    crop=snakemake.params.crop)
write_json(coco, snakemake.output[0])
n_ignored = sum(a["iscrowd"] for a in coco["annotations"])
n_field = int(truth.loc[truth["subject_id"].isin(test_ids), "kind"].eq(FIELD).sum())
log.info("%d images, %d truth boxes (%d ignored: near-threshold clumps and up to %d field sources; %d fainter "
         "knots are not clumps)", len(coco["images"]), len(coco["annotations"]), n_ignored, n_field,
         int((truth["kind"].isin(STAR_FORMING) & (truth["flux_fraction_g"] < snakemake.params.ignore_min_flux_fraction)
              & truth["subject_id"].isin(test_ids)).sum()))
