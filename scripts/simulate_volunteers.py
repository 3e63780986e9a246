"""Simulated volunteers classify the survey; writes a Zooniverse classification export."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.io import setup_logging, write_csv  # noqa: E402
from clumpfinder.data.volunteers import CrowdSpec, gold_subjects, simulate_export  # noqa: E402

log = setup_logging(snakemake.log[0])
manifest = pd.read_csv(snakemake.input.manifest)
truth = pd.read_csv(snakemake.input.truth)
spec = CrowdSpec.from_config(snakemake.params.spec)
population = simulate_export(spec, manifest, truth, snakemake.output.export)
write_csv(population, snakemake.output.volunteers)
gold = gold_subjects(spec, manifest, truth)
write_csv(gold, snakemake.output.gold)
log.info("%d gold subjects, %d with clumps", len(gold), int(gold["has_clumps"].sum()))
log.info("%d volunteers classified %d subjects", len(population), len(manifest))
