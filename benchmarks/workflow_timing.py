"""Time the default DAG from a clean state, then a no-op rerun.

    python benchmarks/workflow_timing.py [--cores 2] [--configfile extra.yaml] [--workdir DIR]

Runs `snakemake --cores N` in a fresh working directory (the repository's Snakefile and default
configuration, plus any --configfile given), then runs it again with nothing changed. Writes the
command, date, commit, machine load, the wall-clock times, per-rule job times (from the rules'
benchmark files), the peak memory (GNU time -v over the whole run, and each job's from its
benchmark file), the per-run summary table, the paired comparison (comparison.csv) and the
answer summary.md opens with to benchmarks/results/workflow_timing.json and prints them. With
the default configuration that comparison is the reporting seeds' headline (docs/protocol.md).
Time it on an otherwise idle machine: other work on the cores lengthens every job.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from provenance import command_line, data_seeds, git_commit, merged_config  # noqa: E402


TIME = Path("/usr/bin/time")


def run(args: list[str], cwd: Path) -> tuple[float, str, float | None]:
    """Wall seconds, output, and the peak resident memory (GiB) of the largest process of the run
    as GNU time -v reports it (None where /usr/bin/time is missing)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(cwd), *args]
    timed = TIME.exists()
    t0 = time.perf_counter()
    proc = subprocess.run([str(TIME), "-v", *cmd] if timed else cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"snakemake failed:\n{proc.stderr[-5000:]}")
    peak = None
    for line in proc.stderr.splitlines():
        if "Maximum resident set size (kbytes)" in line:
            peak = round(int(line.rsplit(":", 1)[1]) / 2**20, 2)
    return seconds, proc.stdout + proc.stderr, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--configfile", action="append", default=[])
    ap.add_argument("--workdir", type=Path, default=None, help="keep the run here (default: a temporary directory)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "workflow_timing.json")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="clumpfinder-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = ["--configfile", *map(str, a.configfile)] if a.configfile else []
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    full, _, peak_gib = run(["--cores", str(a.cores), *extra], work)
    rerun, log, _ = run(["--cores", str(a.cores), *extra], work)
    jobs, job_rss = {}, {}
    for tsv in sorted((work / "results" / "benchmarks").rglob("*.tsv")):
        name = str(tsv.relative_to(work / "results" / "benchmarks").with_suffix(""))
        bench = pd.read_csv(tsv, sep="\t")
        jobs[name] = float(bench["s"].iloc[0])
        job_rss[name] = round(float(bench["max_rss"].iloc[0]) / 1024, 2)  # MiB -> GiB
    table = pd.read_csv(work / "results" / "summary.csv")
    cols = [c for c in ("backbone", "n_train", "seed", "consensus_completeness", "consensus_purity", "consensus_f1",
                        "truth_completeness", "truth_purity", "truth_f1", "consensus_AP50", "train_steps",
                        "train_best_step", "train_seconds") if c in table]
    comparison = pd.read_csv(work / "results" / "comparison.csv")
    ccols = [c for c in ("reference", "n_train", "backbone", "n_seeds", "n_test_images", "completeness", "purity",
                         "f1", "f1_low", "f1_high", "f1_galaxy_low", "f1_galaxy_high", "f1_seed_sd", "f1_diff",
                         "f1_diff_low", "f1_diff_high", "f1_diff_galaxy_low", "f1_diff_galaxy_high", "f1_verdict",
                         "completeness_diff", "completeness_verdict", "purity_diff", "purity_verdict")
             if c in comparison]
    pretraining = {}  # what each galaxy pretraining learned (its vote-fraction RMSE beside the mean vote's)
    for metrics in sorted((work / "results" / "pretrain").glob("*/*/metrics.json")):
        m = json.loads(metrics.read_text())
        pretraining[str(metrics.parent.relative_to(work / "results" / "pretrain"))] = {
            k: m.get(k) for k in ("n_train", "n_val", "steps", "seconds", "val_fraction_rmse",
                                  "val_fraction_rmse_mean_baseline")} | {
            "val_loss": [r.get("val_loss") for r in m.get("history", [])]}
    result = {
        "command": command_line(),
        "date": started.isoformat(timespec="seconds"), "commit": git_commit(),
        "data_seeds": data_seeds(merged_config(a.configfile)),
        "load_average_before": [round(x, 2) for x in load_before],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "cores": a.cores, "configfiles": a.configfile, "workdir": str(work),
        "full_run_seconds": round(full, 1), "noop_rerun_seconds": round(rerun, 1),
        "peak_rss_gib_time_v": peak_gib, "peak_job_rss_gib": max(job_rss.values(), default=None),
        "noop_rerun_said_nothing_to_do": "Nothing to be done" in log,
        "job_seconds": jobs, "job_max_rss_gib": job_rss, "summary": table[cols].round(4).to_dict("records"),
        "comparison": comparison[ccols].round(4).to_dict("records"), "pretraining": pretraining,
        # the answer in words a reader of this run got (its first lines, before the tables)
        "summary_md_answer": (work / "results" / "summary.md").read_text().split("\n## ")[0],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=1))
    print(table[cols].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
