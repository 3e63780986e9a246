# Configuration validation and helpers shared by all rules (no rules in this file).
import ast
import copy
import functools
import os
import re

from snakemake.utils import validate

validate(config, schema="../config/schema.yaml")

RESULTS = "results"
BACKBONES = config["sweep"]["backbones"] or list(config["backbones"])
for _name in BACKBONES:
    if _name not in config["backbones"]:
        raise ValueError(
            f"sweep.backbones names {_name!r}, which is not an entry of backbones ({', '.join(config['backbones'])})"
        )
N_TRAIN = sorted(
    config["labels"]["n_train"], key=lambda n: (n == "full", n if n != "full" else 0)
)
SEEDS = config["sweep"]["seeds"]
BASELINE = config["report"]["baseline"] or next(
    (b for b in BACKBONES if config["backbones"][b]["init"] == "scratch"), BACKBONES[0]
)
if BASELINE not in BACKBONES:
    raise ValueError(
        f"report.baseline {BASELINE!r} is not a backbone of the sweep ({', '.join(BACKBONES)})"
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
# the label tables the split reads: the volunteer consensus, or the clump catalogue's boxes
LABEL_TABLES = {
    name: f"{RESULTS}/{'catalogue' if SOURCE == 'catalogue' else 'consensus'}/{name}.csv"
    for name in ("boxes", "subjects")
}


if SOURCE == "catalogue" and not config["data"]["catalogue"]["path"]:
    raise ValueError(
        "data.source is 'catalogue' but data.catalogue.path is not set (the MRT clump table)"
    )
if (
    SOURCE == "zooniverse"
    and config["consensus"]["swap"]["mode"] == "supervised"
    and not config["data"]["gold"]
):
    raise ValueError(
        "consensus.swap.mode is 'supervised' but data.gold is not set: give gold subjects "
        "(CSV subject_id, has_clumps) or use mode 'unsupervised'"
    )
if SOURCE == "zooniverse" and not config["data"]["classifications"]:
    raise ValueError(
        "data.source is 'zooniverse' but data.classifications is not set (the classification export)"
    )


def _uses(init):
    return [
        b
        for b in BACKBONES
        if init
        in (config["backbones"][b]["init"], config["backbones"][b].get("base_init"))
    ]


if SOURCE == "catalogue" and _uses("pretrain:clumpy"):
    raise ValueError(
        f"backbone(s) {', '.join(_uses('pretrain:clumpy'))} use pretrain:clumpy, which learns from the "
        "volunteers' SWAP posteriors; data.source 'catalogue' has no volunteer classifications"
    )
if (
    not SIMULATED
    and _uses("pretrain:morphology")
    and not config["pretrain"]["catalogue"]
):
    raise ValueError(
        f"backbone(s) {', '.join(_uses('pretrain:morphology'))} use pretrain:morphology, whose votes are "
        "simulated only for data.source 'simulate'; give real Galaxy Zoo votes in pretrain.catalogue "
        "or leave these backbones out of sweep.backbones"
    )


PACKAGE_DIR = os.path.join(workflow.basedir, "src", "clumpfinder")


@functools.cache
def _package_imports(path):
    """Modules of the clumpfinder package that one source file imports."""
    found = set()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            # absolute (clumpfinder.x) or, inside the package, relative (.x)
            parts = node.module.split(".") if node.module else []
            if node.level == 0 and parts[:1] != ["clumpfinder"]:
                continue
            parts = parts[1:] if node.level == 0 else parts
            found.update(parts[:1])  # from clumpfinder.x import ...
            if not parts:  # from clumpfinder import x
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.split(".")[1]
                for a in node.names
                if a.name.startswith("clumpfinder.")
            )
    return {m for m in found if os.path.exists(os.path.join(PACKAGE_DIR, f"{m}.py"))}


def package_code(script):
    """The package modules a script runs, directly or through other modules, as input files.

    Snakemake reruns a script rule when its script changes, but it does not see the modules the
    script imports; declaring them as input makes a change to a stage's code rerun that stage
    (and only the stages whose code imports the changed module). Imports by absolute or relative
    module name are seen; importlib calls are not."""
    modules = {"__init__"}  # runs whenever the package is imported
    todo = [
        os.path.join(workflow.basedir, "scripts", script),
        os.path.join(PACKAGE_DIR, "__init__.py"),
    ]
    while todo:
        for module in _package_imports(todo.pop()) - modules:
            modules.add(module)
            todo.append(os.path.join(PACKAGE_DIR, f"{module}.py"))
    # relative to the working directory, as Snakemake records inputs by name: a checkout moved
    # or cloned again with the results beside it is the same code
    return sorted(
        os.path.relpath(os.path.join(PACKAGE_DIR, f"{m}.py")) for m in modules
    )


def scaled_memory(mb):
    """mem_mb that grows with the attempt: a job retried after running out of memory asks for more."""
    return lambda wildcards, attempt: mb * attempt


def subject_list_input():
    """The file the subject list of a real-data run is read from."""
    if SOURCE == "catalogue":
        return config["data"]["catalogue"]["path"]
    return config["data"]["subjects"] or config["data"]["classifications"]


def gold_input():
    """SWAP's gold subjects (known truth): simulated, data.gold, or none."""
    if SIMULATED:
        return {"gold": f"{RESULTS}/survey/gold.csv"}
    return {"gold": config["data"]["gold"]} if config["data"]["gold"] else {}


def subject_list_output():
    """Real data: the subject list, whose origin column marks injected-clump subjects."""
    return {} if SIMULATED else {"subject_list": f"{RESULTS}/survey/subjects.csv"}


def export_inputs(wildcards):
    """The classification export, gold subjects and, for real exports, the subject list (its
    injected-clump subjects are gold too) that the consensus reads."""
    if SIMULATED:
        return {"export": f"{RESULTS}/survey/classifications.csv", **gold_input()}
    return {
        "export": config["data"]["classifications"],
        **gold_input(),
        **subject_list_output(),
    }


def split_inputs(wildcards):
    """What the split leaves out of the detection labels: gold subjects and, on real data, the
    injected-clump subjects of the subject list."""
    return {**gold_input(), **subject_list_output()}


def morphology_key(entry):
    """Backbones of one arch and input normalisation share one morphology pretraining job."""
    return f"{entry['arch'].replace(':', '-')}_{entry.get('normalization', 'imagenet')}"


MORPHOLOGY_KEYS = {
    morphology_key(b): b
    for b in (config["backbones"][name] for name in BACKBONES)
    if "pretrain:morphology" in (b["init"], b.get("base_init"))
}


wildcard_constraints:
    backbone="|".join(BACKBONES),
    n_train=r"\d+|full",
    seed=r"\d+",
    morphology="|".join(re.escape(k) for k in MORPHOLOGY_KEYS) or "(?!)",


def init_weights(backbone, init):
    """The file a backbone's initialisation reads (None for scratch): the fetch_weights record
    of a hub init, the user's file, or a pretraining stage's encoder."""
    entry = config["backbones"][backbone]
    kind, _, value = init.partition(":")
    if kind in ("torchvision", "hf_hub"):
        return f"{RESULTS}/weights/{backbone}.json"
    if kind == "file":
        return value
    if init == "pretrain:morphology":
        return f"{RESULTS}/pretrain/morphology/{morphology_key(entry)}/encoder.pt"
    if init == "pretrain:clumpy":
        return f"{RESULTS}/pretrain/clumpy/{backbone}/encoder.pt"
    return None


def backbone_spec(backbone):
    """The backbone entry without its training overrides, plus the encoder file of a pretrain init."""
    spec = dict(config["backbones"][backbone])
    spec.pop("training", None)
    if spec["init"].startswith("pretrain:"):
        spec["init_file"] = init_weights(backbone, spec["init"])
    return spec


def clumpy_base_spec(backbone):
    """What the clumpy classifier of a 'pretrain:clumpy' backbone starts from."""
    entry = config["backbones"][backbone]
    base = entry.get("base_init", "scratch")
    spec = {
        "arch": entry["arch"],
        "init": base,
        "normalization": entry.get("normalization", "imagenet"),
        "batchnorm": entry.get("batchnorm", "auto"),
    }
    if base.startswith("pretrain:"):
        spec["init_file"] = init_weights(backbone, base)
    return spec


def _weights_input(backbone, init):
    path = init_weights(backbone, init)
    return {"init_weights": path} if path else {}


def init_input(wildcards):
    """Input of the train rule: the init's weights, so a new encoder retrains."""
    return _weights_input(
        wildcards.backbone, config["backbones"][wildcards.backbone]["init"]
    )


def clumpy_base_input(wildcards):
    """Input of pretrain_clumpy: the weights its classifier starts from."""
    return _weights_input(
        wildcards.backbone,
        config["backbones"][wildcards.backbone].get("base_init", "scratch"),
    )


def hub_backbones():
    """Backbones whose init (or clumpy base) comes from a hub: fetch_weights targets."""
    return [
        b
        for b in BACKBONES
        if any(
            str(config["backbones"][b].get(k, "")).split(":")[0]
            in ("torchvision", "hf_hub")
            for k in ("init", "base_init")
        )
    ]


def votes_input(wildcards):
    return (
        config["pretrain"]["catalogue"] or f"{RESULTS}/pretraining/morphology_votes.csv"
    )


def pretraining_population_spec():
    """The simulated pretraining population: the survey's physics with a seed and size of its own."""
    population = config["morphology"]["population"]
    return {
        **config["simulate"],
        "seed": population["seed"],
        "n_galaxies": population["n_galaxies"],
    }


def training_spec(backbone, seed):
    """Global training settings updated with the backbone's own overrides, and the job's seed."""
    spec = copy.deepcopy(config["training"])
    spec.update(config["backbones"][backbone].get("training", {}))
    spec["seed"] = int(seed)
    return spec


def truth_inputs(wildcards):
    """Simulated truth is only available when the data are simulated."""
    if SIMULATED:
        return {"truth": f"{RESULTS}/labels/test_truth.json"}
    return {}


def reference_inputs(wildcards):
    """The reference points beside the detectors: the classical finder, and (with a simulated
    truth) the consensus labels scored against it."""
    refs = {"classical": f"{RESULTS}/eval/classical/metrics.json"}
    if SIMULATED:
        refs["ceiling"] = f"{RESULTS}/eval/consensus_ceiling/metrics.json"
    return refs


def true_volunteer_inputs(wildcards):
    """The simulated volunteers' true skills, for the consensus diagnostics."""
    if SIMULATED:
        return {"true_volunteers": f"{RESULTS}/survey/volunteers.csv"}
    return {}


def sweep_files(name):
    """One evaluation or training file per (backbone, n_train, seed), in expand()'s order."""
    folder = "models" if name == "train_metrics.json" else "eval"
    return expand(
        f"{RESULTS}/{folder}/{{backbone}}/n{{n_train}}/seed{{seed}}/{name}",
        backbone=BACKBONES,
        n_train=N_TRAIN,
        seed=SEEDS,
    )


def gallery_files(name):
    """Each backbone's file for the gallery of one training-set size (first seed)."""
    return lambda wildcards: expand(
        f"{RESULTS}/eval/{{backbone}}/n{wildcards.n_train}/seed{SEEDS[0]}/{name}",
        backbone=BACKBONES,
    )


def plot_targets(name):
    return [f"{RESULTS}/plots/{name}.png", f"{RESULTS}/plots/{name}.pdf"]


def final_targets():
    targets = [
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/comparison.csv",
        f"{RESULTS}/summary.md",
        f"{RESULTS}/summary.html",
    ]
    names = ["completeness_purity", "pr_curves", "learning_curves"]
    if SOURCE != "catalogue":
        names.append("consensus")
    names += [f"gallery/n{n}" for n in N_TRAIN]
    if SIMULATED:
        names.append("completeness_vs_flux")
    return targets + [t for name in names for t in plot_targets(name)]
