# Giant star-forming clumps with Faster R-CNN, after Popp et al. 2024 (RASTI 3, 174).
# DAG: simulated survey + volunteers (or downloaded cutouts + a real export or a clump catalogue)
#      -> consensus -> labels -> train (backbone x size) -> evaluate -> summary tables, figures
#      and the report (snakemake --report). See README.md and docs/workflow.md.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"


if SIMULATED:

    include: "rules/simulate.smk"

else:

    include: "rules/download.smk"


include: "rules/consensus.smk"
include: "rules/labels.smk"
include: "rules/pretrain.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/summary.smk"
include: "rules/plots.smk"
include: "rules/catalogue.smk"


if PLAN.partnership_available():

    include: "rules/partnership.smk"


rule all:
    default_target: True
    input:
        final_targets(),


# `snakemake catalogue`: the clump catalogue (rules/catalogue.smk) and what it needs, nothing else
rule catalogue:
    input:
        rules.clump_catalogue.output,
        rules.plot_catalogue.output,
        *([rules.catalogue_validation.output[0]] if CATALOGUE_VALIDATED else []),


if PLAN.partnership_available():

    # `snakemake partnership`: the time-ordered replay of humans and machine (rules/partnership.smk)
    rule partnership:
        input:
            rules.partnership_replay.output.summary,
            rules.plot_partnership.output,
