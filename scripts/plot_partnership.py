"""Effort curves of the partnership replay (label F1 and subjects decided vs human classifications)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.io import read_json, setup_logging  # noqa: E402
from clumpfinder.report.figures import plot_partnership  # noqa: E402

log = setup_logging(snakemake.log[0])
curves = pd.read_csv(snakemake.input.curves)
plot_partnership(curves, read_json(snakemake.input.summary), snakemake.output.png, snakemake.output.pdf)
log.info("effort curves of %d points", len(curves))
