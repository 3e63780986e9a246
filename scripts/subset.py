"""Nested training subset: the first n subjects of the fixed training order."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.io import read_json, setup_logging, write_json  # noqa: E402
from clumpfinder.labels.coco import subset  # noqa: E402

log = setup_logging(snakemake.log[0])
splits = pd.read_csv(snakemake.input.splits)
pool = splits[splits["split"] == "train"].sort_values("train_rank")
n = len(pool) if snakemake.wildcards.n_train == "full" else int(snakemake.wildcards.n_train)
if n > len(pool):
    raise ValueError(
        f"labels.n_train asks for {n} training images but the training pool has only {len(pool)}; "
        "lower labels.n_train, use 'full', or add galaxies"
    )
coco = subset(read_json(snakemake.input.train), pool["subject_id"].iloc[:n], f"training subset n={n}")
write_json(coco, snakemake.output[0])
log.info("n=%d: %d boxes", n, len(coco["annotations"]))
