"""Predict on the validation and test splits; choose the headline score threshold on the
validation split; score the test split against the consensus labels (and the simulated truth)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import torch  # noqa: E402

from clumpfinder.compute import ComputeSpec, autocast_dtype, job_devices, job_gpu_count  # noqa: E402
from clumpfinder.detection.detector import load_model, predict  # noqa: E402
from clumpfinder.labels.cache import ImageCache  # noqa: E402
from clumpfinder.scoring.evaluate import EvalSpec, choose_score, evaluate_reference  # noqa: E402
from clumpfinder.io import read_json, setup_logging, write_json  # noqa: E402

log = setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
spec = EvalSpec.from_config(snakemake.params.spec)
inp = snakemake.input
test, val = read_json(inp.test), read_json(inp.val)
compute = ComputeSpec.from_config({**snakemake.config["compute"], **snakemake.params.compute})


with job_devices(job_gpu_count(snakemake.resources), compute, "evaluation") as devices:
    model, detector = load_model(inp.model, devices[0], autocast_dtype(compute.precision, devices[0]))
    nms = detector.class_agnostic_nms
    predictions = predict(model, test, ImageCache(inp.test_cache, inp.test_cache_index), agnostic_nms=nms)
    threshold = choose_score(val, predict(model, val, ImageCache(inp.val_cache, inp.val_cache_index),
                                          agnostic_nms=nms), spec)
score = threshold["score"]
log.info("headline score threshold %.2f (%s)", score, threshold["source"])
references = {"consensus": evaluate_reference(test, predictions, spec, score)}
if "truth" in snakemake.input.keys():
    references["truth"] = evaluate_reference(read_json(snakemake.input.truth), predictions, spec, score,
                                             flux_field="flux_fraction_g")
metrics = {"iou": spec.iou, "score": score, "threshold": threshold, "n_images": len(test["images"]),
           "n_predictions": len(predictions), "references": references}
write_json(predictions, snakemake.output.predictions, indent=None)
write_json(metrics, snakemake.output.metrics)
for name, m in references.items():
    ci = m["merged"]["ci"]
    log.info("vs %s: AP50 %.3f completeness %.3f [%.3f, %.3f] purity %.3f [%.3f, %.3f]", name, m["AP50"],
             m["merged"]["completeness"], ci["completeness"]["low"], ci["completeness"]["high"],
             m["merged"]["purity"], ci["purity"]["low"], ci["purity"]["high"])
