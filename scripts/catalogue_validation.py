"""The catalogue of simulated galaxies against their truth: positions, g-band magnitudes of the
giant clumps, completeness and purity of the 8 % flag."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.clumps.validate import validate  # noqa: E402
from clumpfinder.io import setup_logging, write_json  # noqa: E402

log = setup_logging(snakemake.log[0])
inp = snakemake.input
clumps = pd.read_csv(inp.clumps)
galaxies = pd.read_csv(inp.galaxies)
result = validate(clumps, galaxies, pd.read_csv(inp.truth), match_fwhm=snakemake.params.match_fwhm)
result["split"] = snakemake.params.split
write_json(result, snakemake.output[0])
log.info("%s", result)
