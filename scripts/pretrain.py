"""Galaxy pretraining of a backbone: morphology votes of the pretraining population
(pretrain_morphology) or the training split's consensus clumpy / not-clumpy label (pretrain_clumpy)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.compute import ComputeSpec, job_devices, job_gpu_count  # noqa: E402
from clumpfinder.detection.detector import BackboneSpec  # noqa: E402
from clumpfinder.io import setup_logging, write_json  # noqa: E402
from clumpfinder.data.morphology import read_vote_catalogue, vote_columns  # noqa: E402
from clumpfinder.detection.pretrain import (  # noqa: E402
    CLUMPY_QUESTIONS,
    PretrainSpec,
    clumpy_labels,
    morphology_pool,
    pretrain_encoder,
    pretraining_pool,
    save_encoder,
)

log = setup_logging(snakemake.log[0])
p = snakemake.params
inp = snakemake.input
if snakemake.rule == "pretrain_clumpy":
    labels, questions = clumpy_labels(pd.read_csv(inp.votes)), CLUMPY_QUESTIONS
    images, counts, pool = pretraining_pool(pd.read_csv(inp.manifest), pd.read_csv(inp.splits), ["train"], labels,
                                            vote_columns(questions), inp.images)
else:
    labels, questions = read_vote_catalogue(inp.votes, required=p.questions)
    images, counts, pool = morphology_pool(pd.read_csv(inp.population), labels, vote_columns(questions),
                                           pd.read_csv(inp.survey), inp.images)
log.info("pretraining pool: %s", pool)
compute = ComputeSpec.from_config({**snakemake.config["compute"], **p.compute})
with job_devices(job_gpu_count(snakemake.resources), compute, "pretraining") as devices:
    # the checkpoint lies outside the declared outputs, so a killed job resumes from its last epoch
    encoder, metrics = pretrain_encoder(images, counts, questions, BackboneSpec(**p.backbone),
                                        PretrainSpec.from_config(p.spec), threads=snakemake.threads,
                                        checkpoint=p.checkpoint, compute=compute, device=devices[0])
metrics["pool"] = pool
save_encoder(encoder, snakemake.output.encoder)
write_json(metrics, snakemake.output.metrics)
Path(p.checkpoint).unlink(missing_ok=True)
log.info("validation vote-fraction RMSE %s (pool-mean baseline %s, the votes' own noise %s); agreement with "
         "confident votes %s", metrics.get("val_fraction_rmse"), metrics.get("val_fraction_rmse_mean_baseline"),
         metrics.get("val_fraction_rmse_vote_noise"), metrics.get("val_confident_agreement_all"))
