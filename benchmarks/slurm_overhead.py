"""What submitting through profiles/slurm costs: the same small DAG locally and through a real SLURM.

    sudo python benchmarks/slurm_overhead.py [--out benchmarks/results/slurm_overhead.json]

Brings up the single-node SLURM of tests/slurm_cluster.py (root; installs slurm-wlm and munge with
apt-get when missing), then runs the tiny test configuration for one backbone (resnet18_clumpy:
simulation, consensus, both pretrainings, two trainings, two evaluations, plots) twice in fresh
folders: locally (`--cores 2 --resources gpu=1`) and through `--workflow-profile profiles/slurm`
with tests/slurm layered under it (job status from squeue, first check after 1 s). Reports the
wall-clock times, per SLURM job its wait in the queue and its run time (scontrol) next to the
same job's time in the local run (its benchmark file), and a no-op rerun through the profile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "src"))
from provenance import command_line, data_seeds, git_commit, merged_config  # noqa: E402
from slurm_cluster import LocalSlurm, install, unavailable_reason  # noqa: E402

OVERRIDE = "sweep:\n  backbones: [resnet18_clumpy]\n"


def snakemake(args: list, cwd: Path, env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(cwd),
                           *map(str, args)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed:\n{proc.stderr[-5000:]}")
    return time.perf_counter() - t0, proc.stderr


def local_rule_seconds(work: Path) -> dict[str, float]:
    """Seconds per rule in a local run, summed over its jobs' benchmark files."""
    total: dict[str, float] = {}
    for tsv in (work / "results" / "benchmarks").rglob("*.tsv"):
        rel = tsv.relative_to(work / "results" / "benchmarks").with_suffix("")
        rule = rel.parts[0] if rel.parts[0] in ("train", "evaluate") else (
            "pretrain_" + rel.name.split("_")[0] if rel.parts[0] == "pretrain" else rel.name)
        total[rule] = total.get(rule, 0.0) + float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "slurm_overhead.json")
    a = ap.parse_args()
    if reason := unavailable_reason():
        sys.exit(reason)
    root = Path(tempfile.mkdtemp(prefix="clumpfinder-slurm-bench-"))
    install(root / "apt.log")
    override = root / "one_backbone.yaml"
    override.write_text(OVERRIDE)
    config = ["--configfile", REPO / "tests" / "config" / "config.yaml", override]

    local_s, _ = snakemake(["--cores", "2", "--resources", "gpu=1", *config], root / "local")
    cluster = LocalSlurm(root / "cluster", gpus=1).start()
    try:
        profile = ["--workflow-profile", REPO / "profiles" / "slurm", "--profile", REPO / "tests" / "slurm"]
        slurm_s, log = snakemake([*profile, *config], root / "slurm", env=cluster.env)
        noop_s, noop_log = snakemake([*profile, *config], root / "slurm", env=cluster.env)
        jobs = []
        for m in re.finditer(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S+/rule_(\w+?)/", log):
            info = cluster.job(m.group(1))
            t = {k: datetime.fromisoformat(info[k]) for k in ("SubmitTime", "StartTime", "EndTime")}
            jobs.append({"rule": m.group(2), "queue_wait_s": (t["StartTime"] - t["SubmitTime"]).total_seconds(),
                         "run_s": (t["EndTime"] - t["StartTime"]).total_seconds()})
    finally:
        cluster.stop()
    local = local_rule_seconds(root / "local")
    per_rule = pd.DataFrame(jobs).groupby("rule").agg(jobs=("run_s", "size"), slurm_run_s=("run_s", "sum"),
                                                      queue_wait_s=("queue_wait_s", "sum"))
    # rules without a benchmark file have no local time (None)
    per_rule["local_job_s"] = pd.Series([round(local[r], 1) if r in local else None for r in per_rule.index],
                                        index=per_rule.index, dtype=object)
    result = {
        "command": command_line(), "date": datetime.now().strftime("%Y-%m-%d"),
        "commit": git_commit(), "data_seeds": data_seeds(merged_config([REPO / "tests" / "config" / "config.yaml"])),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "dag": "tests/config/config.yaml with sweep.backbones [resnet18_clumpy]",
        "local_wall_s": round(local_s, 1), "slurm_wall_s": round(slurm_s, 1),
        "slurm_noop_rerun_s": round(noop_s, 1), "noop_said_nothing_to_do": "Nothing to be done" in noop_log,
        "n_slurm_jobs": len(jobs),
        "median_queue_wait_s": float(pd.Series([j["queue_wait_s"] for j in jobs]).median()),
        "per_rule": per_rule.reset_index().to_dict("records"),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_rule"}, indent=1))
    print(per_rule.to_string())


if __name__ == "__main__":
    main()
