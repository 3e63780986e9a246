"""The clump catalogue at a glance (and, on simulated data, its validation against the truth)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.io import read_json, setup_logging  # noqa: E402
from clumpfinder.report.figures import plot_catalogue  # noqa: E402

log = setup_logging(snakemake.log[0])
inp = snakemake.input
validation = read_json(inp.validation) if "validation" in inp.keys() else None
plot_catalogue(pd.read_csv(inp.clumps), pd.read_csv(inp.galaxies), inp.overlays, snakemake.output.png,
               snakemake.output.pdf, flags=snakemake.params.flags, validation=validation)
log.info("plotted the catalogue summary")
