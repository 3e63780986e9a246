"""Galaxy pretraining of a backbone: morphology votes (pretrain_morphology) or the consensus
clumpy / not-clumpy label (pretrain_clumpy)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.detector import BackboneSpec  # noqa: E402
from clumpfinder.io import setup_logging, write_json  # noqa: E402
from clumpfinder.morphology import read_vote_catalogue, vote_columns  # noqa: E402
from clumpfinder.pretrain import (  # noqa: E402
    CLUMPY_QUESTIONS,
    PretrainSpec,
    clumpy_labels,
    pretrain_encoder,
    pretraining_pool,
    save_encoder,
)

log = setup_logging(snakemake.log[0])
p = snakemake.params
if snakemake.rule == "pretrain_clumpy":
    labels, questions = clumpy_labels(pd.read_csv(snakemake.input.votes)), CLUMPY_QUESTIONS
else:
    labels, questions = read_vote_catalogue(snakemake.input.votes)
images, counts, pool = pretraining_pool(pd.read_csv(snakemake.input.manifest), pd.read_csv(snakemake.input.splits),
                                        p.pool, labels, vote_columns(questions), snakemake.input.images)
log.info("pool %s: %d galaxies, %d used, %d without labels", "+".join(p.pool), pool["pool"], pool["used"],
         pool["without_labels"])
encoder, metrics = pretrain_encoder(images, counts, questions, BackboneSpec(**p.backbone),
                                    PretrainSpec.from_config(p.spec), threads=snakemake.threads)
metrics["pool"] = pool
save_encoder(encoder, snakemake.output.encoder)
write_json(metrics, snakemake.output.metrics)
log.info("validation vote-fraction RMSE %s (pool-mean baseline %s)", metrics.get("val_fraction_rmse"),
         metrics.get("val_fraction_rmse_mean_baseline"))
