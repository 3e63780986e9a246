"""Render a simulated population: images (PNG, and FITS when the rule asks for them), subject
manifest and truth table (the detection survey, or the separate pretraining population)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.io import setup_logging, write_csv  # noqa: E402
from clumpfinder.data.simulate import SurveySpec, simulate_survey  # noqa: E402

log = setup_logging(snakemake.log[0])
spec = SurveySpec.from_config(snakemake.params.spec)
out = snakemake.output
manifest, truth = simulate_survey(spec, out.png, getattr(out, "fits", None), workers=snakemake.threads,
                                  first_subject_id=snakemake.params.first_subject_id)
write_csv(truth, out.truth)
write_csv(manifest, out.manifest)
log.info("%d subjects (seed %d, ids from %d): %s", len(manifest), spec.seed, snakemake.params.first_subject_id,
         truth["kind"].value_counts().to_dict())
