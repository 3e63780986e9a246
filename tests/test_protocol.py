"""The protocol of docs/protocol.md in files: every result under benchmarks/results says which
simulated data it measured, and only the final reporting runs measured the reporting seeds (a
benchmark that compares settings runs on the development seeds)."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from provenance import data_seeds, merged_config, reporting_seeds  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"

#: the result files of the final reporting runs, made once after every choice (docs/protocol.md);
#: no other file may have measured the reporting seeds
FINAL_REPORTING_RUNS = {"workflow_timing.json", "catalogue_test.json", "catalogue_all.json",
                        "partnership_reporting.json"}


def _seed_sets(value) -> list[dict]:
    """A file's data_seeds as a list of seed dicts (null: none; a dict; a list of dicts)."""
    if value is None:
        return []
    return [value] if isinstance(value, dict) else list(value)


def _uses_reporting_seeds(record: dict, reporting: dict[str, int]) -> bool:
    return any(seeds.get(key) == value for seeds in _seed_sets(record["data_seeds"]) for key, value in reporting.items())


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_result_files_say_what_made_them_and_on_which_seeds(path):
    record = json.loads(path.read_text())
    assert "data_seeds" in record, f"{path.name} does not record data_seeds (benchmarks/provenance.py)"
    for seeds in _seed_sets(record["data_seeds"]):
        assert set(seeds) <= {"simulate", "volunteers", "morphology", "population"}, path.name
    assert record.get("command"), f"{path.name} does not record its command"
    if path.name in FINAL_REPORTING_RUNS or _uses_reporting_seeds(record, reporting_seeds()):
        # a file quoted as a result is made by committed code (its commit names no local change)
        assert record.get("commit") and "+uncommitted" not in record["commit"], path.name


def test_only_the_final_reporting_runs_measured_the_reporting_seeds():
    reporting = reporting_seeds()
    offenders = [p.name for p in sorted(RESULTS.glob("*.json"))
                 if p.name not in FINAL_REPORTING_RUNS and _uses_reporting_seeds(json.loads(p.read_text()), reporting)]
    assert not offenders, (f"made on the reporting seeds {reporting} but not a final reporting run: {offenders}; "
                           "compare settings on the development seeds (config/development.yaml)")


def test_reporting_development_and_test_seeds_are_apart():
    reporting = reporting_seeds()
    development = data_seeds(merged_config([REPO / "config" / "development.yaml"]))
    tests = data_seeds(merged_config([REPO / "tests" / "config" / "config.yaml"]))
    for other in (development, tests):
        assert not set(reporting.values()) & set(other.values()), (reporting, other)
    assert yaml.safe_load((REPO / "config" / "config.yaml").read_text())["report"]["seed_role"] == "reporting"


def test_the_guard_catches_a_file_on_the_reporting_seeds():
    reporting = reporting_seeds()
    assert _uses_reporting_seeds({"data_seeds": [{"simulate": 1}, dict(reporting)]}, reporting)
    assert _uses_reporting_seeds({"data_seeds": {"volunteers": reporting["volunteers"]}}, reporting)
    assert not _uses_reporting_seeds({"data_seeds": None}, reporting)
    assert not _uses_reporting_seeds({"data_seeds": {"simulate": reporting["volunteers"]}}, reporting)
