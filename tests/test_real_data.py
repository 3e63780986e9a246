"""Real-data routes through the DAG, offline: a clump catalogue (MRT) written here, cutouts from a
local hips2fits stand-in, labels from the catalogued clumps, a one-epoch training, evaluation,
summary; and the Zooniverse route's DAG and configuration errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy import units as u
from astropy.table import Table

from conftest import REPO, TEST_CONFIG, deep_update, job_blocks, job_counts, smk

sys.path.insert(0, str(REPO / "tests"))
from hips_server import HipsServer, position_key  # noqa: E402

pytestmark = pytest.mark.workflow


def write_catalogue(path, n_galaxies: int = 24, seed: int = 3):
    """An Adams et al. (2022) Table 3-like MRT file: one row per clump, 1-3 clumps per galaxy
    within 6 arcsec of the centre, every fifth clump 'Unusual'. Returns (path, clump sources)."""
    rng = np.random.default_rng(seed)
    rows, sources = [], []
    for g in range(n_galaxies):
        ra, dec = 150.0 + 0.05 * g, 2.0 + 0.03 * g
        oid = 1237648720693755000 + g
        for _ in range(1 + g % 3):
            dra, ddec = rng.uniform(-6, 6, 2)
            cra, cdec = ra + dra / 3600 / np.cos(np.radians(dec)), dec + ddec / 3600
            rows.append((oid, 0.05, ra, dec, 1.3, cra, cdec, rng.uniform(0.03, 0.3), int(len(rows) % 5 == 4)))
            sources.append((cra, cdec, 2.0))
    t = Table(rows=rows, names=("objID", "z", "RAdeg", "DEdeg", "rFWHM", "RAcl", "DEcl", "FluxRatio", "Unusual"))
    for k in ("RAdeg", "DEdeg", "RAcl", "DEcl"):
        t[k].unit = u.deg
    t["rFWHM"].unit = u.arcsec
    t.write(path, format="ascii.mrt", overwrite=True)
    return path, sources


def real_config(tmp_path, server_url: str, source: str = "catalogue", **data) -> str:
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["data"] = {"source": source, **data,
                   "download": {"server": server_url, "image_size": 64, "workers": 4, "retries": 2, "backoff": 0.05,
                                "timeout": 20, "cache": str(tmp_path / "cutouts"),
                                "fov": {"default_arcsec": 24.0, "factor": 4.0, "min_arcsec": 20.0,
                                        "max_arcsec": 40.0}}}
    cfg["sweep"] = {**cfg["sweep"], "backbones": ["resnet18_scratch"]}  # one training seed, as the tiny run
    cfg["labels"] = {"n_train": [4, "full"]}
    cfg["detector"] = {"image_size": 64}
    cfg["consensus"] = {"swap": {"mode": "unsupervised"}}
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def catalogue_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("catalogue_run")
    mrt, sources = write_catalogue(work / "table3.txt")
    missing = (150.0 + 0.05 * 23, 2.0 + 0.03 * 23)  # the last galaxy is outside the "footprint"
    with HipsServer({position_key(*missing): "missing"}, sources=sources) as srv:
        cfg = real_config(work, srv.url, catalogue={"path": str(mrt)})
        proc = smk("--cores", "2", "--configfile", cfg, cwd=work)
        requests = sum(srv.requests.values())
        # the download alone, forced (what follows it would only repeat the run above)
        rerun = smk("--cores", "2", "--configfile", cfg, "--forcerun", "download", "--until", "download", cwd=work)
        requests_rerun = sum(srv.requests.values()) - requests
    return {"dir": work, "proc": proc, "rerun": rerun, "requests": requests, "requests_rerun": requests_rerun,
            "config": cfg}


def test_catalogue_route_end_to_end(catalogue_run):
    res = catalogue_run["dir"] / "results"
    man = pd.read_csv(res / "survey" / "manifest.csv")
    failures = pd.read_csv(res / "survey" / "download_failures.csv")
    assert len(man) == 23 and failures["reason"].tolist() == ["not_found"] and failures["attempts"].tolist() == [1]
    assert (man["width"] == 64).all() and np.allclose(man["pixel_scale_arcsec"], 24.0 / 64)
    assert all((res / "survey" / "png" / f).is_file() for f in man["png"])
    # catalogued clumps became boxes on the right pixels of the downloaded cutouts
    boxes = pd.read_csv(res / "catalogue" / "boxes.csv")
    report = json.loads((res / "catalogue" / "report.json").read_text())
    clumps = pd.read_csv(res / "survey" / "catalogue_clumps.csv")
    assert report["galaxy_without_image"] == (clumps["subject_id"] == man["subject_id"].max() + 1).sum() == 3
    assert len(boxes) == report["boxes"] == len(clumps) - 3
    assert set(boxes["category"]) == {"clump", "odd_clump"}
    c = clumps.merge(man[["subject_id", "ra", "dec", "pixel_scale_arcsec"]], on="subject_id", suffixes=("", "_g"))
    expect_x = 32 - (c["ra"] - c["ra_g"]) * 3600 * np.cos(np.radians(c["dec_g"])) / c["pixel_scale_arcsec"]
    got = boxes.merge(c.assign(ex=expect_x)[["subject_id", "ex"]], on="subject_id")
    assert (got.groupby("subject_id").apply(lambda g: np.abs(np.subtract.outer(g["x"].unique(), g["ex"].unique()))
                                            .min(axis=1).max(), include_groups=False) < 0.05).all()
    side = boxes["x2"] - boxes["x1"]
    assert np.allclose(side[boxes["x1"] > 0], (1.3 / (24.0 / 64) * 2.0), atol=1e-6)
    # labels -> short trainings at n=4 and n=full -> evaluation -> summary, beside the classical finder
    train = json.loads((res / "labels" / "train.json").read_text())
    full = json.loads((res / "labels" / "train_nfull.json").read_text())
    assert len(full["images"]) == len(train["images"]) > 4
    summary = pd.read_csv(res / "summary.csv")
    assert sorted(summary["n_train"].dropna()) == [4, len(train["images"])]
    # no truth on real data: the classical finder is the only reference point, scored on the labels
    assert summary.loc[summary["n_train"].isna(), "backbone"].tolist() == ["classical"]
    assert "truth_f1" not in summary and (res / "eval" / "classical" / "metrics.json").is_file()
    assert (res / "plots" / "pr_curves.png").is_file() and not (res / "plots" / "consensus.png").exists()


def test_download_resumes_from_the_cache(catalogue_run):
    """A forced rerun of the download fetches nothing the cache holds valid: only the
    galaxy that failed is asked for again."""
    assert catalogue_run["requests"] >= 23 * 3
    assert catalogue_run["requests_rerun"] == 1
    rep = json.loads((catalogue_run["dir"] / "results" / "survey" / "download_report.json").read_text())
    assert rep["from_cache"] == 23 and rep["fetched"] == 0


@pytest.mark.parametrize(
    "source, data, override, message",
    [  # every cross-field check has a unit test (tests/test_plan.py); here: the workflow stops on one
        ("catalogue", {"catalogue": {"path": "t.txt"}}, {"sweep": {"backbones": ["resnet18_morphology"]}},
         "give real Galaxy Zoo votes in pretrain.catalogue"),
    ],
)
def test_real_sources_need_their_files(tmp_path, source, data, override, message):
    cfg = real_config(tmp_path, "http://127.0.0.1:9/none", source=source, **data)
    text = deep_update(yaml.safe_load(open(cfg)), override)
    open(cfg, "w").write(yaml.safe_dump(text))
    proc = smk("-n", "--configfile", cfg, cwd=tmp_path, check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stdout[-2000:]


def test_zooniverse_route_dry_run(tmp_path, tiny_export):
    """Subject list from the classification export's subject_data, cutouts, consensus with no
    gold (unsupervised SWAP), labels, training."""
    cfg = real_config(tmp_path, "http://127.0.0.1:9/none", source="zooniverse",
                      classifications=str(tiny_export["path"]))
    proc = smk("-n", "--cores", "1", "--configfile", cfg, cwd=tmp_path)
    jobs = job_counts(proc.stdout + proc.stderr)
    assert jobs["subject_list"] == jobs["download"] == jobs["consensus"] == 1
    assert "simulate_survey" not in jobs and "catalogue_labels" not in jobs and jobs["plot_consensus"] == 1


def test_real_votes_pretrain_on_their_own_galaxies(tmp_path, tiny_export):
    """With real Galaxy Zoo votes (pretrain.catalogue), their galaxies are fetched as a population
    of their own (two localrules, like the survey's) and the morphology pretraining reads those,
    plus the survey's manifest to leave out any galaxy it shares with it."""
    votes = tmp_path / "votes.csv"
    votes.write_text("subject_id,ra,dec,clumpy_yes,clumpy_no\n1,10.0,1.0,3,7\n")
    cfg = real_config(tmp_path, "http://127.0.0.1:9/none", source="zooniverse",
                      classifications=str(tiny_export["path"]))
    text = deep_update(yaml.safe_load(open(cfg)), {"pretrain": {"catalogue": str(votes)},
                                                   "sweep": {"backbones": ["resnet18_morphology"]}})
    open(cfg, "w").write(yaml.safe_dump(text))
    proc = smk("-n", "--cores", "1", "--configfile", cfg, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    jobs = job_counts(out)
    assert jobs["pretraining_subject_list"] == jobs["download_pretraining"] == jobs["pretrain_morphology"] == 1
    assert "simulate_pretraining_population" not in jobs and "simulate_morphology" not in jobs
    pretrain = next(j for j in job_blocks(out) if j["rule"] == "pretrain_morphology")
    assert "results/pretraining/manifest.csv" in pretrain["input"] and "results/survey/manifest.csv" in pretrain["input"]
    # they need network, as the survey's download: on a cluster they run where snakemake runs
    local = (REPO / "rules" / "download.smk").read_text().split("localrules:")[1].split("\n\n")[0]
    assert "pretraining_subject_list," in local and "download_pretraining," in local


def write_zooniverse_route_inputs(work, manifest_columns=None):
    """What the subject list, the download and the consensus of a Zooniverse run leave behind (files
    written in DAG order, so that only the split has to run): 40 galaxies, the first five shown in
    three subjects each, the first of which has synthetic clumps injected (origin 'sim'); subjects
    60-64 are gold; subject 99 has no cutout."""
    rng = np.random.default_rng(0)
    ids = np.r_[np.arange(1, 51), np.arange(60, 65)]
    gals = [str((i - 1) // 3 if i <= 15 else i - 11 if i <= 50 else i + 40) for i in ids]
    origin = ["sim" if i in (1, 4, 7, 10, 13) else "real" for i in ids]
    (work / "data").mkdir(parents=True)
    (work / "data" / "classifications.csv").write_text("x\n")
    pd.DataFrame({"subject_id": np.arange(60, 65), "has_clumps": [1, 0, 1, 0, 1]}).to_csv(
        work / "data" / "gold.csv", index=False)
    survey = work / "results" / "survey"
    survey.mkdir(parents=True)
    sl = pd.DataFrame({"subject_id": [*ids, 99], "galaxy_id": [*gals, "999"], "ra": 1.0, "dec": 0.0,
                       "origin": [*origin, "real"]})
    sl.to_csv(survey / "subjects.csv", index=False)
    (survey / "catalogue_clumps.csv").write_text("subject_id\n")
    (survey / "subjects_report.json").write_text("{}\n")
    (survey / "png").mkdir()  # after the subject list: the download's outputs are newer than its input
    man = pd.DataFrame({"subject_id": ids, "galaxy_id": [f"1237648720693755{int(g):03d}" for g in gals],
                        "png": [f"{i}.png" for i in ids], "width": 64, "height": 64})
    man[manifest_columns or man.columns].to_csv(survey / "manifest.csv", index=False)
    (survey / "download_failures.csv").write_text("subject_id\n99\n")
    (survey / "download_report.json").write_text("{}\n")
    cons = work / "results" / "consensus"
    cons.mkdir(parents=True)
    all_ids = np.r_[ids, 99]
    pd.DataFrame({"subject_id": all_ids, "width": 64, "height": 64, "n_classifications": 20,
                  "swap_prob": rng.choice([0.01, 0.99], len(all_ids)), "n_clicks": rng.poisson(10, len(all_ids))}
                 ).to_csv(cons / "subjects.csv", index=False)
    pd.DataFrame({"subject_id": all_ids, "x1": 10.0, "y1": 10.0, "x2": 20.0, "y2": 20.0, "category": "clump",
                  "n_votes": 5, "odd_fraction": 0.0, "false_pos_prob": 0.1, "inaccurate_prob": 0.1}
                 ).to_csv(cons / "boxes.csv", index=False)
    (cons / "volunteers.csv").write_text("user\n")
    (cons / "report.json").write_text("{}\n")


def test_zooniverse_split_by_galaxy_without_gold_or_injected(tmp_path):
    """The split rule on a Zooniverse run: galaxies shown in several subjects stay in one split,
    gold (data.gold) and injected (origin 'sim') subjects are in no COCO file, and a manifest
    without the grouping column stops the rule with a message naming file and column."""
    write_zooniverse_route_inputs(tmp_path)
    cfg = real_config(tmp_path, "http://127.0.0.1:9/none", source="zooniverse",
                      classifications="data/classifications.csv", gold="data/gold.csv")
    proc = smk("results/labels/split_report.json", "--cores", "1", "--configfile", cfg, cwd=tmp_path)
    assert job_counts(proc.stdout + proc.stderr) == {"split": 1}, proc.stdout[-3000:]
    lab = tmp_path / "results" / "labels"
    splits = pd.read_csv(lab / "splits.csv", dtype={"galaxy_id": str})
    report = json.loads((lab / "split_report.json").read_text())
    by = splits.set_index("subject_id")["split"]
    assert (by[[60, 61, 62, 63, 64]] == "gold").all() and (by[[1, 4, 7, 10, 13]] == "injected").all()
    assert 99 not in by.index and report["subjects_without_image"] == 1
    assert report["gold_subjects_excluded"] == 5 and report["injected_subjects"] == 5
    assert report["galaxies_with_several_subjects"] == 5 and report["origin"]["injected"] == 5
    detect = splits[splits["split"].isin(["train", "val", "test"])]
    assert (detect.groupby("galaxy_id")["split"].nunique() == 1).all()
    assert detect["galaxy_id"].str.startswith("1237648720693755").all()  # SDSS ids kept exact
    coco_ids = set()
    for name in ("train", "val", "test"):
        coco = json.loads((lab / f"{name}.json").read_text())
        coco_ids |= {im["id"] for im in coco["images"]}
        assert len(coco["images"]) == report["subjects"][name]
    assert coco_ids == set(detect["subject_id"]) and not coco_ids & {1, 4, 7, 10, 13, 60, 61, 62, 63, 64}
    # the manifest lacks the grouping column
    bad = tmp_path / "bad"
    write_zooniverse_route_inputs(bad, manifest_columns=["subject_id", "png", "width", "height"])
    cfg = real_config(bad, "http://127.0.0.1:9/none", source="zooniverse",
                      classifications="data/classifications.csv", gold="data/gold.csv")
    proc = smk("results/labels/split_report.json", "--cores", "1", "--configfile", cfg, cwd=bad, check=False)
    text = proc.stdout + proc.stderr + (bad / "results" / "logs" / "split.log").read_text()
    assert proc.returncode != 0 and "results/survey/manifest.csv: the survey manifest has no column 'galaxy_id' " \
        "(labels.group_by)" in text, text[-3000:]
