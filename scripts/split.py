"""Train/val/test split by galaxy (gold and injected subjects left out) and COCO labels of the boxes."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.io import setup_logging, write_csv, write_json  # noqa: E402
from clumpfinder.labels.coco import BOXES_NEEDS, MANIFEST_NEEDS, SPLITS, SUBJECTS_NEEDS, coco_dataset  # noqa: E402
from clumpfinder.labels.splits import split_subjects  # noqa: E402
from clumpfinder.data.subjects import injected_subjects  # noqa: E402
from clumpfinder.tables import read_gold, read_table  # noqa: E402

log = setup_logging(snakemake.log[0])
inp, p = snakemake.input, snakemake.params
manifest = read_table(inp.manifest, "survey manifest", MANIFEST_NEEDS, dtype={p.group_by: str} if p.group_by else None)
boxes = read_table(inp.boxes, "label box table", BOXES_NEEDS)
subjects = read_table(inp.subjects, "labelled subject table", SUBJECTS_NEEDS)
gold = read_gold(inp.gold).index if "gold" in inp.keys() else ()
injected, origin = (), {}
if "subject_list" in inp.keys():  # real data: subjects with synthetic clumps say origin 'sim'
    injected, origin = injected_subjects(read_table(inp.subject_list, "subject list", ["subject_id"]))
splits, report = split_subjects(subjects, manifest, p.fractions, p.seed, group_by=p.group_by, gold=gold,
                                injected=injected, manifest_file=inp.manifest,
                                one_subject_per_galaxy_without_column=p.simulated)
report["origin"] = origin
if report["subjects_without_image"]:  # e.g. cutouts that could not be downloaded (download_failures.csv)
    log.warning("%d labelled subjects have no image and are left out", report["subjects_without_image"])
log.info("left out of the detection labels: %d gold and %d injected-clump subjects", report["gold_subjects_excluded"],
         report["injected_subjects"])
log.info("galaxies by %s; %s", report["grouping"], report.get("note", "every subject has a galaxy id"))
if origin.get("note"):
    log.warning("origin: %s", origin["note"])
images = manifest.rename(columns={"png": "file_name"}).merge(
    subjects[["subject_id", "width", "height"]].rename(columns={"width": "click_width", "height": "click_height"}),
    on="subject_id",
)
for name in SPLITS:
    ids = splits.loc[splits["split"] == name, "subject_id"]
    coco = coco_dataset(images[images["subject_id"].isin(ids)], boxes, f"consensus labels, {name} split",
                        extra_fields=("n_votes", "odd_fraction", "false_pos_prob", "inaccurate_prob"), crop=p.crop)
    write_json(coco, snakemake.output[name])
    log.info("%s: %d images of %d galaxies, %d boxes (%s boxes outside the crop)", name, len(coco["images"]),
             report["galaxies"][name], len(coco["annotations"]), coco["info"].get("boxes_outside_crop", "no"))
write_csv(splits, snakemake.output.splits)
write_json(report, snakemake.output.report)
