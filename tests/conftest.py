"""Shared fixtures: the repository's configuration and a tiny simulated survey."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def deep_update(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="session")
def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.fixture(scope="session")
def tiny_config(default_config) -> dict:
    return deep_update(default_config, yaml.safe_load((REPO / "tests" / "config" / "config.yaml").read_text()))


@pytest.fixture(scope="session")
def tiny_survey(tmp_path_factory, tiny_config):
    """A 60-galaxy survey rendered once per test session."""
    from clumpfinder.simulate import SurveySpec, simulate_survey

    root = tmp_path_factory.mktemp("survey")
    spec = SurveySpec.from_config(tiny_config["simulate"])
    manifest, truth = simulate_survey(spec, root / "png", root / "fits")
    return {"root": root, "spec": spec, "manifest": manifest, "truth": truth}


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_survey, tiny_config):
    from clumpfinder.volunteers import CrowdSpec, gold_subjects, simulate_export

    path = tmp_path_factory.mktemp("export") / "classifications.csv"
    spec = CrowdSpec.from_config(tiny_config["volunteers"])
    pop = simulate_export(spec, tiny_survey["manifest"], tiny_survey["truth"], path)
    gold = gold_subjects(spec, tiny_survey["manifest"], tiny_survey["truth"])
    return {"path": path, "population": pop, "gold": gold.set_index("subject_id")["has_clumps"]}
