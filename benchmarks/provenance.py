"""What a benchmark's result file records about where it comes from (one definition for every
script in benchmarks/): the commit of the code, and the simulation seeds of the data it measured
(``data_seeds``), so that a file made on the reporting seeds can be told apart
(tests/test_protocol.py: only the final reporting runs may be)."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO = Path(__file__).resolve().parents[1]


def command_line() -> str:
    """The command that ran this benchmark, quoted so that it can be pasted back into a shell."""
    return "python " + shlex.join(sys.argv)


@functools.cache
def git_commit() -> str | None:
    """Short HEAD commit, with ``+uncommitted`` when tracked files (result files aside) differ from it;
    None outside git. Read once, when this module is imported (a benchmark's start): the code a
    long benchmark runs is the code it began with, whatever is committed while it runs."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        # result files a benchmark run has just rewritten do not make the code uncommitted
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def merged_config(configfiles: Iterable[str | Path] = ()) -> dict[str, Any]:
    """config/config.yaml with the given files merged on top, as ``snakemake --configfile`` does."""
    from clumpfinder.config import deep_update

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for f in configfiles:
        cfg = deep_update(cfg, yaml.safe_load(Path(f).read_text()) or {})
    return cfg


def data_seeds(config: dict[str, Any]) -> dict[str, int]:
    """The seeds of a configuration's simulated data: survey, volunteers, morphology votes and the
    pretraining population."""
    return {"simulate": config["simulate"]["seed"], "volunteers": config["volunteers"]["seed"],
            "morphology": config["morphology"]["seed"], "population": config["morphology"]["population"]["seed"]}


def reporting_seeds() -> dict[str, int]:
    """The embedded default's seeds: the reporting seeds (docs/protocol.md)."""
    return data_seeds(merged_config())


def run_data_seeds(results: str | Path, configfiles: Iterable[str | Path] = ()) -> dict[str, int]:
    """The seeds of a workflow run's data, given the configuration files it was run with; checked
    against the survey seed its simulation logged, so that a run is never recorded under another
    run's seeds (an error names both)."""
    seeds = data_seeds(merged_config(configfiles))
    log = Path(results) / "logs" / "simulate_survey.log"
    if log.exists():
        found = re.search(r"subjects \(seed (\d+),", log.read_text())
        if found and int(found.group(1)) != seeds["simulate"]:
            raise SystemExit(f"{results} was simulated with seed {found.group(1)}, but the configuration given "
                             f"({', '.join(map(str, configfiles)) or 'config/config.yaml alone'}) has seed "
                             f"{seeds['simulate']}: pass the run's --configfile (e.g. config/development.yaml)")
    return seeds


git_commit()  # at import: the benchmark's start
