"""What the workflow's JSON schema cannot say about a configuration (how its keys relate to each
other), and the import walk that ties each rule to the package code and libraries it runs.

Standard library only: ``rules/common.smk`` imports this when Snakemake parses the workflow.
"""

from __future__ import annotations

import ast
import copy
import os
import sys
from functools import cache
from itertools import product
from pathlib import Path
from typing import Any

PACKAGE = "clumpfinder"


def deep_update(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in key by key (nested dicts merged, anything
    else replaced), as Snakemake merges a ``--configfile`` on top of the default."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def sweep_backbones(config: dict[str, Any]) -> list[str]:
    """The backbones the sweep trains: ``sweep.backbones``, or every entry of ``backbones``."""
    names = config["sweep"]["backbones"] or list(config["backbones"])
    for name in names:
        if name not in config["backbones"]:
            raise ValueError(f"sweep.backbones names {name!r}, which is not an entry of backbones "
                             f"({', '.join(config['backbones'])})")
    return names


def baseline_backbone(config: dict[str, Any], backbones: list[str]) -> str:
    """``report.baseline``, or the sweep's first backbone trained from scratch (else its first)."""
    baseline = config["report"]["baseline"] or next(
        (b for b in backbones if config["backbones"][b]["init"] == "scratch"), backbones[0])
    if baseline not in backbones:
        raise ValueError(f"report.baseline {baseline!r} is not a backbone of the sweep ({', '.join(backbones)})")
    return baseline


def backbones_using(config: dict[str, Any], backbones: list[str], init: str) -> list[str]:
    """The backbones whose init (or clumpy classifier's base_init) is ``init``."""
    return [b for b in backbones if init in (config["backbones"][b]["init"], config["backbones"][b].get("base_init"))]


def check_config(config: dict[str, Any]) -> None:
    """Raise ValueError, naming the keys, where settings that are each valid do not fit together."""
    backbones = sweep_backbones(config)
    baseline_backbone(config, backbones)
    data, source = config["data"], config["data"]["source"]
    if source == "catalogue" and not data["catalogue"]["path"]:
        raise ValueError("data.source is 'catalogue' but data.catalogue.path is not set (the MRT clump table)")
    if source == "zooniverse" and not data["classifications"]:
        raise ValueError("data.source is 'zooniverse' but data.classifications is not set (the classification export)")
    if source == "zooniverse" and config["consensus"]["swap"]["mode"] == "supervised" and not data["gold"]:
        raise ValueError("consensus.swap.mode is 'supervised' but data.gold is not set: give gold subjects "
                         "(CSV subject_id, has_clumps) or use mode 'unsupervised'")
    for b in backbones:
        if config["backbones"][b]["init"] == "pretrain:clumpy" and not config["backbones"][b].get("base_init"):
            raise ValueError(f"backbones.{b}: init 'pretrain:clumpy' needs base_init (what the clumpy classifier "
                             "starts from: scratch, a hub or file init, or pretrain:morphology)")
    clumpy = backbones_using(config, backbones, "pretrain:clumpy")
    if source == "catalogue" and clumpy:
        raise ValueError(f"backbone(s) {', '.join(clumpy)} use pretrain:clumpy, which learns from the volunteers' "
                         "SWAP posteriors; data.source 'catalogue' has no volunteer classifications")
    check_catalogue(config, backbones)
    check_partnership(config, backbones)
    for rule, res in config["resources"].items():
        if rule != "train" and res["gpu"] > 1:
            raise ValueError(f"resources.{rule}.gpu is {res['gpu']}: only training runs on several GPUs "
                             "(data parallel); give the other rules 0 or 1")
    gpus = config["resources"]["train"]["gpu"]
    for b in backbones:
        parts = config["backbones"][b].get("training", {}).get("micro_batches", config["training"]["micro_batches"])
        if gpus > 1 and parts % gpus:
            raise ValueError(f"resources.train.gpu is {gpus} but training.micro_batches is {parts} (backbone {b}): "
                             "the processes share each batch's micro-batches, so make it a multiple of the GPUs "
                             "(the same optimisation on any number of them, docs/gpu.md)")
    morphology = backbones_using(config, backbones, "pretrain:morphology")
    if source != "simulate" and morphology and not config["pretrain"]["catalogue"]:
        raise ValueError(f"backbone(s) {', '.join(morphology)} use pretrain:morphology, whose votes are simulated "
                         "only for data.source 'simulate'; give real Galaxy Zoo votes in pretrain.catalogue or "
                         "leave these backbones out of sweep.backbones")


def check_partnership(config: dict[str, Any], backbones: list[str]) -> None:
    """The partnership replay needs volunteers, the EM consensus and a known backbone."""
    part, source = config["partnership"], config["data"]["source"]
    if part["labels_for_training"] and source == "catalogue":
        raise ValueError("partnership.labels_for_training is true but data.source 'catalogue' has no volunteer "
                         "classifications to replay")
    if part["labels_for_training"] and config["consensus"]["method"] != "em":
        raise ValueError(f"partnership.labels_for_training needs consensus.method 'em' (the replay retires subjects "
                         f"on the EM consensus's risk), not {config['consensus']['method']!r}")
    name = part["machine"]["backbone"]
    if name is not None and name not in config["backbones"]:
        raise ValueError(f"partnership.machine.backbone {name!r} is not an entry of backbones "
                         f"({', '.join(config['backbones'])})")
    wanted = source != "catalogue" and (part["report"] or part["labels_for_training"])
    if wanted and name is None and all(b["init"] == "pretrain:clumpy" for b in config["backbones"].values()):
        raise ValueError("partnership.machine.backbone is null and every entry of backbones starts from "
                         "pretrain:clumpy (learned from the full consensus, which the replay must not know): add a "
                         "backbone with another init and name it in partnership.machine.backbone")
    if name is not None and config["backbones"][name]["init"] == "pretrain:clumpy":
        raise ValueError(f"partnership.machine.backbone {name!r} starts from pretrain:clumpy, which learns from the "
                         "consensus the replay rebuilds; give it another backbone")


def check_catalogue(config: dict[str, Any], backbones: list[str]) -> None:
    """The catalogue's model is a cell of the sweep (or left to the validation F1), and its galaxies
    have what their source needs."""
    cat = config["catalogue"]
    cell = cat["model"]
    given = [k for k in ("backbone", "n_train", "seed") if cell[k] is not None]
    if given and len(given) < 3:
        raise ValueError(f"catalogue.model: give backbone, n_train and seed together, or none (got only {given})")
    if given:
        if cell["backbone"] not in backbones:
            raise ValueError(f"catalogue.model.backbone {cell['backbone']!r} is not a backbone of the sweep {backbones}")
        sizes = [str(n) for n in config["labels"]["n_train"]]
        if str(cell["n_train"]) not in sizes:
            raise ValueError(f"catalogue.model.n_train {cell['n_train']!r} is not a size of labels.n_train {sizes}")
        if cell["seed"] not in config["sweep"]["seeds"]:
            raise ValueError(f"catalogue.model.seed {cell['seed']} is not a seed of sweep.seeds {config['sweep']['seeds']}")
    source = cat["galaxies"]["source"]
    if source != "survey" and not cat["galaxies"]["path"]:
        raise ValueError(f"catalogue.galaxies.source is {source!r} but catalogue.galaxies.path is not set")


#: the real input files a configuration can name: the key path, what the file is, and the data
#: sources that read it
REAL_INPUTS = (
    (("data", "classifications"), "the project's Zooniverse classification export, e.g. Galaxy Zoo: Clump Scout's",
     {"zooniverse"}),
    (("data", "subjects"), "the Zooniverse subject export, or a CSV of subject_id, ra, dec", {"zooniverse"}),
    (("data", "gold"), "the gold subjects: a CSV of subject_id, has_clumps", {"zooniverse"}),
    (("data", "catalogue", "path"), "the clump catalogue: Adams et al. 2022 Table 3 or another AAS machine-readable table",
     {"catalogue"}),
    (("pretrain", "catalogue"), "the Galaxy Zoo vote table for the morphology pretraining", {"zooniverse", "catalogue"}),
)


def missing_inputs(config: dict[str, Any], root: str | Path = ".") -> list[str]:
    """One line per real input file the configuration names that does not exist (relative paths
    from ``root``, the working directory): the key, the path and what the file is. The real
    inputs are only read where the data source uses them, so only those are checked."""
    out = []
    for keys, what, sources in REAL_INPUTS:
        value: Any = config
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        if value and config["data"]["source"] in sources and not (Path(root) / value).is_file():
            out.append(f"{'.'.join(keys)}: {value} is not a file in {Path(root).resolve()} ({what})")
    return out


def check_inputs(config: dict[str, Any], root: str | Path = ".") -> None:
    """Raise FileNotFoundError at start-up, naming every missing real input file and where to get
    it, instead of Snakemake's bare MissingInputException for the first one."""
    missing = missing_inputs(config, root)
    if missing:
        raise FileNotFoundError(
            "the configuration names real input files that are missing:\n  " + "\n  ".join(missing)
            + "\nWhere each real input comes from and in which form: docs/real-data.md. Without them, run the "
            "simulated survey (data.source: simulate, the default configuration).")


@cache
def _imports(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(package modules, other top-level modules) that one source file imports, anywhere in it
    (function-level imports too). Package modules are dotted names below the package
    (``data.simulate``; for ``from clumpfinder.data import simulate`` both ``data`` and
    ``data.simulate``, the walk keeps those that are files). Relative imports are resolved against
    the file's place in the package. importlib calls are not seen."""
    ours, others = set(), set()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _package_parts(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = node.module.split(".") if node.module else []
            if node.level == 0 and parts[:1] != [PACKAGE]:
                others.add(parts[0])
                continue
            if node.level == 0:
                base = parts[1:]
            else:  # relative: from the file's package, up level - 1
                if here is None:
                    continue
                base = here[: len(here) - (node.level - 1)] + parts
            if base:
                ours.add(".".join(base))
            ours.update(".".join([*base, a.name]) for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                top, _, rest = a.name.partition(".")
                if top == PACKAGE:
                    if rest:
                        ours.add(rest)
                else:
                    others.add(top)
    return frozenset(ours), frozenset(others)


def _package_parts(path: Path) -> list[str] | None:
    """The sub-package a file of the package lies in, as parts below the package (None outside)."""
    parts = Path(path).resolve().parts
    if PACKAGE not in parts:
        return None
    below = list(parts[len(parts) - parts[::-1].index(PACKAGE):])
    return below[:-1]


def _module_file(name: str, package_dir: Path) -> Path | None:
    path = package_dir.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def package_modules(script: str | Path, package_dir: str | Path) -> list[Path]:
    """The package's module files a script runs, directly or through other modules, with the
    ``__init__.py`` of every package on the way (they run whenever a module below is imported),
    sorted."""
    package_dir = Path(package_dir)
    found = {package_dir / "__init__.py"}
    todo = [Path(script), package_dir / "__init__.py"]
    while todo:
        for name in _imports(todo.pop())[0]:
            parts = name.split(".")
            for k in range(1, len(parts) + 1):  # the packages on the way, then the module itself
                path = _module_file(".".join(parts[:k]), package_dir)
                if path is not None and path not in found:
                    found.add(path)
                    todo.append(path)
    return sorted(found)


def third_party_imports(script: str | Path, package_dir: str | Path) -> set[str]:
    """Top-level names of the libraries (neither the standard library nor this package) that a
    script and the package modules it runs import."""
    names = set()
    for path in [Path(script), *package_modules(script, package_dir)]:
        names |= _imports(path)[1]
    return {n for n in names if n not in sys.stdlib_module_names and n != PACKAGE and n != "__future__"}


def backbone_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """The defaults the schema gives the optional keys of a backbone entry."""
    entry = schema["properties"]["backbones"]["additionalProperties"]["properties"]
    return {k: v["default"] for k, v in entry.items() if "default" in v}


class Plan:
    """The per-backbone settings the rules hand to their scripts, and the files they read, from a
    validated configuration; a backbone entry's missing keys take the schema's defaults."""

    def __init__(self, config: dict[str, Any], results: str, schema: dict[str, Any]):
        check_config(config)
        self.config, self.results = config, results
        self.backbones = sweep_backbones(config)
        self.baseline = baseline_backbone(config, self.backbones)
        self.n_train = sorted(config["labels"]["n_train"], key=lambda n: (n == "full", 0 if n == "full" else n))
        self.seeds = list(config["sweep"]["seeds"])
        self.defaults = backbone_defaults(schema)

    def value(self, backbone: str, key: str) -> Any:
        return self.config["backbones"][backbone].get(key, self.defaults.get(key))

    def size_label(self, n_train: str) -> str:
        """A training-set size as a report label that sorts in numeric order: the report sorts
        labels as text ("100" before "30"), so numbers are left-padded with figure spaces (which
        sort before digits and are as wide as one) to the widest size; "full" sorts last."""
        width = max((len(str(n)) for n in self.n_train if n != "full"), default=0)
        return str(n_train) if n_train == "full" else str(n_train).rjust(width, "\u2007")

    def morphology_key(self, backbone: str) -> str:
        """Backbones of one arch and input normalisation share one morphology pretraining job."""
        return f"{self.value(backbone, 'arch').replace(':', '-')}_{self.value(backbone, 'normalization')}"

    def morphology_keys(self) -> dict[str, str]:
        """Each morphology pretraining job's key and a backbone of the sweep that needs it."""
        return {self.morphology_key(b): b for b in backbones_using(self.config, self.backbones, "pretrain:morphology")}

    def morphology_spec(self, key: str) -> dict[str, Any]:
        """The encoder a morphology pretraining job trains from scratch."""
        backbone = self.morphology_keys()[key]
        return {"arch": self.value(backbone, "arch"), "init": "scratch",
                "normalization": self.value(backbone, "normalization")}

    def init_weights(self, backbone: str, init: str) -> str | None:
        """The file a backbone's initialisation reads (None for scratch): the fetch_weights record
        of a hub init, the user's file, or a pretraining stage's encoder."""
        kind, _, value = init.partition(":")
        if kind in ("torchvision", "hf_hub"):
            return f"{self.results}/weights/{backbone}.json"
        if kind == "file":
            return value
        if init == "pretrain:morphology":
            return f"{self.results}/pretrain/morphology/{self.morphology_key(backbone)}/encoder.pt"
        if init == "pretrain:clumpy":
            return f"{self.results}/pretrain/clumpy/{backbone}/encoder.pt"
        return None

    def backbone_spec(self, backbone: str) -> dict[str, Any]:
        """The backbone entry without its training overrides, plus the encoder file of a pretrain init."""
        spec = {k: v for k, v in self.config["backbones"][backbone].items() if k != "training"}
        if spec["init"].startswith("pretrain:"):
            spec["init_file"] = self.init_weights(backbone, spec["init"])
        return spec

    def clumpy_base_spec(self, backbone: str) -> dict[str, Any]:
        """What the clumpy classifier of a 'pretrain:clumpy' backbone starts from."""
        base = self.value(backbone, "base_init")
        spec = {"arch": self.value(backbone, "arch"), "init": base,
                "normalization": self.value(backbone, "normalization"), "batchnorm": self.value(backbone, "batchnorm")}
        if base.startswith("pretrain:"):
            spec["init_file"] = self.init_weights(backbone, base)
        return spec

    def weights_input(self, backbone: str, key: str = "init") -> dict[str, str]:
        """{'init_weights': file} for the backbone's init (or base_init), or {} for scratch."""
        init = self.value(backbone, key)
        path = self.init_weights(backbone, init) if init else None
        return {"init_weights": path} if path else {}

    def training_spec(self, backbone: str, seed: int | str) -> dict[str, Any]:
        """Global training settings updated with the backbone's own overrides, and the job's seed."""
        return {**self.config["training"], **self.config["backbones"][backbone].get("training", {}), "seed": int(seed)}

    def pretraining_population_spec(self) -> dict[str, Any]:
        """The simulated pretraining population: the survey's physics with a seed and size of its own."""
        population = self.config["morphology"]["population"]
        return {**self.config["simulate"], "seed": population["seed"], "n_galaxies": population["n_galaxies"]}

    def cells(self) -> list[list[str]]:
        """Every (backbone, n_train, seed) of the sweep as text, in the order of :meth:`sweep_files`."""
        return [[b, str(n), str(s)] for b, n, s in product(self.backbones, self.n_train, self.seeds)]

    def catalogue_cell(self) -> list[str] | None:
        """The configured cell of the catalogue's detector (None: the best by validation F1)."""
        cell = self.config["catalogue"]["model"]
        return None if cell["backbone"] is None else [cell["backbone"], str(cell["n_train"]), str(cell["seed"])]

    def sweep_files(self, name: str) -> list[str]:
        """One training or evaluation file per (backbone, n_train, seed), in that nesting order."""
        folder = "models" if name in ("train_metrics.json", "model.pt") else "eval"
        return [f"{self.results}/{folder}/{b}/n{n}/seed{s}/{name}"
                for b, n, s in product(self.backbones, self.n_train, self.seeds)]

    def final_targets(self) -> list[str]:
        """What `snakemake` with no target makes: the summary tables and documents, and the figures
        the data route has (the consensus diagnostics need volunteers, the flux figure a truth)."""
        source = self.config["data"]["source"]
        names = ["completeness_purity", "pr_curves", "learning_curves"]
        names += ["consensus"] if source != "catalogue" else []
        names += [f"gallery/n{n}" for n in self.n_train]
        names += ["completeness_vs_flux"] if source == "simulate" else []
        names += ["catalogue"]
        names += ["partnership"] if self.partnership_reported() else []
        return ([f"{self.results}/{f}" for f in ("summary.csv", "comparison.csv", "summary.md", "summary.html")]
                + [f"{self.results}/plots/{name}.{ext}" for name in names for ext in ("png", "pdf")])

    # --- the partnership replay (rules/partnership.smk)
    def partnership_available(self) -> bool:
        """The data have volunteer classifications to replay."""
        return self.config["data"]["source"] != "catalogue"

    def partnership_reported(self) -> bool:
        """summary.md shows the replay (and the default DAG makes it): possible (the replay retires
        subjects on the EM consensus, so another consensus method leaves it out), and asked for
        (``partnership.report``) or already made (``snakemake partnership`` has run here)."""
        return (self.partnership_available() and self.config["consensus"]["method"] == "em"
                and (self.config["partnership"]["report"] or os.path.exists(self.partnership_summary)))

    @property
    def partnership_summary(self) -> str:
        """The replay's summary file (what summary.md reads)."""
        return f"{self.results}/partnership/summary.json"

    def partnership_backbone(self) -> str:
        """The backbone the machine agent trains: the configured one, or the report's baseline (else the
        first entry of backbones) that does not start from pretrain:clumpy."""
        name = self.config["partnership"]["machine"]["backbone"]
        if name is not None:
            return name
        # a clumpy classifier learned from the consensus of every classification, which the replay must not know
        usable = [b for b in [self.baseline, *self.config["backbones"]] if self.value(b, "init") != "pretrain:clumpy"]
        if not usable:
            raise ValueError("partnership.machine.backbone is null and every entry of backbones starts from "
                             "pretrain:clumpy (learned from the full consensus, which the replay must not know): "
                             "add a backbone with another init and name it there")
        return usable[0]

    # --- what the consensus and the split read, by data route
    def gold_input(self) -> dict[str, str]:
        """SWAP's gold subjects (known truth): simulated, data.gold, or none."""
        if self.config["data"]["source"] == "simulate":
            return {"gold": f"{self.results}/survey/gold.csv"}
        return {"gold": self.config["data"]["gold"]} if self.config["data"]["gold"] else {}

    def subject_list_output(self) -> dict[str, str]:
        """Real data: the subject list, whose origin column marks injected-clump subjects."""
        return {} if self.config["data"]["source"] == "simulate" else {
            "subject_list": f"{self.results}/survey/subjects.csv"}

    def subject_list_input(self) -> str:
        """The file the subject list of a real-data run is read from."""
        data = self.config["data"]
        return data["catalogue"]["path"] if data["source"] == "catalogue" else data["subjects"] or data["classifications"]

    def export_inputs(self, wildcards: Any = None) -> dict[str, str]:
        """The classification export, gold subjects and, for real exports, the subject list (its
        injected-clump subjects are gold too) that the consensus reads."""
        if self.config["data"]["source"] == "simulate":
            return {"export": f"{self.results}/survey/classifications.csv", **self.gold_input()}
        return {"export": self.config["data"]["classifications"], **self.gold_input(), **self.subject_list_output()}

    def split_inputs(self, wildcards: Any = None) -> dict[str, str]:
        """What the split leaves out of the detection labels: gold subjects and, on real data, the
        injected-clump subjects of the subject list."""
        return {**self.gold_input(), **self.subject_list_output()}
