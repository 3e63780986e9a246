"""The Snakemake workflow: lint, formatting, dry runs, config errors, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

pytestmark = pytest.mark.workflow
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TEST_CONFIG = REPO / "tests" / "config" / "config.yaml"


def smk(*args, cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = SNAKEMAKE + ["-s", str(REPO / "Snakefile"), "--directory", str(cwd), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def test_lint(tmp_path):
    proc = smk("--lint", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt():
    exe = Path(sys.executable).with_name("snakefmt")  # the test environment's own snakefmt
    proc = subprocess.run([str(exe) if exe.exists() else shutil.which("snakefmt") or "snakefmt", "--check",
                           "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _jobs(dry_run_output: str) -> dict[str, int]:
    """Job counts per rule from the dry run's 'Job stats' table."""
    table = dry_run_output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M) if m.group(1) != "total"}


def test_default_dry_run(tmp_path, default_config):
    proc = smk("-n", "--cores", "2", cwd=tmp_path)
    jobs = _jobs(proc.stdout + proc.stderr)
    n_b, n_n = len(default_config["backbones"]), len(default_config["labels"]["n_train"])
    assert n_b >= 2 and n_n >= 3
    assert jobs["train"] == n_b * n_n and jobs["evaluate"] == n_b * n_n and jobs["subset"] == n_n
    assert jobs["gallery"] == n_n
    for rule in ("simulate_survey", "simulate_volunteers", "simulate_morphology", "pretrain_morphology", "consensus",
                 "split", "truth_labels", "summary", "plot_pr", "plot_flux", "plot_consensus", "all"):
        assert jobs[rule] == 1


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
    bad = tmp_path / "bad.yaml"
    bad.write_text(override)
    proc = smk("-n", "--cores", "1", "--configfile", str(bad), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "validat" in out.lower() and message in out, out[-3000:]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole DAG on the tiny test configuration, once per module."""
    work = tmp_path_factory.mktemp("tiny_run")
    t0 = time.perf_counter()
    proc = smk("--cores", "2", "--configfile", str(TEST_CONFIG), cwd=work)
    return {"dir": work, "proc": proc, "seconds": time.perf_counter() - t0}


def test_tiny_run_outputs(tiny_run, tiny_config):
    res = tiny_run["dir"] / "results"
    for rel in ("survey/manifest.csv", "survey/truth.csv", "survey/classifications.csv", "survey/gold.csv",
                "consensus/boxes.csv", "consensus/subjects.csv", "consensus/volunteers.csv",
                "consensus/report.json", "labels/train.json", "labels/val.json", "labels/test.json",
                "labels/test_truth.json", "summary.csv", "comparison.csv", "summary.md", "summary.html",
                *[f"plots/{name}.{ext}" for ext in ("png", "pdf")
                  for name in ("completeness_purity", "pr_curves", "completeness_vs_flux", "consensus",
                               *[f"gallery/n{n}" for n in tiny_config["labels"]["n_train"]])]):
        assert (res / rel).stat().st_size > 0, rel
    n_gal = tiny_config["simulate"]["n_galaxies"]
    assert len(list((res / "survey" / "png").glob("*.png"))) == n_gal
    assert len(list((res / "survey" / "fits").glob("*.fits"))) == n_gal
    # the EM consensus (default) keeps its attributes per annotation, SWAP and risk per subject
    report = json.loads((res / "consensus" / "report.json").read_text())["consensus"]
    assert report["method"] == "em" and report["swap"]["gold_subjects"] > 0
    anns = json.loads((res / "labels" / "train.json").read_text())["annotations"]
    assert anns and all(0 <= a["false_pos_prob"] <= 1 and a["n_votes"] >= 1 for a in anns)
    subjects = pd.read_csv(res / "consensus" / "subjects.csv")
    assert subjects["swap_prob"].between(0, 1).all() and (subjects["risk"] >= 0).all()
    volunteers = pd.read_csv(res / "consensus" / "volunteers.csv")
    assert volunteers["p_fp"].between(0, 1).all() and (volunteers["n_classifications"] > 0).all()
    # finished training jobs delete their resume checkpoints
    assert not [p for p in (res / "checkpoints").rglob("*") if p.is_file()]
    # no temporary files left behind by the atomic writers
    assert not [p for p in res.rglob(".*") if p.name != ".snakemake_timestamp"]
    for b in tiny_config["backbones"]:
        for n in tiny_config["labels"]["n_train"]:
            log = (res / "logs" / "train" / f"{b}_n{n}_seed0.log").read_text()
            assert re.search(r"epoch 1/\d+ step \d+ loss [\d.]+ .* s [\d.]+ img/s", log), log
            assert (res / "models" / b / f"n{n}" / "seed0" / "model.pt").exists()
            sub = json.loads((res / "labels" / f"train_n{n}.json").read_text())
            assert len(sub["images"]) == n


def test_tiny_run_summary_in_range(tiny_run, tiny_config):
    table = pd.read_csv(tiny_run["dir"] / "results" / "summary.csv")
    n_cells = len(tiny_config["backbones"]) * len(tiny_config["labels"]["n_train"])
    assert len(table) == n_cells
    assert set(table["backbone"]) == set(tiny_config["backbones"])
    for ref in ("consensus", "truth"):
        for col in ("AP", "AP50", "AP75", "AR", "completeness"):
            v = table[f"{ref}_{col}"]
            assert ((v >= 0) & (v <= 1)).all(), (ref, col, v.tolist())
        p = table[f"{ref}_purity"]
        assert all(math.isnan(x) or 0 <= x <= 1 for x in p)
        assert (table[f"{ref}_n_gt"] > 0).all()


def test_tiny_run_subsets_nested(tiny_run):
    lab = tiny_run["dir"] / "results" / "labels"
    small, big = (json.loads((lab / f"train_n{n}.json").read_text()) for n in (8, 20))
    train = json.loads((lab / "train.json").read_text())
    ids = lambda c: {im["id"] for im in c["images"]}  # noqa: E731
    assert ids(small) < ids(big) <= ids(train)
    test = json.loads((lab / "test.json").read_text())
    assert not ids(test) & ids(train)


def test_rerun_does_nothing(tiny_run):
    t0 = time.perf_counter()
    proc = smk("--cores", "2", "--configfile", str(TEST_CONFIG), cwd=tiny_run["dir"])
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert time.perf_counter() - t0 < 30


def test_training_size_larger_than_pool_is_explained(tiny_run, tmp_path):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("labels:\n  n_train: [5000]\n")
    proc = smk("--cores", "1", "--configfile", str(TEST_CONFIG), str(cfg), cwd=tiny_run["dir"], check=False)
    assert proc.returncode != 0
    assert "training pool has only" in proc.stdout + proc.stderr + (
        tiny_run["dir"] / "results" / "logs" / "subset_n5000.log").read_text()


@pytest.mark.parametrize(
    "override, expected",
    [
        # one backbone's learning rate: only its train/evaluate jobs and the summary
        ("backbones:\n  resnet18_morphology:\n    training: {lr: 0.0005}\n",
         {"train": 2, "evaluate": 2, "summary": 1, "plot_pr": 1, "plot_flux": 1, "gallery": 2, "all": 1}),
        # the morphology pretraining: its encoder, the clumpy classifier built on it, their detectors
        ("pretrain:\n  morphology: {epochs: 2}\n",
         {"pretrain_morphology": 1, "pretrain_clumpy": 1, "train": 4, "evaluate": 4, "summary": 1, "plot_pr": 1,
          "plot_flux": 1, "gallery": 2, "all": 1}),
        # a second training seed: one more train/evaluate job per cell, the same labels (the
        # galleries show the first seed's models and stay)
        ("sweep:\n  seeds: [0, 1]\n",
         {"train": 6, "evaluate": 6, "summary": 1, "plot_pr": 1, "plot_flux": 1, "all": 1}),
        # the consensus method: everything downstream of the consensus, nothing upstream
        ("consensus:\n  method: dbscan\n",
         {"consensus": 1, "split": 1, "subset": 2, "truth_labels": 1, "pretrain_morphology": 1,
          "pretrain_clumpy": 1, "train": 6, "evaluate": 6, "summary": 1, "plot_pr": 1, "plot_flux": 1, "gallery": 2,
          "plot_consensus": 1, "all": 1}),
    ],
)
def test_a_change_reruns_only_what_depends_on_it(tiny_run, tmp_path, override, expected):
    cfg = tmp_path / "change.yaml"
    cfg.write_text(override)
    proc = smk("-n", "--cores", "2", "--configfile", str(TEST_CONFIG), str(cfg), cwd=tiny_run["dir"])
    assert _jobs(proc.stdout + proc.stderr) == expected


def test_summary_documents_and_report(tiny_run, tiny_config):
    """summary.md answers the question in its first lines; the Snakemake report builds with every
    figure and table under its category, with captions."""
    res = tiny_run["dir"] / "results"
    md = (res / "summary.md").read_text()
    smallest = min(tiny_config["labels"]["n_train"])
    assert f"With n = {smallest} training images, **" in md and "## Against the truth labels" in md
    comparison = pd.read_csv(res / "comparison.csv")
    assert set(comparison["backbone"]) == set(tiny_config["backbones"])
    assert (comparison.loc[comparison["backbone"] == "resnet18_scratch", "f1_diff"] == 0).all()  # the baseline
    smk("--report", "results/report.html", "--configfile", str(TEST_CONFIG), cwd=tiny_run["dir"])
    page = (res / "report.html").read_text()
    assert len(page) > 100_000
    for text in ("1. Headline", "2. Detection quality", "3. Gallery", "4. Volunteer consensus", "5. Tables",
                 "Giant star-forming clumps with Faster R-CNN", "summary.html", "completeness_purity.png",
                 "pr_curves.png", "completeness_vs_flux.png", "consensus.png", "comparison.csv",
                 "paired difference to the baseline", "Are the faint clumps the ones missed?"):
        assert text in page, text


def test_paper_config_dry_run(tmp_path):
    """config/paper.yaml: Popp's five ResNet-50 arms x six sizes; hub weights fetched by a
    localrule, the clumpy arm pretrained once."""
    (tmp_path / "data").mkdir()
    for name in ("clump_scout_subjects.csv", "clump_scout_classifications.csv"):  # the user's exports
        (tmp_path / "data" / name).write_text("")
    proc = smk("-n", "--cores", "1", "--configfile", str(REPO / "config" / "paper.yaml"), cwd=tmp_path)
    jobs = _jobs(proc.stdout + proc.stderr)
    assert jobs["fetch_weights"] == 5 and jobs["pretrain_clumpy"] == 1 and "pretrain_morphology" not in jobs
    assert jobs["train"] == jobs["evaluate"] == 35 and jobs["subset"] == 7  # 200 ... 12,000 and full
    assert jobs["subject_list"] == jobs["download"] == jobs["consensus"] == 1 and "simulate_survey" not in jobs
    assert re.search(r"rule train:.*?gpu=1", proc.stdout, re.S)  # a GPU per training job
    # the same setup on the simulated survey
    proc = smk("-n", "--cores", "1", "--configfile", str(REPO / "config" / "paper.yaml"), "--config",
               "data={'source': 'simulate'}", cwd=tmp_path)
    jobs = _jobs(proc.stdout + proc.stderr)
    assert jobs["simulate_survey"] == 1 and jobs["train"] == 35 and "download" not in jobs


@pytest.mark.parametrize(
    "override, message",
    [
        ("sweep:\n  backbones: [resnet18_scratch, nope]\n", "sweep.backbones names 'nope'"),
        ("report:\n  baseline: resnet50_imagenet\n", "report.baseline 'resnet50_imagenet' is not a backbone"),
    ],
)
def test_a_name_outside_the_sweep_is_an_error(tmp_path, override, message):
    cfg = tmp_path / "names.yaml"
    cfg.write_text(override)
    proc = smk("-n", "--cores", "1", "--configfile", str(cfg), cwd=tmp_path, check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr


def test_tiny_run_pretraining_outputs(tiny_run):
    res = tiny_run["dir"] / "results" / "pretrain"
    morph = json.loads((res / "morphology" / "resnet18_unit" / "metrics.json").read_text())
    assert morph["pool"]["used"] == morph["pool"]["pool"] > 0 and morph["max_logit_change_under_d4"] < 1e-4
    clumpy = json.loads((res / "clumpy" / "resnet18_clumpy" / "metrics.json").read_text())
    assert clumpy["init"] == "pretrain:morphology" and list(clumpy["questions"]) == ["clumpy"]
    splits = pd.read_csv(tiny_run["dir"] / "results" / "labels" / "splits.csv")
    assert clumpy["pool"]["pool"] == (splits["split"] == "train").sum()
    assert morph["pool"]["pool"] == (splits["split"] != "test").sum()
