"""Consensus throughput on an export the size of Galaxy Zoo: Clump Scout.

    python benchmarks/consensus_throughput.py --make   # writes the synthetic export once (minutes)
    python benchmarks/consensus_throughput.py          # parse + SWAP + EM, timed
    python benchmarks/consensus_throughput.py --warm-cache   # the same, the export read once first

Dickinson et al. (2022): 3,561,454 clicks in 1,739,259 classifications of 85,286 subjects by
20,999 volunteers. The synthetic export tiles the default survey's subjects and objects (from
``results/survey``) to 85,286 subjects with new ids, and simulates 20,999 volunteers at 20
classifications per subject with enough false clicks to reach ~2 clicks per classification, in
the real export format (JSON metadata, annotations, subject data). The timed run is what the
consensus rule does: parse (``--workers`` processes), SWAP and the EM consensus; it reports
seconds per stage, clicks/s, the peak resident memory of the process and its workers, the EM's
iterations and why it stopped, and the machine's load average before and after (a shared machine
that is busy makes every stage slower). Results go to benchmarks/results/consensus_throughput.json.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import resource
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from provenance import command_line, git_commit, run_data_seeds  # noqa: E402

N_SUBJECTS, N_VOLUNTEERS = 85_286, 20_999


def make(results: Path, out: Path, cfg: dict) -> None:
    from clumpfinder.data.volunteers import CrowdSpec, simulate_export

    manifest = pd.read_csv(results / "survey" / "manifest.csv")
    truth = pd.read_csv(results / "survey" / "truth.csv")
    reps = -(-N_SUBJECTS // len(manifest))
    man = pd.concat([manifest.assign(subject_id=manifest["subject_id"] * 100 + r) for r in range(reps)])
    man = man.iloc[:N_SUBJECTS].reset_index(drop=True)
    tru = pd.concat([truth.assign(subject_id=truth["subject_id"] * 100 + r) for r in range(reps)])
    tru = tru[tru["subject_id"].isin(man["subject_id"])].reset_index(drop=True)
    vcfg = dict(copy.deepcopy(cfg["volunteers"]), n_volunteers=N_VOLUNTEERS, classifications_per_subject=20,
                false_clicks_per_subject=1.0)
    t0 = time.perf_counter()
    simulate_export(CrowdSpec.from_config(vcfg), man, tru, out)
    print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")


def peak_rss_mb() -> dict[str, float]:
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make", action="store_true", help="write the synthetic export and stop")
    ap.add_argument("--results", type=Path, default=REPO / "results")
    ap.add_argument("--configfile", action="append", default=[], help="the configuration files that run was made with")
    ap.add_argument("--export", type=Path, default=REPO / "benchmarks" / "results" / "clumpscout_size_export.csv")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--method", default="em")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "consensus_throughput.json")
    ap.add_argument("--warm-cache", action="store_true",
                    help="read the export once before timing, so the parse is timed from the page cache, not the disk")
    a = ap.parse_args()
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if a.make:
        a.export.parent.mkdir(parents=True, exist_ok=True)
        make(a.results, a.export, cfg)
        return
    import numba

    from clumpfinder.crowd.consensus import ConsensusSpec, run_consensus
    from clumpfinder.data.zooniverse import read_export

    spec = ConsensusSpec.from_config(dict(cfg["consensus"], method=a.method,
                                          swap=dict(cfg["consensus"]["swap"], mode="unsupervised")))
    if a.warm_cache:
        with open(a.export, "rb") as f:
            while f.read(1 << 26):
                pass
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    parsed = read_export(a.export, workers=a.workers)
    t_parse = time.perf_counter() - t0
    numba.set_num_threads(min(a.workers, numba.config.NUMBA_NUM_THREADS))
    t1 = time.perf_counter()
    res = run_consensus(parsed, spec)
    t_cons = time.perf_counter() - t1
    total = time.perf_counter() - t0
    n_clicks = parsed.report["clicks_used"]
    out = {
        "command": command_line(),
        "date": dt.date.today().isoformat(), "commit": git_commit(),
        # the survey whose subjects the export tiles (its volunteers are this script's own)
        "data_seeds": {"simulate": run_data_seeds(a.results, a.configfile)["simulate"]},
        "file_cache": "warmed" if a.warm_cache else "as found",
        "export": str(a.export), "export_gib": round(a.export.stat().st_size / 2**30, 3),
        "rows": parsed.report["rows_read"], "classifications": len(parsed.classifications), "clicks": n_clicks,
        "subjects": parsed.report["subjects"], "volunteers": parsed.report["volunteers"],
        "workers": a.workers, "method": a.method,
        "seconds": {"parse": round(t_parse, 1), "swap_and_consensus": round(t_cons, 1), "total": round(total, 1)},
        "clicks_per_second": round(n_clicks / total),
        "peak_rss_mb": {k: round(v) for k, v in peak_rss_mb().items()},
        "boxes": len(res.boxes), "em": res.report.get("em"),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
