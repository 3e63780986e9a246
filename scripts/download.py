"""Cutouts (FITS, cached) and colour PNGs of every subject from a hips2fits service."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.data.download import DownloadSpec, download_cutouts  # noqa: E402
from clumpfinder.io import setup_logging, write_csv, write_json  # noqa: E402

log = setup_logging(snakemake.log[0])
cfg = snakemake.params.spec
spec = DownloadSpec.from_config(cfg)
subjects = pd.read_csv(snakemake.input.subjects)
out = snakemake.output
manifest, failures, report = download_cutouts(subjects, spec, cfg["cache"], out.png,
                                             processes=snakemake.threads)
write_csv(failures, out.failures)
write_json(report, out.report)
write_csv(manifest, out.manifest)
log.info("%s", report)
if manifest.empty:
    raise RuntimeError(f"no cutout could be fetched from {spec.server} (see {out.failures})")
