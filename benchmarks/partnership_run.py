"""Run and time the partnership target from an empty directory, and record its answer.

    python benchmarks/partnership_run.py --workdir DIR [--configfile extra.yaml]

Runs `snakemake --cores 2 partnership` (the simulated survey, its volunteers and the replay, with
the repository's Snakefile and default configuration, plus any --configfile) in DIR, then writes
the command, date, commit, wall-clock time, peak memory, the replay job's own time (its benchmark
file), and the replay's summary (human shares, each strategy's classifications, label F1 with
intervals, the machine's rounds and learned skills) to
benchmarks/results/partnership_<seed role>.json. The default configuration's seeds are the
reporting seeds: run this once, after every choice was made on the development seeds
(benchmarks/partnership_choices.py). Time it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "src"))

from clumpfinder.config import deep_update  # noqa: E402
from provenance import command_line, data_seeds, git_commit  # noqa: E402
from workflow_timing import run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--configfile", action="append", default=[])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for f in args.configfile:
        config = deep_update(config, yaml.safe_load(Path(f).read_text()))
    role = config["report"]["seed_role"]
    extra = ["--configfile", *[str(Path(f).resolve()) for f in args.configfile]] if args.configfile else []
    seconds, _, peak = run(["--cores", str(args.cores), "partnership", *extra], args.workdir)
    res = args.workdir / "results"
    job = pd.read_csv(res / "benchmarks" / "partnership.tsv", sep="\t").iloc[0]
    summary = json.loads((res / "partnership" / "summary.json").read_text())
    record = {
        "command": command_line(),
        "date": dt.date.today().isoformat(), "commit": git_commit(), "data_seeds": data_seeds(config), "seed_role": role,
        "simulate_seed": config["simulate"]["seed"], "volunteers_seed": config["volunteers"]["seed"],
        "wall_seconds": round(seconds, 1), "peak_rss_gib": peak,
        "replay_job": {"seconds": float(job["s"]), "max_rss_mb": float(job["max_rss"])},
        "summary": {k: v for k, v in summary.items() if k != "settings"},
        "settings": summary["settings"],
    }
    out = args.out or REPO / "benchmarks" / "results" / f"partnership_{role}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("wall_seconds", "replay_job")}, indent=1))
    print(json.dumps({k: summary.get(k) for k in ("human_share_retirement", "human_share_machine", "target_f1")}))


if __name__ == "__main__":
    main()
