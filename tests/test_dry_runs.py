"""The Snakemake workflow without running it: lint, formatting, dry runs of every configuration,
configuration errors, resources of the profiles, and the code each stage declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TEST_CONFIG, job_blocks, job_counts, smk

pytestmark = pytest.mark.workflow


def test_lint(tmp_path):
    proc = smk("--lint", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt():
    exe = Path(sys.executable).with_name("snakefmt")  # the test environment's own snakefmt
    proc = subprocess.run([str(exe) if exe.exists() else shutil.which("snakefmt") or "snakefmt", "--check",
                           "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def failing_dry_run(tmp_path, override: str) -> str:
    """The output of a dry run with `override` as an extra config file, which must fail."""
    cfg = tmp_path / "override.yaml"
    cfg.write_text(override)
    proc = smk("-n", "--cores", "1", "--configfile", cfg, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


@pytest.fixture
def paper_workdir(tmp_path):
    """A working directory with (empty) Clump Scout exports where config/paper.yaml expects them."""
    (tmp_path / "data").mkdir()
    for name in ("clump_scout_subjects.csv", "clump_scout_classifications.csv"):
        (tmp_path / "data" / name).write_text("")
    return tmp_path


def test_default_dry_run(tmp_path, default_config):
    proc = smk("-n", "--cores", "2", cwd=tmp_path)
    jobs = job_counts(proc.stdout + proc.stderr)
    n_b, n_n = len(default_config["backbones"]), len(default_config["labels"]["n_train"])
    n_s = len(default_config["sweep"]["seeds"])
    assert n_b >= 2 and n_n >= 2 and n_s >= 3  # enough training seeds to decide a difference
    assert jobs["train"] == n_b * n_n * n_s and jobs["evaluate"] == n_b * n_n * n_s and jobs["subset"] == n_n
    assert jobs["gallery"] == n_n
    for rule in ("simulate_survey", "simulate_volunteers", "simulate_pretraining_population", "simulate_morphology",
                 "pretrain_morphology", "consensus", "split", "truth_labels", "summary", "plot_pr", "plot_flux",
                 "plot_consensus", "all"):
        assert jobs[rule] == 1
    # the partnership replay is a target of its own
    assert "partnership_replay" not in jobs
    replay = job_counts(smk("-n", "--cores", "2", "partnership", cwd=tmp_path).stdout)
    assert replay["partnership_replay"] == 1 and replay["plot_partnership"] == 1 and "train" not in replay


@pytest.mark.parametrize(
    "override, message",
    [
        ("simulate:\n  n_galaxies: lots\n", "n_galaxies"),
        ("training:\n  batch_size: 0\n", "batch_size"),
        ("backbones:\n  r18:\n    arch: resnet18\n", "'init' is a required property"),
        ("consensus:\n  method: kmeans\n", "kmeans"),
        ("consensus:\n  swap:\n    mode: guess\n", "guess"),
        ("backbones:\n  r18:\n    arch: resnet18\n    init: 'hf_hub:zoobot'\n", "hf_hub:zoobot"),
        ("pretrain:\n  pool: [train, test]\n", "test"),
    ],
)
def test_config_error_names_the_key(tmp_path, override, message):
    out = failing_dry_run(tmp_path, override)
    assert "validat" in out.lower() and message in out, out[-3000:]


def test_missing_real_inputs_are_named_with_where_to_get_them(tmp_path):
    """config/paper.yaml in a fresh clone: the run stops at start-up naming both missing exports
    and the page that says where they come from, not with Snakemake's bare MissingInputException."""
    proc = smk("-n", "--cores", "1", "--configfile", REPO / "config" / "paper.yaml", cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "MissingInputException" not in out
    assert "data.classifications: data/clump_scout_classifications.csv is not a file" in out
    assert "data.subjects: data/clump_scout_subjects.csv is not a file" in out and "docs/real-data.md" in out


def test_partnership_labels_can_train_the_detectors(tmp_path):
    cfg = tmp_path / "labels.yaml"
    cfg.write_text("partnership:\n  labels_for_training: true\n")
    proc = smk("-n", "--configfile", TEST_CONFIG, cfg, cwd=tmp_path)
    split = next(j for j in job_blocks(proc.stdout) if j["rule"] == "split")
    assert "results/partnership/boxes.csv" in split["input"] and "results/consensus/boxes.csv" not in split["input"]


def test_every_stage_declares_the_package_code_it_runs(tmp_path):
    """Snakemake follows a rule's script but not the modules the script imports: every script rule
    lists those (directly or indirectly imported) as input, so that editing a module reruns the
    stages that run it."""
    used = []
    for smk_file in (REPO / "rules").glob("*.smk"):  # every rule that runs a script, on any data source
        for rule in re.split(r"\nrule ", smk_file.read_text())[1:]:
            if "script:" in rule:
                script = re.search(r'script:\s+"\.\./scripts/(\w+\.py)"', rule)
                assert script and f'code=package_code("{script.group(1)}")' in rule, rule.split(":")[0]
                used.append(script.group(1))
    assert len(used) == 33 and set(used) == {p.name for p in (REPO / "scripts").glob("*.py")}
    jobs = [j for j in job_blocks(smk("-n", "--configfile", TEST_CONFIG, cwd=tmp_path).stdout) if j["rule"] != "all"]
    assert len({j["rule"] for j in jobs}) == 27
    for job in jobs:
        assert "src/clumpfinder/__init__.py" in job["input"], job["rule"]
    by_rule = {j["rule"]: j["input"] for j in jobs}
    # evaluate loads models with the detector module (model files live there, not in the training loop)
    for module in ("scoring/evaluate", "metrics", "detection/detector", "imaging", "io", "detection/__init__",
                   "scoring/__init__"):
        assert f"src/clumpfinder/{module}.py" in by_rule["evaluate"], module
    for module in ("crowd/consensus", "crowd/boxem", "crowd/swap", "data/zooniverse"):
        assert f"src/clumpfinder/{module}.py" in by_rule["consensus"], module
    assert "train.py" not in by_rule["consensus"] and "boxem.py" not in by_rule["train"]
    assert "train.py" not in by_rule["evaluate"] and "splits.py" not in by_rule["evaluate"]
    # the figures read images without the simulator or the split's scikit-learn
    assert "simulate.py" not in by_rule["gallery"] and "splits.py" not in by_rule["gallery"]
    # the catalogue runs the detector and photutils, not the training loop or the consensus
    for module in ("clumps/measure", "clumps/sources", "detection/detector", "imaging"):
        assert f"src/clumpfinder/{module}.py" in by_rule["clump_catalogue"], module
    assert "loop.py" not in by_rule["clump_catalogue"] and "boxem.py" not in by_rule["clump_catalogue"]


def test_paper_config_dry_run(paper_workdir):
    """config/paper.yaml: Popp's five ResNet-50 arms x six sizes; hub weights fetched by a
    localrule, the clumpy arm pretrained once."""
    proc = smk("-n", "--cores", "16", "--resources", "gpu=1", "--configfile", REPO / "config" / "paper.yaml",
               cwd=paper_workdir)
    jobs = job_counts(proc.stdout + proc.stderr)
    assert jobs["fetch_weights"] == 5 and jobs["pretrain_clumpy"] == 1 and "pretrain_morphology" not in jobs
    assert jobs["train"] == jobs["evaluate"] == 35 and jobs["subset"] == 7  # 200 ... 12,000 and full
    assert jobs["subject_list"] == jobs["download"] == jobs["consensus"] == 1 and "simulate_survey" not in jobs
    # a GPU per training, pretraining, evaluation and catalogue job, which `--resources gpu=1` makes take turns
    gpu = [j["rule"] for j in job_blocks(proc.stdout) if j["resources"].get("gpu") == "1"]
    assert sorted(set(gpu)) == ["clump_catalogue", "evaluate", "pretrain_clumpy", "train"] and len(gpu) == 72
    # the same setup on the simulated survey
    proc = smk("-n", "--cores", "1", "--configfile", str(REPO / "config" / "paper.yaml"), "--config",
               "data={'source': 'simulate'}", cwd=paper_workdir)
    jobs = job_counts(proc.stdout + proc.stderr)
    assert jobs["simulate_survey"] == 1 and jobs["train"] == 35 and "download" not in jobs


def test_slurm_profile_resources(paper_workdir):
    """What profiles/slurm asks SLURM for, without a cluster (tests/test_slurm.py submits for real):
    a GPU and `threads` CPUs per GPU for the GPU rules, the config's memory and time limits, more
    memory on a retry."""
    # (a dry run caps threads at --cores, 1 unless given; a cluster run does not cap them)
    jobs = job_blocks(smk("-n", "--cores", "64", "--workflow-profile", REPO / "profiles" / "slurm", "--configfile",
                          REPO / "config" / "paper.yaml", cwd=paper_workdir).stdout)
    train = next(j["resources"] for j in jobs if j["rule"] == "train")
    assert (train["gpu"], train["cpus_per_gpu"], train["mem_mb"], train["runtime"]) == ("1", "8", "24000", "720")
    for rule in ("evaluate", "pretrain_clumpy"):
        res = next(j["resources"] for j in jobs if j["rule"] == rule)
        assert res["gpu"] == "1" and res["cpus_per_gpu"] == "8", rule
    consensus = next(j["resources"] for j in jobs if j["rule"] == "consensus")
    assert "gpu" not in consensus and consensus["mem_mb"] == "4000"
    # the second attempt of a job asks for twice the memory
    retry = job_blocks(smk("-n", "--workflow-profile", REPO / "profiles" / "slurm", "--configfile",
                           REPO / "config" / "paper.yaml", "--attempt", "2", cwd=paper_workdir).stdout)
    assert next(j["resources"] for j in retry if j["rule"] == "train")["mem_mb"] == "48000"
    assert next(j["resources"] for j in retry if j["rule"] == "split")["mem_mb"] == "4000"  # the profile's default
    # two GPUs per training (data parallel, docs/gpu.md): the command line overrides the profile
    two = job_blocks(smk("-n", "--cores", "64", "--workflow-profile", REPO / "profiles" / "slurm", "--configfile",
                         REPO / "config" / "paper.yaml", "--set-resources", "train:gpu=2", cwd=paper_workdir).stdout)
    assert {j["resources"]["gpu"] for j in two if j["rule"] == "train"} == {"2"}
    assert {j["resources"]["gpu"] for j in two if j["rule"] == "evaluate"} == {"1"}
