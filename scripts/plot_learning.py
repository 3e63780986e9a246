"""Learning curves: validation F1 and training loss against optimiser steps for every model."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.report.figures import plot_learning_curves  # noqa: E402
from clumpfinder.io import setup_logging  # noqa: E402
from clumpfinder.labels.coco import pool_size  # noqa: E402
from clumpfinder.report.summary import sweep_runs  # noqa: E402

log = setup_logging(snakemake.log[0])
p = snakemake.params
runs = sweep_runs(p.backbones, p.n_train, p.seeds, snakemake.input.train,
                  full=pool_size(pd.read_csv(snakemake.input.splits)))
plot_learning_curves(runs, snakemake.output.png, snakemake.output.pdf)
log.info("plotted the learning curves of %d models", len(runs))
