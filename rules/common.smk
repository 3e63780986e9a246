# Paths, input functions and targets shared by all rules (no rules in this file); what the schema
# cannot check about the configuration is checked by clumpfinder.config (tested in tests/test_plan.py).
import os
import re
import sys

import yaml
from snakemake.utils import validate

sys.path.insert(0, os.path.join(workflow.basedir, "src"))  # the workflow's own package
from clumpfinder.config import Plan, check_inputs, package_modules

validate(config, schema="../config/schema.yaml")
# the cross-field checks, and the per-backbone settings with the schema's defaults filled in
with open(os.path.join(workflow.basedir, "config", "schema.yaml")) as _schema:
    PLAN = Plan(config, "results", yaml.safe_load(_schema))
# real input files named by the configuration exist (docs/real-data.md says where they come from)
check_inputs(config)
RESULTS = PLAN.results
BACKBONES, N_TRAIN, SEEDS, BASELINE = (
    PLAN.backbones,
    PLAN.n_train,
    PLAN.seeds,
    PLAN.baseline,
)
SOURCE = config["data"]["source"]
SIMULATED = SOURCE == "simulate"
# the survey's images and subject table, whichever rule makes them (simulate_survey or download)
SURVEY_MANIFEST = f"{RESULTS}/survey/manifest.csv"
SURVEY_PNG = f"{RESULTS}/survey/png"
SURVEY_TRUTH = f"{RESULTS}/survey/truth.csv"
# the pretraining population's images and subject table (simulate_pretraining_population, or
# the real votes' galaxies fetched by download_pretraining): never a galaxy of the survey
PRETRAINING = {
    "manifest": f"{RESULTS}/pretraining/manifest.csv",
    "png": f"{RESULTS}/pretraining/png",
}
# subject ids of the simulated survey, and of the pretraining population far above them
SURVEY_FIRST_SUBJECT_ID = 100_000
PRETRAINING_FIRST_SUBJECT_ID = 10_000_000
# the label tables the split reads: the volunteer consensus, the clump catalogue's boxes, or the
# humans + machine labels of the partnership replay (partnership.labels_for_training)
LABEL_SOURCE = (
    "catalogue"
    if SOURCE == "catalogue"
    else "partnership" if config["partnership"]["labels_for_training"] else "consensus"
)
LABEL_TABLES = {
    name: f"{RESULTS}/{LABEL_SOURCE}/{name}.csv" for name in ("boxes", "subjects")
}


def package_code(script):
    """The package modules a script runs, directly or through other modules, as input files:
    Snakemake sees a script rule's script change, not the modules it imports, so a change to a
    stage's code reruns that stage (and only the stages whose code imports the changed module).
    Relative to the working directory, as Snakemake records inputs by name."""
    return [
        os.path.relpath(p)
        for p in package_modules(
            os.path.join(workflow.basedir, "scripts", script),
            os.path.join(workflow.basedir, "src", "clumpfinder"),
        )
    ]


def local_cutouts():
    """The folder of FITS cutouts the download rule reads instead of fetching, when configured."""
    folder = config["data"]["download"]["folder"]
    return {"folder": folder} if folder else {}


def scaled_memory(mb):
    """mem_mb that grows with the attempt: a job retried after running out of memory asks for more."""
    return lambda wildcards, attempt: mb * attempt


subject_list_input = PLAN.subject_list_input
export_inputs = PLAN.export_inputs
split_inputs = PLAN.split_inputs
MORPHOLOGY_KEYS = PLAN.morphology_keys()
backbone_spec = PLAN.backbone_spec
clumpy_base_spec = PLAN.clumpy_base_spec
training_spec = PLAN.training_spec
pretraining_population_spec = PLAN.pretraining_population_spec


wildcard_constraints:
    backbone="|".join(BACKBONES),
    n_train=r"\d+|full",
    seed=r"\d+",
    morphology="|".join(re.escape(k) for k in MORPHOLOGY_KEYS) or "(?!)",


def init_input(wildcards):
    """Input of the train rule: the init's weights, so a new encoder retrains."""
    return PLAN.weights_input(wildcards.backbone)


def clumpy_base_input(wildcards):
    """Input of pretrain_clumpy: the weights its classifier starts from."""
    return PLAN.weights_input(wildcards.backbone, "base_init")


def votes_input(wildcards):
    return (
        config["pretrain"]["catalogue"] or f"{RESULTS}/pretraining/morphology_votes.csv"
    )


def if_simulated(**files):
    """Input function: these files (under results/) when the data are simulated, else none."""
    return lambda wildcards: (
        {k: f"{RESULTS}/{v}" for k, v in files.items()} if SIMULATED else {}
    )


truth_inputs = if_simulated(truth="labels/test_truth.json")
true_volunteer_inputs = if_simulated(true_volunteers="survey/volunteers.csv")


def reference_inputs(wildcards):
    """The reference points beside the detectors: the classical finder, and (with a simulated
    truth) the consensus labels scored against it."""
    refs = {"classical": f"{RESULTS}/eval/classical/metrics.json"}
    if SIMULATED:
        refs["ceiling"] = f"{RESULTS}/eval/consensus_ceiling/metrics.json"
    return refs


sweep_files = PLAN.sweep_files
final_targets = PLAN.final_targets


def gallery_labels(wildcards):
    """The report label of one gallery: its training-set size, padded to sort as a number."""
    return {"training images": PLAN.size_label(wildcards.n_train)}


def gallery_files(name):
    """Each backbone's file for the gallery of one training-set size (first seed)."""
    return lambda wildcards: expand(
        f"{RESULTS}/eval/{{backbone}}/n{wildcards.n_train}/seed{SEEDS[0]}/{name}",
        backbone=BACKBONES,
    )


def plot_targets(name):
    return [f"{RESULTS}/plots/{name}.png", f"{RESULTS}/plots/{name}.pdf"]


# the clump catalogue (rules/catalogue.smk)
CATALOGUE = f"{RESULTS}/clumps"
# the compute settings that can change a torch job's results (a rerun trigger); the others
# (loader workers, the lock folder) change only speed, and the scripts read them from the config
COMPUTE_PARAMS = {k: config["compute"][k] for k in ("device", "precision")}
CATALOGUE_SOURCE = config["catalogue"]["galaxies"]["source"]
CATALOGUE_VALIDATED = SIMULATED and CATALOGUE_SOURCE == "survey"


def catalogue_cells():
    """The cells the catalogue's detector is chosen from: the configured one, or all."""
    return [PLAN.catalogue_cell()] if PLAN.catalogue_cell() else PLAN.cells()


def catalogue_model_inputs(wildcards):
    """The configured cell's model and metrics, or every cell's (the best by validation F1 is chosen)."""
    cells = catalogue_cells()
    return {
        "models": [f"{RESULTS}/models/{b}/n{n}/seed{s}/model.pt" for b, n, s in cells],
        "metrics": [
            f"{RESULTS}/eval/{b}/n{n}/seed{s}/metrics.json" for b, n, s in cells
        ],
    }


def catalogue_inputs(wildcards):
    """The detector and, by source, the galaxies: the survey's manifest (with the split and, when
    simulated, its FITS folder), the downloaded subject list, or the configured folder.
    """
    files = {"detector": rules.catalogue_model.output[0]}
    if CATALOGUE_SOURCE == "survey":
        files["manifest"] = SURVEY_MANIFEST
        if config["catalogue"]["galaxies"]["split"] != "all":
            files["splits"] = rules.split.output.splits
        if SIMULATED:
            files["fits"] = f"{RESULTS}/survey/fits"
    elif CATALOGUE_SOURCE == "subjects":
        files["manifest"] = f"{CATALOGUE}/cutouts/manifest.csv"
    else:
        files["folder"] = config["catalogue"]["galaxies"]["path"]
    return files


def catalogue_described():
    """Which galaxies the catalogue holds, in words (its provenance and report)."""
    g = config["catalogue"]["galaxies"]
    return (
        f"survey, {g['split']} split"
        if g["source"] == "survey"
        else f"{g['source']}: {g['path']}"
    )


def partnership_inputs(wildcards):
    """What the partnership replay reads besides the export: the simulated truth (to score
    labels) and the init weights of the machine's backbone."""
    files = PLAN.weights_input(PLAN.partnership_backbone())
    if SIMULATED:
        files["truth"] = SURVEY_TRUTH
    return files


def partnership_report_inputs(wildcards):
    """The replay's summary, when summary.md shows it (partnership.report)."""
    return (
        {"partnership": PLAN.partnership_summary} if PLAN.partnership_reported() else {}
    )
