"""clumpfinder.config: the cross-field checks of a configuration, the per-backbone settings the
rules hand to their scripts (schema defaults filled in), and the import walk behind each rule's
code inputs and conda environment."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml

from clumpfinder.config import Plan, check_config, package_modules, third_party_imports
from conftest import REPO, deep_update


@pytest.fixture(scope="module")
def schema():
    return yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def _config(default_config, **override):
    return deep_update(copy.deepcopy(default_config), override)


def test_shipped_configurations_pass(default_config, tiny_config):
    check_config(default_config)
    check_config(tiny_config)
    check_config(_config(default_config, **yaml.safe_load((REPO / "config" / "paper.yaml").read_text())))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"sweep": {"backbones": ["resnet18_scratch", "nope"]}}, "sweep.backbones names 'nope'"),
        ({"report": {"baseline": "resnet50"}}, "report.baseline 'resnet50' is not a backbone of the sweep"),
        ({"data": {"source": "catalogue"}}, "data.catalogue.path is not set"),
        ({"data": {"source": "zooniverse"}}, "data.classifications is not set"),
        ({"data": {"source": "zooniverse", "classifications": "c.csv"}}, "'supervised' but data.gold is not set"),
        ({"data": {"source": "catalogue", "catalogue": {"path": "t.txt"}}},
         "resnet18_morphology use pretrain:morphology"),
        ({"backbones": {"c": {"arch": "resnet18", "init": "pretrain:clumpy"}}, "sweep": {"backbones": ["c"]}},
         "backbones.c: init 'pretrain:clumpy' needs base_init"),
        ({"data": {"source": "catalogue", "catalogue": {"path": "t.txt"}},
          "backbones": {"c": {"arch": "resnet18", "init": "pretrain:clumpy", "base_init": "scratch"}},
          "sweep": {"backbones": ["c"]}},
         "data.source 'catalogue' has no volunteer classifications"),
        ({"data": {"source": "catalogue", "catalogue": {"path": "t.txt"}}, "sweep": {"backbones": ["resnet18_scratch"]},
          "partnership": {"labels_for_training": True}}, "labels_for_training is true but data.source 'catalogue'"),
        ({"consensus": {"method": "dbscan"}, "partnership": {"labels_for_training": True}},
         "labels_for_training needs consensus.method 'em'"),
        ({"partnership": {"machine": {"backbone": "resnet99"}}}, "partnership.machine.backbone 'resnet99' is not"),
        ({"backbones": {"c": {"arch": "resnet18", "init": "pretrain:clumpy", "base_init": "scratch"}},
          "partnership": {"machine": {"backbone": "c"}}}, "starts from pretrain:clumpy"),
    ],
)
def test_settings_that_do_not_fit_together_are_named(default_config, override, message):
    with pytest.raises(ValueError, match=message):
        check_config(_config(default_config, **override))


def test_real_votes_let_morphology_pretraining_run_on_real_data(default_config):
    check_config(_config(default_config, data={"source": "catalogue", "catalogue": {"path": "t.txt"}},
                         pretrain={"catalogue": "votes.csv"}))


def test_backbone_defaults_come_from_the_schema_and_match_the_spec(default_config, schema):
    from clumpfinder.detection.detector import BackboneSpec

    cfg = _config(default_config, backbones={"bare": {"arch": "timm:regnetx_002", "init": "pretrain:morphology"},
                                             "clumpy": {"arch": "resnet18", "init": "pretrain:clumpy",
                                                        "base_init": "pretrain:morphology"}},
                  sweep={"backbones": ["bare", "resnet18_morphology", "clumpy"]})
    plan = Plan(cfg, "results", schema)
    # every optional key of a backbone entry has a schema default, equal to BackboneSpec's
    spec_defaults = {f.name: f.default for f in dataclasses.fields(BackboneSpec) if f.default is not dataclasses.MISSING}
    assert plan.defaults == {k: spec_defaults[k] for k in plan.defaults}
    assert set(plan.defaults) == {"trainable_layers", "fpn_channels", "normalization", "batchnorm"}
    # one morphology pretraining job per (arch, normalisation); the bare entry normalises as ImageNet
    assert plan.morphology_keys() == {"timm-regnetx_002_imagenet": "bare", "resnet18_unit": "resnet18_morphology",
                                      "resnet18_imagenet": "clumpy"}
    assert plan.morphology_spec("timm-regnetx_002_imagenet") == {"arch": "timm:regnetx_002", "init": "scratch",
                                                                "normalization": "imagenet"}
    assert plan.backbone_spec("bare") == {"arch": "timm:regnetx_002", "init": "pretrain:morphology",
                                          "init_file": "results/pretrain/morphology/timm-regnetx_002_imagenet/encoder.pt"}
    assert plan.weights_input("bare") == {"init_weights": plan.backbone_spec("bare")["init_file"]}
    assert plan.clumpy_base_spec("clumpy") == {
        "arch": "resnet18", "init": "pretrain:morphology", "normalization": "imagenet", "batchnorm": "auto",
        "init_file": "results/pretrain/morphology/resnet18_imagenet/encoder.pt"}
    assert plan.weights_input("clumpy", "base_init") == {"init_weights": plan.clumpy_base_spec("clumpy")["init_file"]}
    assert plan.weights_input("clumpy") == {"init_weights": "results/pretrain/clumpy/clumpy/encoder.pt"}
    assert plan.weights_input("bare", "base_init") == {}


def test_training_settings_take_the_backbones_overrides(default_config, schema):
    cfg = _config(default_config, backbones={"resnet18_scratch": {"training": {"lr": 0.01}}})
    plan = Plan(cfg, "results", schema)
    spec = plan.training_spec("resnet18_scratch", "2")
    assert spec["lr"] == 0.01 and spec["seed"] == 2 and spec["steps"] == default_config["training"]["steps"]
    assert "training" not in plan.backbone_spec("resnet18_scratch")
    assert plan.training_spec("resnet18_morphology", 0)["lr"] == default_config["training"]["lr"]


def test_missing_real_inputs_only_where_the_data_source_reads_them(default_config, tmp_path):
    from clumpfinder.config import check_inputs, missing_inputs

    zoo = _config(default_config, data={"source": "zooniverse", "classifications": "c.csv", "subjects": "s.csv",
                                        "gold": "g.csv"})
    (tmp_path / "c.csv").write_text("x")
    missing = missing_inputs(zoo, tmp_path)
    assert [m.split(":")[0] for m in missing] == ["data.subjects", "data.gold"]
    assert "s.csv is not a file in" in missing[0] and "subject export" in missing[0]
    with pytest.raises(FileNotFoundError, match="docs/real-data.md"):
        check_inputs(zoo, tmp_path)
    # the simulated default reads none of them, even when a path is set
    assert missing_inputs(_config(default_config, data={"gold": "g.csv"}), tmp_path) == []
    cat = _config(default_config, data={"source": "catalogue", "catalogue": {"path": "t.txt"}},
                  pretrain={"catalogue": "votes.csv"})
    assert [m.split(":")[0] for m in missing_inputs(cat, tmp_path)] == ["data.catalogue.path", "pretrain.catalogue"]
    (tmp_path / "t.txt").mkdir()  # a folder is not the table
    assert len(missing_inputs(cat, tmp_path)) == 2


def test_report_labels_of_sizes_sort_as_numbers(default_config, schema):
    plan = Plan(_config(default_config, labels={"n_train": [300, "full", 30, 1000]}), "r", schema)
    labels = [plan.size_label(str(n)) for n in ("30", "300", "1000", "full")]
    assert labels == ["\u2007\u200730", "\u2007300", "1000", "full"]
    # the report sorts labels with the browser's localeCompare, in which a figure space comes
    # before every digit: the browser test (tests/test_report_browser.py) checks the order it shows


def test_targets_follow_the_data_route(default_config, schema, tmp_path, monkeypatch):
    plan = Plan(_config(default_config, labels={"n_train": [300, "full", 30]}, sweep={"seeds": [0, 1]}), "r", schema)
    assert plan.n_train == [30, 300, "full"]
    files = plan.sweep_files("metrics.json")
    assert files[:3] == ["r/eval/resnet18_scratch/n30/seed0/metrics.json", "r/eval/resnet18_scratch/n30/seed1/metrics.json",
                         "r/eval/resnet18_scratch/n300/seed0/metrics.json"]
    assert len(files) == 2 * 3 * 2 and plan.sweep_files("train_metrics.json")[0].startswith("r/models/")
    simulated = plan.final_targets()
    assert "r/plots/completeness_vs_flux.png" in simulated and "r/plots/consensus.pdf" in simulated
    assert "r/plots/gallery/nfull.png" in simulated and "r/summary.html" in simulated
    catalogue = Plan(_config(default_config, data={"source": "catalogue", "catalogue": {"path": "t.txt"}},
                             sweep={"backbones": ["resnet18_scratch"]}), "r", schema)
    names = catalogue.final_targets()
    assert "r/plots/completeness_vs_flux.png" not in names and "r/plots/consensus.png" not in names
    assert catalogue.subject_list_input() == "t.txt" and catalogue.split_inputs() == {
        "subject_list": "r/survey/subjects.csv"}
    assert plan.export_inputs() == {"export": "r/survey/classifications.csv", "gold": "r/survey/gold.csv"}
    # the partnership replay: its own target in the default (`snakemake partnership`), in the report
    # once it has run or where asked for, with volunteers and the EM consensus; its machine the baseline
    monkeypatch.chdir(tmp_path)
    assert "r/plots/partnership.png" not in simulated and plan.partnership_backbone() == "resnet18_scratch"
    asked = Plan(_config(default_config, partnership={"report": True}), "r", schema)
    assert "r/plots/partnership.png" in asked.final_targets()
    (tmp_path / "r" / "partnership").mkdir(parents=True)
    (tmp_path / "r" / "partnership" / "summary.json").write_text("{}")  # `snakemake partnership` has run
    assert "r/plots/partnership.png" in plan.final_targets() and plan.partnership_reported()
    assert "r/plots/partnership.png" not in names and not catalogue.partnership_available()
    dbscan = Plan(_config(default_config, consensus={"method": "dbscan"}, partnership={"report": True}), "r", schema)
    assert "r/plots/partnership.png" not in dbscan.final_targets() and dbscan.partnership_available()
    chosen = Plan(_config(default_config, partnership={"machine": {"backbone": "resnet18_morphology"}}), "r", schema)
    assert chosen.partnership_backbone() == "resnet18_morphology"
    assert chosen.weights_input(chosen.partnership_backbone())["init_weights"].endswith("encoder.pt")
    # never a clumpy classifier (it learned from the consensus of every classification): the next entry
    clumpy = Plan(_config(default_config, backbones={"c": {"arch": "resnet18", "init": "pretrain:clumpy",
                                                           "base_init": "scratch"}}, sweep={"backbones": ["c"]}),
                  "r", schema)
    assert clumpy.baseline == "c" and clumpy.partnership_backbone() == "resnet18_scratch"


def test_import_walk_follows_the_package_and_names_libraries(tmp_path):
    pkg = tmp_path / "src" / "clumpfinder"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""doc"""\n')
    (pkg / "a.py").write_text("from __future__ import annotations\nimport json\nimport numpy as np\nfrom .b import f\n")
    (pkg / "b.py").write_text("import os.path\n\ndef f():\n    import scipy.ndimage  # a lazy import counts too\n")
    (pkg / "c.py").write_text("import torch\n")  # not reached
    script = tmp_path / "script.py"
    script.write_text("import sys\nfrom clumpfinder import a\nfrom clumpfinder.io import nothing  # no such file\n"
                      "import PIL.Image\n")
    assert [p.name for p in package_modules(script, pkg)] == ["__init__.py", "a.py", "b.py"]
    assert third_party_imports(script, pkg) == {"numpy", "scipy", "PIL"}
    # a stage sub-package: its __init__ runs too; relative imports inside it are followed
    (pkg / "stage").mkdir()
    (pkg / "stage" / "__init__.py").write_text("")
    (pkg / "stage" / "m.py").write_text("from . import n\nfrom ..b import f\n")
    (pkg / "stage" / "n.py").write_text("import pandas\n")
    other = tmp_path / "other_script.py"  # (files are read once per process: a new name)
    other.write_text("from clumpfinder.stage import m\n")
    assert [str(p.relative_to(pkg)) for p in package_modules(other, pkg)] == [
        "__init__.py", "b.py", "stage/__init__.py", "stage/m.py", "stage/n.py"]
    assert third_party_imports(other, pkg) == {"pandas", "scipy"}


def _specs():
    from clumpfinder.crowd.boxem import EMSpec
    from clumpfinder.scoring.classical import ClassicalSpec
    from clumpfinder.crowd.consensus import ConsensusSpec
    from clumpfinder.detection.detector import DetectorSpec
    from clumpfinder.data.download import DownloadSpec
    from clumpfinder.scoring.evaluate import EvalSpec
    from clumpfinder.data.morphology import VoteSpec
    from clumpfinder.detection.pretrain import PretrainSpec
    from clumpfinder.data.simulate import SurveySpec
    from clumpfinder.crowd.sites import SiteSpec
    from clumpfinder.crowd.swap import SwapSpec
    from clumpfinder.detection.train import TrainSpec
    from clumpfinder.data.volunteers import CrowdSpec

    from clumpfinder.partnership.replay import MachineSpec, PartnershipSpec

    return [(PartnershipSpec, "partnership"), (MachineSpec, "partnership.machine"), (ConsensusSpec, "consensus"), (EMSpec, "consensus.em"), (SiteSpec, "consensus.em.false_sites"),
            (SwapSpec, "consensus.swap"), (DetectorSpec, "detector"), (DownloadSpec, "data.download"),
            (EvalSpec, "evaluation"), (VoteSpec, "morphology"), (PretrainSpec, "pretrain.morphology"),
            (SurveySpec, "simulate"), (CrowdSpec, "volunteers"), (TrainSpec, "training"), (ClassicalSpec, "classical")]


@pytest.mark.parametrize("spec, section", _specs(), ids=[s for _, s in _specs()])
def test_every_from_config_refuses_unknown_and_missing_keys(default_config, spec, section):
    """One policy for every settings class: the default section loads; a key nobody reads and a
    missing setting are errors naming the section and the key."""
    cfg = default_config
    for part in section.split("."):
        cfg = cfg[part]
    cfg = copy.deepcopy(cfg)
    if spec.__name__ == "TrainSpec":
        cfg["seed"] = 0  # the rule adds the job's seed
    spec.from_config(cfg)
    with pytest.raises(ValueError, match=rf"unknown {section.split('.')[0]}.* settings \['bogus'\]"):
        spec.from_config({**cfg, "bogus": 1})
    required = [k for k, f in spec.__dataclass_fields__.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for key in required:  # (DetectorSpec and ClassicalSpec give every setting a default)
        with pytest.raises(ValueError, match=rf"lacks the settings \[{key!r}\]"):
            spec.from_config({k: v for k, v in cfg.items() if k != key})
