# Configuration validation and helpers shared by all rules (no rules in this file).
import copy

from snakemake.utils import validate

validate(config, schema="../config/schema.yaml")

RESULTS = "results"
BACKBONES = list(config["backbones"])
N_TRAIN = sorted(config["labels"]["n_train"])


wildcard_constraints:
    backbone="|".join(BACKBONES),
    n_train=r"\d+",


def backbone_spec(backbone):
    """The backbone entry without its training overrides."""
    spec = dict(config["backbones"][backbone])
    spec.pop("training", None)
    return spec


def training_spec(backbone):
    """Global training settings updated with the backbone's own overrides."""
    spec = copy.deepcopy(config["training"])
    spec.update(config["backbones"][backbone].get("training", {}))
    return spec


def truth_inputs(wildcards):
    """Simulated truth is only available when the data are simulated."""
    if config["data"]["source"] == "simulate":
        return {"truth": f"{RESULTS}/labels/test_truth.json"}
    return {}


def final_targets():
    return [
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/plots/completeness_purity.png",
        f"{RESULTS}/plots/completeness_purity.pdf",
    ]
