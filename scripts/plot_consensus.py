"""Diagnostics of the volunteer consensus: volunteer skills and SWAP posteriors."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.report.figures import plot_consensus  # noqa: E402
from clumpfinder.io import setup_logging  # noqa: E402

log = setup_logging(snakemake.log[0])
true = pd.read_csv(snakemake.input.true_volunteers) if "true_volunteers" in snakemake.input.keys() else None
volunteers = pd.read_csv(snakemake.input.volunteers)
subjects = pd.read_csv(snakemake.input.subjects)
plot_consensus(volunteers, subjects, snakemake.output.png, snakemake.output.pdf, true_volunteers=true)
log.info("consensus diagnostics of %d volunteers and %d subjects", len(volunteers), len(subjects))
