"""The whole workflow run once on the tiny configuration (tests/conftest.py: tiny_run): its outputs,
reruns after a change, the GPU turns, the summary and the report (static checks and dry runs:
test_dry_runs.py)."""

from __future__ import annotations

import json
import math
import os
import re

import pandas as pd
from astropy.io import fits
import pytest

from conftest import TEST_CONFIG, job_blocks, job_counts, smk

pytestmark = pytest.mark.workflow
# what a change to the volunteer consensus reruns: everything downstream of it, nothing upstream
# (the morphology pretraining learns from a population of its own, so it is not downstream)
# the catalogue's jobs: its detector is chosen among every model of the sweep, so any new model reruns them
CATALOGUE = {"catalogue_model": 1, "clump_catalogue": 1, "catalogue_validation": 1, "plot_catalogue": 1}
CONSENSUS_DOWNSTREAM = {"consensus": 1, "split": 1, "image_cache": 3, "subset": 2, "truth_labels": 1, "pretrain_clumpy": 1, "train": 6, "evaluate": 6, "summary": 1, "plot_pr": 1, "plot_flux": 1,
                        "gallery": 2, "plot_consensus": 1, "plot_learning": 1, "classical": 1,
                        "consensus_ceiling": 1, **CATALOGUE, "all": 1}
# the partnership replay reads the export and trains a detector: it reruns with either
PARTNERSHIP = {"partnership_replay": 1, "plot_partnership": 1}


def test_tiny_run_outputs(tiny_run, tiny_config):
    res = tiny_run["dir"] / "results"
    for rel in ("survey/manifest.csv", "survey/truth.csv", "survey/classifications.csv", "survey/gold.csv",
                "consensus/boxes.csv", "consensus/subjects.csv", "consensus/volunteers.csv",
                "consensus/report.json", "labels/train.json", "labels/val.json", "labels/test.json",
                "labels/test_truth.json", "eval/classical/metrics.json", "eval/consensus_ceiling/metrics.json",
                "summary.csv", "comparison.csv", "summary.md", "summary.html",
                *[f"partnership/{name}" for name in ("boxes.csv", "subjects.csv", "volunteers.csv", "curves.csv",
                                                     "summary.json")],
                *[f"plots/{name}.{ext}" for ext in ("png", "pdf")
                  for name in ("completeness_purity", "pr_curves", "learning_curves", "completeness_vs_flux", "consensus",
                               "partnership",
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
            assert re.search(r"step 2/\d+ \(epoch [\d.]+\) loss [\d.]+ .* [\d.]+ img/s; validation F1", log), log
            assert re.search(r"kept the weights of step \d+", log), log
            assert (res / "models" / b / f"n{n}" / "seed0" / "model.pt").exists()
            sub = json.loads((res / "labels" / f"train_n{n}.json").read_text())
            assert len(sub["images"]) == n


def test_tiny_run_catalogue(tiny_run, tiny_config):
    """The catalogue of the test split: tables with units and provenance, one overlay per galaxy, a
    report, the validation against the simulated truth, the summary figure."""
    from clumpfinder.clumps.tables import read_catalogue

    res = tiny_run["dir"] / "results"
    cat = res / "clumps"
    splits = pd.read_csv(res / "labels" / "splits.csv")
    test_ids = set(splits.loc[splits["split"] == "test", "subject_id"])
    tables = read_catalogue(cat / "catalogue.fits")
    galaxies = tables["GALAXIES"].to_pandas()
    assert set(galaxies["subject_id"]) == test_ids and len(tables["FAILURES"]) == 0
    assert {p.stem for p in (cat / "overlays").glob("*.png")} == {str(i) for i in test_ids}
    clumps = pd.read_csv(cat / "catalogue.csv")
    assert len(clumps) == len(tables["CLUMPS"]) == galaxies["n_clumps"].sum()
    header = fits.getheader(cat / "catalogue.fits", 0)
    # the detector: the cell with the best validation F1, its threshold chosen on validation
    metrics = {(b, str(n)): json.loads((res / "eval" / b / f"n{n}" / "seed0" / "metrics.json").read_text())
               for b in tiny_config["backbones"] for n in tiny_config["labels"]["n_train"]}
    best = max(metrics, key=lambda k: metrics[k]["threshold"]["val_at_score"]["f1"])
    assert (header["BACKBONE"], header["N_TRAIN"]) == best and header["SCORE"] == metrics[best]["score"]
    assert header["COMMIT"] and header["CONFIG_H"]
    # the survey's own images are the detector's field: seen whole; the exported detector records
    # that field (the simulation's), so that other images can be cut to it (clumpfinder detect)
    assert set(galaxies["field"]) == {"whole image"}
    from clumpfinder.clumps.model import load_detector

    field = load_detector(cat / "detector.pt")[2]["field"]
    assert field == {"radius": "half_light_radius", **{k: tiny_config["simulate"]["fov"][k]
                                                       for k in ("factor", "min_arcsec", "max_arcsec")},
                     "image_size": tiny_config["simulate"]["image_size"], "crop": tiny_config["labels"]["crop"]}
    report = json.loads((cat / "report.json").read_text())
    assert report["catalogued"] == len(test_ids) and report["source"] == "survey, test split"
    validation = json.loads((cat / "validation.json").read_text())
    assert validation["galaxies"] == len(test_ids) and validation["split"] == "test"
    assert {"position", "photometry", "flag"} <= set(validation)
    for ext in ("png", "pdf"):
        assert (res / "plots" / f"catalogue.{ext}").stat().st_size > 0


def test_pretraining_never_sees_a_detection_galaxy(tiny_run, tiny_config):
    """The morphology pretraining learns from a population simulated with a seed and subject ids of
    its own: no galaxy of train, val or test (nor any other survey galaxy) is in its pool, and its
    votes carry no truth column."""
    res = tiny_run["dir"] / "results"
    survey = pd.read_csv(res / "survey" / "manifest.csv")
    population = pd.read_csv(res / "pretraining" / "manifest.csv")
    n_pop = tiny_config["morphology"]["population"]["n_galaxies"]
    assert len(population) == n_pop and not set(population["subject_id"]) & set(survey["subject_id"])
    assert tiny_config["morphology"]["population"]["seed"] != tiny_config["simulate"]["seed"]
    assert not set(zip(population["ra"].round(5), population["dec"].round(5))) & set(
        zip(survey["ra"].round(5), survey["dec"].round(5)))
    splits = pd.read_csv(res / "labels" / "splits.csv")
    assert set(splits["subject_id"]) <= set(survey["subject_id"])
    votes = pd.read_csv(res / "pretraining" / "morphology_votes.csv")
    assert set(votes["subject_id"]) == set(population["subject_id"])
    assert not {"flux_fraction_g", "kind", "n_clumps", "n_odd"} & set(votes.columns)
    for metrics in (res / "pretrain" / "morphology").glob("*/metrics.json"):
        pool = json.loads(metrics.read_text())["pool"]
        assert pool == {"population": n_pop, "used": n_pop, "in_detection_survey": 0, "without_votes": 0}
    assert "reporting seeds" in (res / "summary.md").read_text()


def test_tiny_run_summary_in_range(tiny_run, tiny_config):
    table = pd.read_csv(tiny_run["dir"] / "results" / "summary.csv")
    n_cells = len(tiny_config["backbones"]) * len(tiny_config["labels"]["n_train"])
    assert len(table) == n_cells + 2  # and the two reference points
    assert set(table["backbone"]) == set(tiny_config["backbones"]) | {"classical", "consensus_ceiling"}
    assert table["n_train"].isna().sum() == 2 and table["backbone"].iloc[-2:].tolist() == ["consensus_ceiling",
                                                                                            "classical"]
    ceiling = table[table["backbone"] == "consensus_ceiling"].iloc[0]
    assert math.isnan(ceiling["consensus_f1"]) and 0 <= ceiling["truth_f1"] <= 1  # labels vs truth only
    detectors = table[table["n_train"].notna()]
    assert (detectors["train_steps"] <= tiny_config["training"]["steps"]).all()
    assert detectors["train_best_step"].notna().all()
    table = detectors
    for ref in ("consensus", "truth"):
        for col in ("AP", "AP50", "AP75", "AR", "completeness"):
            v = table[f"{ref}_{col}"]
            assert ((v >= 0) & (v <= 1)).all(), (ref, col, v.tolist())
        p = table[f"{ref}_purity"]
        assert all(math.isnan(x) or 0 <= x <= 1 for x in p)
        assert (table[f"{ref}_n_gt"] > 0).all()


def test_tiny_run_partnership(tiny_run, tiny_config):
    """The replay's outputs: three strategies' curves, both human shares, the machine's rounds in the
    log, labels the split could read, and its section in summary.md."""
    from clumpfinder.labels.coco import BOXES_NEEDS, SUBJECTS_NEEDS

    res = tiny_run["dir"] / "results"
    summary = json.loads((res / "partnership" / "summary.json").read_text())
    assert {"human_share_machine", "human_share_retirement"} <= set(summary)
    for key in ("human_share_machine", "human_share_retirement"):
        assert summary[key] is None or 0 < summary[key] <= 1
    assert set(summary["strategies"]) == {"fixed", "retirement", "machine"} and summary["scored"]
    assert summary["times"]["unparseable_time"] == 0 and summary["skills"]["volunteers"] > 0
    curves = pd.read_csv(res / "partnership" / "curves.csv")
    assert set(curves["strategy"]) == {"fixed", "retirement", "machine"}
    assert curves["f1"].between(0, 1).all() and (curves["f1_low"] <= curves["f1_high"]).all()
    n_cls = summary["fixed_human_classifications"]
    assert curves.groupby("strategy")["human_classifications"].max()["fixed"] == n_cls
    assert (curves["human_classifications"] <= n_cls).all()
    log = (res / "logs" / "partnership.log").read_text()
    assert "machine round 1" in log and "EM iteration" not in log
    subjects = pd.read_csv(res / "partnership" / "subjects.csv")
    boxes = pd.read_csv(res / "partnership" / "boxes.csv")
    assert set(SUBJECTS_NEEDS) <= set(subjects.columns) and set(BOXES_NEEDS) <= set(boxes.columns)
    assert subjects["retired"].sum() == summary["strategies"]["machine"]["subjects_decided"]
    assert "## Humans and machine" in (res / "summary.md").read_text()


def test_tiny_run_subsets_nested(tiny_run):
    lab = tiny_run["dir"] / "results" / "labels"
    small, big = (json.loads((lab / f"train_n{n}.json").read_text()) for n in (8, 20))
    train = json.loads((lab / "train.json").read_text())
    ids = lambda c: {im["id"] for im in c["images"]}  # noqa: E731
    assert ids(small) < ids(big) <= ids(train)
    test = json.loads((lab / "test.json").read_text())
    assert not ids(test) & ids(train)


def test_rerun_does_nothing(tiny_run):
    """(a) Nothing changed: nothing runs (benchmarks/rerun_latency.py times it)."""
    proc = smk("--cores", "2", "--configfile", TEST_CONFIG, cwd=tiny_run["dir"], snakefile=tiny_run["snakefile"],
               timeout=120)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_training_size_larger_than_pool_is_explained(tiny_run, tmp_path):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("labels:\n  n_train: [5000]\n")
    proc = smk("--cores", "1", "--configfile", TEST_CONFIG, cfg, cwd=tiny_run["dir"], snakefile=tiny_run["snakefile"],
               check=False)
    assert proc.returncode != 0
    assert "training pool has only" in proc.stdout + proc.stderr + (
        tiny_run["dir"] / "results" / "logs" / "subset_n5000.log").read_text()


@pytest.mark.parametrize(
    "override, expected",
    [
        # one backbone's learning rate: only its train/evaluate jobs and the summary
        ("backbones:\n  resnet18_morphology:\n    training: {lr: 0.0005}\n",
         {"train": 2, "evaluate": 2, "summary": 1, "plot_pr": 1, "plot_flux": 1, "gallery": 2, "plot_learning": 1,
          **CATALOGUE, "all": 1}),
        # the morphology pretraining: its encoder, the clumpy classifier built on it, their detectors
        ("pretrain:\n  morphology: {epochs: 2}\n",
         {"pretrain_morphology": 1, "pretrain_clumpy": 1, "train": 4, "evaluate": 4, "summary": 1, "plot_pr": 1,
          "plot_flux": 1, "gallery": 2, "plot_learning": 1, **CATALOGUE, "all": 1}),
        # a second training seed: one more train/evaluate job per cell, the same labels (the
        # galleries show the first seed's models and stay)
        ("sweep:\n  seeds: [0, 1]\n",
         {"train": 6, "evaluate": 6, "summary": 1, "plot_pr": 1, "plot_flux": 1, "plot_learning": 1, **CATALOGUE,
          "all": 1}),
        # the consensus method: everything downstream of the consensus, nothing upstream
        ("consensus:\n  method: dbscan\n", CONSENSUS_DOWNSTREAM),
    ],
)
def test_a_change_reruns_only_what_depends_on_it(tiny_run, tmp_path, override, expected):
    cfg = tmp_path / "change.yaml"
    cfg.write_text(override)
    proc = smk("-n", "--cores", "2", "--configfile", TEST_CONFIG, cfg, cwd=tiny_run["dir"], snakefile=tiny_run["snakefile"])
    assert job_counts(proc.stdout + proc.stderr) == expected


@pytest.mark.parametrize(
    "module, expected",
    [
        # plotting code: the figures and the summary that draws the headline figure
        ("report/figures.py", {"summary": 1, "plot_pr": 1, "plot_flux": 1, "gallery": 2, "plot_consensus": 1,
                               "plot_learning": 1, "plot_catalogue": 1, "plot_partnership": 1, "all": 1}),
        # the EM aggregation of clicks: the consensus and everything after it
        ("crowd/boxem.py", {**CONSENSUS_DOWNSTREAM, **PARTNERSHIP}),
        # the detector's training and what reads its models (the evaluation reruns because its models
        # are new: it does not run this code)
        ("detection/train.py", {"train": 6, "evaluate": 6, "summary": 1, "plot_pr": 1, "plot_flux": 1,
                                "gallery": 2, "plot_learning": 1, **CATALOGUE, **PARTNERSHIP, "all": 1}),
        # the optimisation loop that training and both pretrainings share
        ("detection/loop.py", {"pretrain_morphology": 1, "pretrain_clumpy": 1, "train": 6, "evaluate": 6,
                               "summary": 1, "plot_pr": 1, "plot_flux": 1, "gallery": 2, "plot_learning": 1,
                               **CATALOGUE, **PARTNERSHIP, "all": 1}),
    ],
)
def test_a_code_change_reruns_the_stages_that_run_it(tiny_run, module, expected):
    path = tiny_run["snakefile"].parent / "src" / "clumpfinder" / module
    original, stat = path.read_bytes(), path.stat()
    args = ("-n", "--configfile", TEST_CONFIG)
    try:
        path.write_bytes(original + b"\n# edited by the test\n")
        edited = smk(*args, cwd=tiny_run["dir"], snakefile=tiny_run["snakefile"])
        path.write_bytes(original)  # the edit undone: a newer file with the old checksum
        undone = smk(*args, cwd=tiny_run["dir"], snakefile=tiny_run["snakefile"])
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert job_counts(edited.stdout) == expected
    assert "Nothing to be done" in undone.stdout + undone.stderr


def test_gpu_jobs_take_turns(tiny_run):
    """On a one-GPU workstation (`--resources gpu=1`, the training jobs asking for a GPU) no two GPU
    jobs ever run at once, while CPU jobs still run beside them."""
    out = tiny_run["proc"].stderr  # a run (not a dry run) reports its jobs on stderr
    jobs = {j["jobid"]: j for j in job_blocks(out)}
    events = sorted([(j["line"], 1, jid) for jid, j in jobs.items()]
                    + [(i, -1, m.group(1)) for i, line in enumerate(out.splitlines())
                       if (m := re.match(r"Finished jobid: (\d+)", line))])
    gpu_jobs = {jid for jid, j in jobs.items() if j["resources"].get("gpu") == "1"}
    assert {jobs[j]["rule"] for j in gpu_jobs} == {"train", "pretrain_morphology", "pretrain_clumpy"}
    assert len(gpu_jobs) == 8
    running, most_gpu, cpu_beside_gpu = set(), 0, False
    for _, step, jid in events:
        if step == 1:
            running.add(jid)
        else:
            running.discard(jid)
        n_gpu = len(running & gpu_jobs)
        most_gpu = max(most_gpu, n_gpu)
        cpu_beside_gpu |= n_gpu == 1 and len(running) > 1
    assert most_gpu == 1 and cpu_beside_gpu


def test_summary_documents_and_report(tiny_run, tiny_config, tiny_report):
    """summary.md answers the question in its first lines; the Snakemake report builds with every
    figure and table under its category, with captions."""
    res = tiny_run["dir"] / "results"
    md = (res / "summary.md").read_text()
    smallest = min(tiny_config["labels"]["n_train"])
    assert md.splitlines()[2].startswith(f"- **Which backbone with the fewest training images (n = {smallest})?**")
    assert "**Does more training data help?**" in md and "**Training budget:**" in md
    # one training seed (the test configuration): the run completes and says it cannot decide
    assert "cannot be decided with fewer than 3 training seeds per arm" in md and "(decided)" not in md
    assert "## Against the simulated truth" in md
    assert "## Beside the detectors: the label ceiling and a classical finder" in md
    assert re.search(r"At n = \d+, F1 minus the classical finder's against the truth", md)
    comparison = pd.read_csv(res / "comparison.csv")
    assert set(comparison["backbone"]) == set(tiny_config["backbones"])
    assert (comparison.loc[comparison["backbone"] == "resnet18_scratch", "f1_diff"] == 0).all()  # the baseline
    page = tiny_report.read_text()
    assert len(page) > 100_000
    for text in ("1. Headline", "2. Detection quality", "3. Gallery", "4. Volunteer consensus", "5. Tables",
                 "Giant star-forming clumps with Faster R-CNN", "summary.html", "completeness_purity.png",
                 "pr_curves.png", "learning_curves.png", "completeness_vs_flux.png", "consensus.png", "partnership.png", "comparison.html",
                 "difference to the baseline (resnet18_scratch) with both intervals", "Are the faint clumps the ones missed?"):
        assert text in page, text


def test_tiny_run_pretraining_outputs(tiny_run):
    res = tiny_run["dir"] / "results" / "pretrain"
    morph = json.loads((res / "morphology" / "resnet18_unit" / "metrics.json").read_text())
    assert morph["pool"]["used"] == morph["pool"]["population"] > 0 and morph["max_logit_change_under_d4"] < 1e-4
    assert "spiral_arms" in morph["questions"]
    clumpy = json.loads((res / "clumpy" / "resnet18_clumpy" / "metrics.json").read_text())
    assert clumpy["init"] == "pretrain:morphology" and list(clumpy["questions"]) == ["clumpy"]
    splits = pd.read_csv(tiny_run["dir"] / "results" / "labels" / "splits.csv")
    assert clumpy["pool"]["pool"] == (splits["split"] == "train").sum()
