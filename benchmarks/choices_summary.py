"""One result file from several runs of benchmarks/detector_choices.py, with each variant's mean
validation F1 per (backbone, size) over its training seeds and its difference to a reference
variant.

    python benchmarks/choices_summary.py --reference before --out benchmarks/results/X.json \\
        runs_before.json runs_after.json [--launched runs_before.json=299c6ba]

Each input is a detector_choices output (its runs, command, date, commit); the runs are kept
whole (learning curves included) with the source they came from. ``--launched FILE=COMMIT`` states
the commit a source was started from where its file records another one (files written before
the benchmarks read their commit at start recorded the one current when they were written).
``--rename FILE=VARIANT`` names the variant of every run of a file; ``--same
VARIANT:BACKBONE:N=OTHER`` also counts a cell's runs as variant OTHER's (for runs whose settings
differ only in a way that did not act, said in ``--note``). Writes ``--out`` (JSON) with command, date, commit, data seeds, sources and summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import command_line, git_commit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", type=Path, nargs="+")
    ap.add_argument("--reference", required=True, help="the variant every other one is compared with")
    ap.add_argument("--launched", action="append", default=[], metavar="FILE=COMMIT")
    ap.add_argument("--rename", action="append", default=[], metavar="FILE=VARIANT")
    ap.add_argument("--same", action="append", default=[], metavar="VARIANT:BACKBONE:N=OTHER")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--what", default="")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    launched = dict(x.split("=", 1) for x in a.launched)
    renamed = dict(x.split("=", 1) for x in a.rename)
    sources, runs, seeds = [], [], []
    for path in a.inputs:
        d = json.loads(path.read_text())
        source = {"file": path.name, "command": d.get("command"), "date": d.get("date"),
                  "recorded_commit": d.get("commit"), "data_seeds": d.get("data_seeds"), "workdir": d.get("workdir")}
        if str(path) in launched or path.name in launched:
            source["launched_at_commit"] = launched.get(str(path), launched.get(path.name))
        sources.append(source)
        seeds.append(d.get("data_seeds"))
        name = renamed.get(str(path), renamed.get(path.name))
        runs += [dict(r, source=path.name, **({"variant": name} if name else {})) for r in d["runs"]]
    for same in a.same:
        cell, other = same.split("=", 1)
        variant, backbone, n = cell.split(":")
        runs += [dict(r, variant=other, counted_from=variant) for r in runs
                 if (r["variant"], r["backbone"], r["n_train"]) == (variant, backbone, int(n))]
    known = [s for s in seeds if s is not None]  # (files from before the script recorded its seeds)
    if not known or any(s != known[0] for s in known):
        raise SystemExit(f"the inputs measured different or unrecorded data: {seeds}")
    cells: dict[tuple[str, str, int], dict[int, float]] = {}
    for r in runs:
        cells.setdefault((r["variant"], r["backbone"], r["n_train"]), {})[r["seed"]] = r["val_full"]["val_f1"]
    summary = []
    for (variant, backbone, n), by_seed in sorted(cells.items()):
        values = [by_seed[s] for s in sorted(by_seed)]
        row = {"variant": variant, "backbone": backbone, "n_train": n, "seeds": sorted(by_seed),
               "val_f1_mean": round(statistics.fmean(values), 4),
               "val_f1_sd": round(statistics.stdev(values), 4) if len(values) > 1 else None}
        ref = cells.get((a.reference, backbone, n))
        if ref and variant != a.reference:
            row["minus_reference"] = round(row["val_f1_mean"] - statistics.fmean(ref.values()), 4)
        summary.append(row)
    pooled = {}
    for variant in sorted({v for v, _, _ in cells}):
        keys = [k for k in cells if k[0] == variant and (a.reference, k[1], k[2]) in cells]
        if variant == a.reference or not keys:
            continue
        diffs = [statistics.fmean(cells[k].values()) - statistics.fmean(cells[(a.reference, k[1], k[2])].values())
                 for k in keys]
        pooled[variant] = {"cells": len(keys), "mean_minus_reference": round(statistics.fmean(diffs), 4)}
    out = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
           "data_seeds": known[0], "what": a.what, "split": "val (consensus labels), whole validation split",
           "notes": a.note, "reference": a.reference, "sources": sources, "summary": summary,
           "pooled_over_cells": pooled, "runs": runs}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    for row in summary:
        print(row)
    print(pooled)


if __name__ == "__main__":
    main()
