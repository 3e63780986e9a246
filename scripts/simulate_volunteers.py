"""Simulated volunteers classify the survey; writes a Zooniverse classification export."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.io import setup_logging, write_csv  # noqa: E402
from clumpfinder.volunteers import CrowdSpec, simulate_export  # noqa: E402

log = setup_logging(snakemake.log[0])
manifest = pd.read_csv(snakemake.input.manifest)
truth = pd.read_csv(snakemake.input.truth)
population = simulate_export(CrowdSpec.from_config(snakemake.params.spec), manifest, truth,
                             snakemake.output.export)
write_csv(population, snakemake.output.volunteers)
log.info("%d volunteers classified %d subjects", len(population), len(manifest))
