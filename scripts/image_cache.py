"""Decode the images of one split (cut to their crop windows) into the cache the detector jobs read."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.io import read_json, setup_logging  # noqa: E402
from clumpfinder.labels.cache import write_image_cache  # noqa: E402

log = setup_logging(snakemake.log[0])
write_image_cache(read_json(snakemake.input.labels), snakemake.input.images, snakemake.output.data,
                  snakemake.output.index)
