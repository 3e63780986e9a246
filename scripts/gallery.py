"""A gallery of test galaxies with the consensus, the truth and every backbone's detections."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.report.figures import pick_gallery, plot_gallery  # noqa: E402
from clumpfinder.io import read_json, setup_logging  # noqa: E402

log = setup_logging(snakemake.log[0])
p = snakemake.params
test = read_json(snakemake.input.test)
truth = read_json(snakemake.input.truth) if "truth" in snakemake.input.keys() else None
predictions = {b: read_json(f) for b, f in zip(p.backbones, snakemake.input.predictions)}
scores = {b: read_json(f)["score"] for b, f in zip(p.backbones, snakemake.input.metrics)}
ids = pick_gallery([im["id"] for im in test["images"]], p.n_galaxies, p.seed)
plot_gallery(test, snakemake.input.images, predictions, scores, ids, snakemake.output.png, snakemake.output.pdf,
             truth=truth, title=f"Trained on n = {snakemake.wildcards.n_train} images (training seed {p.model_seed}): "
                   f"detections on {len(ids)} test galaxies")
log.info("gallery of test galaxies %s", ids)
