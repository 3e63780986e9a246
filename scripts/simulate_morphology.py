"""Galaxy-Zoo-style morphology vote counts for the simulated pretraining population."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.io import setup_logging, write_csv  # noqa: E402
from clumpfinder.data.morphology import HOST_COLUMNS, VoteSpec, simulate_votes  # noqa: E402
from clumpfinder.data.volunteers import APPEARANCE_COLUMNS, CrowdSpec  # noqa: E402

log = setup_logging(snakemake.log[0])
# only the host's look and the objects' appearance are read: no flux fraction, no class
votes = simulate_votes(pd.read_csv(snakemake.input.manifest, usecols=HOST_COLUMNS),
                       pd.read_csv(snakemake.input.objects, usecols=APPEARANCE_COLUMNS),
                       VoteSpec.from_config(snakemake.params.spec), CrowdSpec.from_config(snakemake.params.crowd))
write_csv(votes, snakemake.output[0], index=False)
log.info("%d galaxies, %d votes on the first question", len(votes),
         int(votes[["smooth_or_featured_smooth", "smooth_or_featured_featured"]].to_numpy().sum()))
