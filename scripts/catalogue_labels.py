"""Boxes from the catalogued clumps, projected through each cutout's WCS (catalogue route)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.data.catalogue import catalogue_labels  # noqa: E402
from clumpfinder.io import setup_logging, write_csv, write_json  # noqa: E402

log = setup_logging(snakemake.log[0])
p = snakemake.params
boxes, subjects, report = catalogue_labels(pd.read_csv(snakemake.input.clumps), pd.read_csv(snakemake.input.manifest),
                                           p.box_scale, p.min_flux_ratio)
write_csv(boxes, snakemake.output.boxes)
write_csv(subjects, snakemake.output.subjects)
write_json(report, snakemake.output.report)
log.info("%s", report)
