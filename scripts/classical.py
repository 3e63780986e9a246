"""The classical clump finder baseline: choose its median-filter size and score threshold on the
validation split, predict on the test split and score it like a detector."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.scoring import classical  # noqa: E402
from clumpfinder.scoring.evaluate import EvalSpec, evaluate_reference  # noqa: E402
from clumpfinder.io import read_json, setup_logging, write_json  # noqa: E402
from clumpfinder.imaging import read_image  # noqa: E402

log = setup_logging(snakemake.log[0])
p = snakemake.params
spec, ev = classical.ClassicalSpec.from_config(p.spec), EvalSpec.from_config(p.evaluation)
subjects = pd.read_csv(snakemake.input.subjects)
val, test = read_json(snakemake.input.val), read_json(snakemake.input.test)


def images_of(coco):
    return [read_image(snakemake.input.images, im) for im in coco["images"]]


choice = classical.choose_filter(val, images_of(val), classical.box_sides(val, subjects), spec, p.box_scale,
                                 ev.iou, ev.scores)
log.info("median filter %.1f x FWHM, score >= %.2f (validation F1 %.3f)", choice["filter_fwhm"], choice["score"],
         next(t["f1"] for t in choice["trials"] if t["filter_fwhm"] == choice["filter_fwhm"]))
predictions = classical.predict(images_of(test), [im["id"] for im in test["images"]],
                                classical.box_sides(test, subjects), choice["filter_fwhm"], spec, p.box_scale)
score = choice["score"]
references = {"consensus": evaluate_reference(test, predictions, ev, score)}
if "truth" in snakemake.input.keys():
    references["truth"] = evaluate_reference(read_json(snakemake.input.truth), predictions, ev, score,
                                             flux_field="flux_fraction_g")
for name, m in references.items():
    log.info("vs %s: completeness %.3f purity %.3f F1 %.3f", name, m["merged"]["completeness"],
             m["merged"]["purity"], m["merged"]["f1"])
write_json(predictions, snakemake.output.predictions, indent=None)
write_json({"iou": ev.iou, "score": score, "threshold": choice, "n_images": len(test["images"]),
            "n_predictions": len(predictions), "settings": p.spec, "references": references},
           snakemake.output.metrics)
