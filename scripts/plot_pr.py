"""Precision-recall curves of every model, per training-set size and label set."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.report.figures import plot_pr_curves  # noqa: E402
from clumpfinder.labels.coco import pool_size  # noqa: E402
from clumpfinder.io import setup_logging  # noqa: E402
from clumpfinder.report.summary import sweep_runs  # noqa: E402

log = setup_logging(snakemake.log[0])
p = snakemake.params
runs = sweep_runs(p.backbones, p.n_train, p.seeds, snakemake.input.metrics,
                  full=pool_size(pd.read_csv(snakemake.input.splits)))
plot_pr_curves(runs, p.iou, snakemake.output.png, snakemake.output.pdf)
log.info("plotted %d precision-recall curves", len(runs))
