"""profiles/slurm against a real SLURM: a single-node cluster on localhost (tests/slurm_cluster.py)
runs the tiny DAG for one backbone through the profile, unchanged but for tests/slurm (job status
from squeue, as this cluster has no accounting database). Runs only when asked (CLUMPFINDER_SLURM=1;
it installs slurm-wlm with apt-get), and is then skipped where SLURM cannot be installed (not root,
no apt-get, apt-get failing); CLUMPFINDER_REQUIRE_SLURM=1 (set by .ci/run) asks for it and makes
that an error instead."""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime

import pytest

from conftest import REPO, TEST_CONFIG, job_blocks, smk

sys.path.insert(0, str(REPO / "tests"))
from slurm_cluster import InstallError, LocalSlurm, install, unavailable_reason  # noqa: E402

pytestmark = pytest.mark.slurm

# the longest chain of the tiny DAG: morphology pretraining -> clumpy classifier -> detector, at one
# training-set size; the simulation with two threads, which SLURM must give it as two CPUs
OVERRIDE = "sweep:\n  backbones: [resnet18_clumpy]\nlabels:\n  n_train: [8]\nthreads:\n  simulate: 2\n"
SUBMITTED = {"simulate_survey", "simulate_volunteers", "simulate_pretraining_population", "simulate_morphology",
             "consensus", "pretrain_morphology", "image_cache",
             "pretrain_clumpy", "train", "evaluate", "classical", "clump_catalogue", "partnership_replay"}
LOCAL = {"split", "subset", "truth_labels", "summary", "plot_pr", "plot_flux", "gallery", "plot_consensus",
         "consensus_ceiling", "plot_learning", "catalogue_model", "catalogue_validation", "plot_catalogue",
         "plot_partnership", "all"}
GPU_RULES = {"pretrain_morphology", "pretrain_clumpy", "train", "evaluate", "clump_catalogue", "partnership_replay"}
TIMING_KEYS = {"seconds", "img_per_s", "galaxies_per_s", "val_seconds"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    required = os.environ.get("CLUMPFINDER_REQUIRE_SLURM") == "1"
    root = tmp_path_factory.mktemp("slurm")
    try:
        reason = unavailable_reason()
        if reason:
            raise InstallError(reason)
        install(root / "apt.log")
    except InstallError as err:
        if required:
            raise
        pytest.skip(f"no local SLURM: {err}")
    slurm = LocalSlurm(root / "cluster", gpus=1).start()
    yield slurm
    slurm.stop()


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm_run")
    override = work / "one_backbone.yaml"
    override.write_text(OVERRIDE)
    args = ["--workflow-profile", REPO / "profiles" / "slurm", "--profile", REPO / "tests" / "slurm",
            "--configfile", TEST_CONFIG, override]
    proc = smk(*args, cwd=work, env=cluster.env, timeout=600)
    log = proc.stderr  # a run (not a dry run) reports its jobs on stderr
    submitted = {}  # snakemake job id -> SLURM job id and log
    for m in re.finditer(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", log):
        submitted[m.group(1)] = {"slurm_id": m.group(2), "slurm_log": m.group(3)}
    jobs = job_blocks(log)
    for job in jobs:
        job.update(submitted.get(job.get("jobid"), {}))
    return {"dir": work, "proc": proc, "jobs": jobs, "args": args, "cluster": cluster}


def test_jobs_went_through_slurm(slurm_run):
    jobs, cluster = slurm_run["jobs"], slurm_run["cluster"]
    assert {j["rule"] for j in jobs if "slurm_id" in j} == SUBMITTED
    assert {j["rule"] for j in jobs if j["local"]} == LOCAL
    assert all(j["local"] != ("slurm_id" in j) for j in jobs)  # every other job has a SLURM job id
    for job in (j for j in jobs if "slurm_id" in j):
        info = cluster.job(job["slurm_id"])
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (job["rule"], info)
        # the job log (kept by tests/slurm): snakemake ran the job inside the allocation
        assert "--executor slurm-jobstep" in (slurm_run["dir"] / job["slurm_log"]).read_text()
        # what the profile and the config asked for: a GPU for the GPU rules (sbatch --gpus=1)
        # with the rule's threads as CPUs per GPU (--cpus-per-gpu), memory and time from the
        # config's resources, CPUs from the rule's threads for the others
        asks_gpu = re.search(r"gres[:/]gpu:1\b", info.get("TresPerJob", "")) is not None
        assert asks_gpu == (job["rule"] in GPU_RULES), (job["rule"], info.get("TresPerJob"))
        if asks_gpu:
            assert re.search(r"gres[:/]gpu:1\b", info.get("CpusPerTres", "")), (job["rule"], info)
        if job["rule"] == "train":
            assert info["TimeLimit"] == "02:00:00" and info["MinMemoryNode"] == "6000M"
        if job["rule"] == "simulate_survey":
            assert info["NumCPUs"] == "2"


def test_gpu_jobs_take_turns_on_the_node(slurm_run):
    """The node has one (fake) GPU: SLURM never runs two GPU jobs at once."""
    spans = []
    for job in slurm_run["jobs"]:
        if job["rule"] in GPU_RULES and "slurm_id" in job:
            info = slurm_run["cluster"].job(job["slurm_id"])
            spans.append(tuple(datetime.fromisoformat(info[k]) for k in ("StartTime", "EndTime")))
    spans.sort()
    assert len(spans) == 6  # two pretrainings, a training, an evaluation, the catalogue, the partnership replay
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_outputs_match_the_local_run(slurm_run, tiny_run):
    """Every table and JSON the cluster made equals the local run's (timings aside); the summary
    tables and the catalogue differ only because this sweep has one backbone."""
    ours, local = slurm_run["dir"] / "results", tiny_run["dir"] / "results"
    compared = []
    for path in sorted(p for p in ours.rglob("*") if p.suffix in (".csv", ".json")):
        rel = path.relative_to(ours)
        # the summary tables and the catalogue (made with the sweep's best detector) differ because
        # this sweep has one backbone
        if rel.parts[0] in ("logs", "benchmarks", "clumps") or rel.name in ("summary.csv", "comparison.csv"):
            continue
        if path.suffix == ".json":
            assert _without_timings(json.loads(path.read_text())) == _without_timings(
                json.loads((local / rel).read_text())), rel
        else:
            assert path.read_bytes() == (local / rel).read_bytes(), rel
        compared.append(str(rel))
    for rel in ("survey/manifest.csv", "consensus/boxes.csv", "labels/train_n8.json",
                "pretrain/clumpy/resnet18_clumpy/metrics.json", "eval/resnet18_clumpy/n8/seed0/predictions.json"):
        assert rel in compared


def test_rerun_through_the_profile_does_nothing(slurm_run):
    proc = smk(*slurm_run["args"], cwd=slurm_run["dir"], env=slurm_run["cluster"].env, timeout=120)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert "submitted with SLURM jobid" not in proc.stderr
