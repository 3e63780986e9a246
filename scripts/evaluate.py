"""Predict on the test split and score against the consensus labels (and the simulated truth)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import torch  # noqa: E402

from clumpfinder.evaluate import evaluate_predictions, predict  # noqa: E402
from clumpfinder.io import read_json, setup_logging, write_json  # noqa: E402
from clumpfinder.train import load_model, pick_device  # noqa: E402

log = setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
p = snakemake.params
test = read_json(snakemake.input.test)
model, detector = load_model(snakemake.input.model, pick_device())
predictions = predict(model, test, snakemake.input.images, agnostic_nms=detector.class_agnostic_nms)
references = {"consensus": test}
if "truth" in snakemake.input.keys():
    references["truth"] = read_json(snakemake.input.truth)
metrics = {"iou": p.iou, "score": p.score, "n_images": len(test["images"]), "n_predictions": len(predictions),
           "references": {name: evaluate_predictions(gt, predictions, p.iou, p.score)
                          for name, gt in references.items()}}
write_json(predictions, snakemake.output.predictions, indent=None)
write_json(metrics, snakemake.output.metrics)
for name, m in metrics["references"].items():
    log.info("vs %s: AP50 %.3f completeness %.3f purity %.3f", name, m["AP50"], m["merged"]["completeness"],
             m["merged"]["purity"])
