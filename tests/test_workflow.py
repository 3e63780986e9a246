"""The Snakemake workflow: lint, formatting, dry runs, config errors, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
from astropy.io import fits
import pytest

from conftest import REPO, TEST_CONFIG, job_blocks, job_counts, smk

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


def test_partnership_labels_can_train_the_detectors(tmp_path):
    cfg = tmp_path / "labels.yaml"
    cfg.write_text("partnership:\n  labels_for_training: true\n")
    proc = smk("-n", "--configfile", TEST_CONFIG, cfg, cwd=tmp_path)
    split = next(j for j in job_blocks(proc.stdout) if j["rule"] == "split")
    assert "results/partnership/boxes.csv" in split["input"] and "results/consensus/boxes.csv" not in split["input"]


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


def test_tiny_run_pretraining_outputs(tiny_run):
    res = tiny_run["dir"] / "results" / "pretrain"
    morph = json.loads((res / "morphology" / "resnet18_unit" / "metrics.json").read_text())
    assert morph["pool"]["used"] == morph["pool"]["population"] > 0 and morph["max_logit_change_under_d4"] < 1e-4
    assert "spiral_arms" in morph["questions"]
    clumpy = json.loads((res / "clumpy" / "resnet18_clumpy" / "metrics.json").read_text())
    assert clumpy["init"] == "pretrain:morphology" and list(clumpy["questions"]) == ["clumpy"]
    splits = pd.read_csv(tiny_run["dir"] / "results" / "labels" / "splits.csv")
    assert clumpy["pool"]["pool"] == (splits["split"] == "train").sum()
