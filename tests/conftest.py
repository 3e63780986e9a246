"""Shared fixtures: the repository's configuration, a tiny simulated survey, and the whole workflow
run once on the tiny test configuration; `smk` runs the snakemake command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clumpfinder.config import deep_update  # noqa: F401  (the tests' config merge)

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO / "tests" / "config" / "config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# what a copy of the workflow needs to run (scripts import the package from the copy's src/)
WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "src", "config", "envs", "report", "profiles")


def smk(*args, cwd: Path, snakefile: Path = REPO / "Snakefile", check: bool = True, timeout: int = 900,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake -s SNAKEFILE --directory CWD ARGS`; its stdout/stderr in the error when it fails."""
    cmd = SNAKEMAKE + ["-s", str(snakefile), "--directory", str(cwd), *map(str, args)]
    Path(cwd).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**(env or os.environ), "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a (dry) run's output."""
    table = output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M) if m.group(1) != "total"}


def job_blocks(output: str) -> list[dict]:
    """The jobs a (dry) run prints, in order: rule, whether it ran as a localrule, the output line
    where it started, and its '    key: value' lines (input, jobid, resources, ...)."""
    jobs, current = [], None
    for i, line in enumerate(output.splitlines()):
        if m := re.match(r"^(local)?rule (\w+):$", line):
            current = {"rule": m.group(2), "local": bool(m.group(1)), "line": i}
            jobs.append(current)
        elif current is not None and (m := re.match(r"^    (\w+): (.*)$", line)):
            current.setdefault(m.group(1), m.group(2))
        else:
            current = None
    for job in jobs:
        job["resources"] = dict(kv.split("=", 1) for kv in job.get("resources", "").split(", ") if "=" in kv)
    return jobs


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow's files (modification times kept); returns its Snakefile."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=ignore)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)
    return dest / "Snakefile"


@pytest.fixture(scope="session")
def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.fixture(scope="session")
def tiny_config(default_config) -> dict:
    return deep_update(default_config, yaml.safe_load((REPO / "tests" / "config" / "config.yaml").read_text()))


@pytest.fixture(scope="session")
def tiny_survey(tmp_path_factory, tiny_config):
    """A 60-galaxy survey rendered once per test session."""
    from clumpfinder.data.simulate import SurveySpec, simulate_survey

    root = tmp_path_factory.mktemp("survey")
    spec = SurveySpec.from_config(tiny_config["simulate"])
    manifest, truth = simulate_survey(spec, root / "png", root / "fits")
    return {"root": root, "spec": spec, "manifest": manifest, "truth": truth}


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_survey, tiny_config):
    from clumpfinder.data.volunteers import CrowdSpec, gold_subjects, simulate_export

    path = tmp_path_factory.mktemp("export") / "classifications.csv"
    spec = CrowdSpec.from_config(tiny_config["volunteers"])
    pop = simulate_export(spec, tiny_survey["manifest"], tiny_survey["truth"], path)
    gold = gold_subjects(spec, tiny_survey["manifest"], tiny_survey["truth"])
    return {"path": path, "population": pop, "gold": gold.set_index("subject_id")["has_clumps"]}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole DAG on the tiny test configuration, once per session.

    It runs from a copy of the workflow, so that tests may edit the copy's code and see what
    reruns, as on a workstation with one GPU: the training and pretraining jobs ask for a GPU
    (tests/config) and `--resources gpu=1` makes them take turns."""
    root = tmp_path_factory.mktemp("tiny_run")
    snakefile = copy_workflow(root / "workflow")
    t0 = time.perf_counter()
    proc = smk("--cores", "2", "--resources", "gpu=1", "--configfile", TEST_CONFIG, cwd=root / "work",
               snakefile=snakefile)
    return {"dir": root / "work", "snakefile": snakefile, "proc": proc, "seconds": time.perf_counter() - t0}


@pytest.fixture(scope="session")
def tiny_report(tiny_run) -> Path:
    """`snakemake --report` of the tiny run, built once per session."""
    smk("--report", "results/report.html", "--configfile", TEST_CONFIG, cwd=tiny_run["dir"],
        snakefile=tiny_run["snakefile"])
    return tiny_run["dir"] / "results" / "report.html"


#: the test modules that read the whole DAG's run on the tiny configuration (tiny_run): with the
#: SLURM run, which they compare with it, the longest chain of the suite
DAG_MODULES = ("test_report_browser.py", "test_slurm.py", "test_workflow.py")


def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist (``-n``, as pyproject's addopts ask) each module's tests run on one worker,
    so a module's fixtures (a snakemake run, a SLURM cluster) are made once, and the modules of the
    tiny DAG's run share one worker (its session fixture is made once): that run and the SLURM run
    are the suite's critical path, and the other worker takes everything else meanwhile."""
    from xdist.scheduler import LoadScopeScheduling

    class DagTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tiny_run" if module.rsplit("/", 1)[-1] in DAG_MODULES else module

    return DagTogether(config, log)


def pytest_collection_modifyitems(config, items):
    """The tiny DAG's modules first (the scheduler hands out modules in this order, so their worker
    starts on the longest chain at once). The SLURM test installs packages with apt-get and starts
    daemons: it runs only when asked (CLUMPFINDER_SLURM=1, or CLUMPFINDER_REQUIRE_SLURM=1 as
    .ci/run sets, which also makes a failed install an error)."""
    items.sort(key=lambda item: item.path.name not in DAG_MODULES)  # stable: each module's order kept
    if os.environ.get("CLUMPFINDER_SLURM") == "1" or os.environ.get("CLUMPFINDER_REQUIRE_SLURM") == "1":
        return
    skip = pytest.mark.skip(reason="SLURM test not asked for: set CLUMPFINDER_SLURM=1 (installs slurm-wlm, as root)")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)
