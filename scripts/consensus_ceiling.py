"""The label ceiling: the consensus boxes of the test galaxies scored against the simulated truth,
as if they were a detector's predictions (what a detector trained on such labels can at most learn)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.scoring.evaluate import EvalSpec, evaluate_reference, labels_as_results  # noqa: E402
from clumpfinder.io import read_json, setup_logging, write_json  # noqa: E402

log = setup_logging(snakemake.log[0])
ev = EvalSpec.from_config(snakemake.params.evaluation)
test = read_json(snakemake.input.test)
results = labels_as_results(test)
truth = evaluate_reference(read_json(snakemake.input.truth), results, ev, 1.0, flux_field="flux_fraction_g")
log.info("consensus vs truth on %d test galaxies: completeness %.3f purity %.3f F1 %.3f", len(test["images"]),
         truth["merged"]["completeness"], truth["merged"]["purity"], truth["merged"]["f1"])
write_json({"iou": ev.iou, "score": 1.0, "threshold": {"score": 1.0, "source": "every consensus box (score 1)"},
            "n_images": len(test["images"]), "n_predictions": len(results), "references": {"truth": truth}},
           snakemake.output.metrics)
