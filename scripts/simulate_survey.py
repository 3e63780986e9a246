"""Render the simulated survey: images (PNG + FITS), subject manifest and truth table."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.io import setup_logging, write_csv  # noqa: E402
from clumpfinder.simulate import SurveySpec, simulate_survey  # noqa: E402

log = setup_logging(snakemake.log[0])
spec = SurveySpec.from_config(snakemake.params.spec)
out = snakemake.output
manifest, truth = simulate_survey(spec, out.png, out.fits, workers=snakemake.threads)
write_csv(truth, out.truth)
write_csv(manifest, out.manifest)
log.info("%d subjects, %d clumps, %d odd objects", len(manifest), (truth["kind"] == "clump").sum(),
         (truth["kind"] == "odd").sum())
