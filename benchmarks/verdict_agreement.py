"""Do two runs of the same configuration that differ only in their floating-point path reach the
same verdicts? A check that the summary's verdicts are about training recipes, not about one
machine's rounding.

    snakemake --cores 2 --configfile config/development.yaml --directory dev_t1
    snakemake --cores 2 --configfile config/development.yaml threads2.yaml --directory dev_t2
    python benchmarks/verdict_agreement.py --run "1 thread" dev_t1 config/development.yaml \\
        --run "2 threads" dev_t2 config/development.yaml threads2.yaml

Each ``--run`` is a name, a workflow directory and the configuration files it was run with. For
each run the script reads the evaluations of its sweep and its reference points, and recomputes
with the package's own summary code (checked against the run's comparison.csv) every verdict
the summary makes: each backbone minus the baseline at each size (completeness, purity, F1),
each backbone's largest minus smallest size (F1), and each detector minus the classical finder
(F1), against each label set. A verdict is ``higher``, ``lower``, ``not decided`` or ``cannot
decide`` (clumpfinder.metrics.verdict). Two runs agree on a comparison when their verdicts are
equal. Also recorded: how far the runs' trained models moved apart (the largest difference in a
model's test F1 between the runs, over every backbone, size, seed and label set), which shows
that the floating-point paths really differ; and each verdict with both runs' models pooled
into one experiment (a floating-point path being one more source of training scatter; the second
run's seeds renumbered), the best estimate the two runs give together. Writes ``--out`` (JSON)
with command, date, commit and the runs' data seeds.

``--seeds-on-disk``: each cell takes every training seed evaluated in the run's directory, not only
the configured ones: where the two runs disagree, more seeds can be trained for those cells alone
(``snakemake ... --configfile`` with a file giving a longer ``sweep.seeds``, and the cells'
evaluation files as targets) and the verdicts recomputed. The check against the run's comparison.csv is then skipped
(that summary was made from the configured seeds); each verdict row gives its seed counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from clumpfinder.config import Plan
from clumpfinder.io import read_json
from clumpfinder.labels.coco import pool_size
from clumpfinder.report.summary import compare, size_effect, sweep_runs, versus_references

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import command_line, git_commit, merged_config, run_data_seeds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MEASURES = ("completeness", "purity", "f1")


def seeds_on_disk(res: Path, backbone: str, n_train: int) -> list[int]:
    """The training seeds evaluated for one cell in a run's results directory."""
    found = sorted(int(p.parent.name.removeprefix("seed"))
                   for p in (res / "eval" / backbone / f"n{n_train}").glob("seed*/metrics.json"))
    if not found:
        raise SystemExit(f"no evaluation of {backbone} at n = {n_train} under {res}/eval")
    return found


def load_run(workdir: Path, configfiles: list[str], all_seeds: bool = False) -> dict[str, Any]:
    """One run's evaluations (``runs``: backbone, n_train, seed, metrics), reference points,
    baseline, bootstrap settings, the settings that matter and per-model test scores; with
    ``all_seeds``, every seed evaluated on disk in each cell."""
    cfg = merged_config(configfiles)
    res = workdir / "results"
    plan = Plan(cfg, str(res), yaml.safe_load((REPO / "config" / "schema.yaml").read_text()))
    boot = cfg["evaluation"]["bootstrap"]
    runs = sweep_runs(plan.backbones, plan.n_train, plan.seeds, plan.sweep_files("metrics.json"),
                      full=pool_size(pd.read_csv(res / "labels" / "splits.csv")))
    if all_seeds:
        runs = [(b, n, s, read_json(res / "eval" / b / f"n{n}" / f"seed{s}" / "metrics.json"))
                for b, n in dict.fromkeys((b, n) for b, n, _, _ in runs) for s in seeds_on_disk(res, b, n)]
    references = {name: read_json(res / "eval" / name / "metrics.json") for name in ("consensus_ceiling", "classical")
                  if (res / "eval" / name / "metrics.json").exists()}
    if not all_seeds:  # the recomputation is the run's own summary
        comparison = compare(runs, plan.baseline, boot)
        on_disk = pd.read_csv(res / "comparison.csv")
        for k in MEASURES:
            if list(on_disk[f"{k}_verdict"].fillna("")) != list(comparison[f"{k}_verdict"].fillna("")):
                raise SystemExit(f"{res}/comparison.csv has other {k} verdicts than the summary code gives now: "
                                 "was it made by other code?")
    models = pd.DataFrame([{"backbone": b, "n_train": n, "seed": s, "reference": ref,
                            "f1": m["references"][ref]["merged"]["f1"]}
                           for b, n, s, m in runs for ref in m["references"]])
    cells: dict[str, list[int]] = {}
    for b, n, s, _ in runs:
        cells.setdefault(f"{b} n{n}", []).append(int(s))
    settings = {"threads": cfg["threads"], "compute": cfg["compute"], "seeds": cells,
                "bootstrap": boot, "data_seeds": run_data_seeds(res, configfiles)}
    return {"runs": runs, "references": references, "baseline": plan.baseline, "bootstrap": boot,
            "settings": settings, "models": models}


def verdict_rows(runs: list[tuple], references: dict[str, Any], baseline: str, boot: dict[str, Any]) -> list[dict]:
    """Every verdict the summary makes, recomputed with the package's summary code."""
    comparison = compare(runs, baseline, boot)
    rows = []
    for _, r in comparison[comparison["backbone"] != comparison["baseline"]].iterrows():
        for k in MEASURES:
            rows.append({"comparison": f"{r['backbone']} - {r['baseline']}", "reference": r["reference"],
                         "n_train": int(r["n_train"]), "measure": k, "diff": r[f"{k}_diff"],
                         "low": r[f"{k}_diff_low"], "high": r[f"{k}_diff_high"], "verdict": r[f"{k}_verdict"],
                         "seeds": [int(r["n_seeds"]), int(r["baseline_n_seeds"])]})
    for _, r in size_effect(runs, boot).iterrows():
        rows.append({"comparison": f"{r['backbone']}: n = {r['n_to']} - n = {r['n_from']}", "reference": r["reference"],
                     "n_train": None, "measure": "f1", "diff": r["f1_diff"], "low": r["f1_diff_low"],
                     "high": r["f1_diff_high"], "verdict": r["f1_verdict"], "seeds": [int(r["n_seeds"])]})
    versus = versus_references(runs, references, boot) if "classical" in references else pd.DataFrame()
    for _, r in versus[versus["n_train"].notna()].iterrows() if len(versus) else []:
        rows.append({"comparison": f"{r['arm']} - classical finder", "reference": r["reference"],
                     "n_train": int(r["n_train"]), "measure": "f1", "diff": r["f1_diff_classical"],
                     "low": r["f1_diff_classical_low"], "high": r["f1_diff_classical_high"],
                     "verdict": r["f1_diff_classical_verdict"], "seeds": [int(r["n_seeds"])]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs="+", action="append", required=True, metavar=("NAME DIR", "CONFIGFILE"),
                    help="a name, a workflow directory and the configuration files it was run with")
    ap.add_argument("--seeds-on-disk", action="store_true",
                    help="every training seed evaluated in each cell, not only the configured ones")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "verdict_agreement_development.json")
    a = ap.parse_args()
    if len(a.run) != 2 or any(len(r) < 2 for r in a.run):
        raise SystemExit("give two --run NAME DIR [CONFIGFILE ...]")
    results, loaded = {}, []
    for name, workdir, *configfiles in a.run:
        run = load_run(Path(workdir), configfiles, a.seeds_on_disk)
        loaded.append(run)
        results[name] = {"workdir": workdir, "configfiles": configfiles, "settings": run["settings"],
                         "rows": verdict_rows(run["runs"], run["references"], run["baseline"], run["bootstrap"]),
                         "models": run["models"]}
    # both runs' models as one experiment (a floating-point path is one more source of training
    # scatter): the second run's seeds renumbered, the reference points (no torch) the first run's
    first_run, second_run = loaded
    if first_run["settings"]["data_seeds"] != second_run["settings"]["data_seeds"]:
        raise SystemExit("the runs measured different data: their verdicts cannot be compared")
    pooled_rows = verdict_rows(first_run["runs"] + [(b, n, 1000 + s, m) for b, n, s, m in second_run["runs"]],
                               first_run["references"], first_run["baseline"], first_run["bootstrap"])
    (first, one), (second, two) = results.items()
    key = ("comparison", "reference", "n_train", "measure")
    a_rows = {tuple(r[k] for k in key): r for r in one["rows"]}
    b_rows = {tuple(r[k] for k in key): r for r in two["rows"]}
    if set(a_rows) != set(b_rows):
        raise SystemExit(f"the runs make different comparisons: {sorted(set(a_rows) ^ set(b_rows), key=str)}")
    pooled = {tuple(r[k] for k in key): r for r in pooled_rows}
    verdicts = []
    for k in sorted(a_rows, key=str):
        ra, rb = a_rows[k], b_rows[k]
        verdicts.append({**dict(zip(key, k)), first: {f: ra[f] for f in ("diff", "low", "high", "verdict", "seeds")},
                         second: {f: rb[f] for f in ("diff", "low", "high", "verdict", "seeds")},
                         "both runs pooled": {f: pooled[k][f] for f in ("diff", "low", "high", "verdict", "seeds")},
                         "agree": ra["verdict"] == rb["verdict"]})
    models = one["models"].merge(two["models"], on=["backbone", "n_train", "seed", "reference"], suffixes=("_a", "_b"))
    moved = (models["f1_a"] - models["f1_b"]).abs()
    out = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
           "data_seeds": [r["settings"]["data_seeds"] for r in results.values()],
           "runs": {name: {k: r[k] for k in ("workdir", "configfiles", "settings")} for name, r in results.items()},
           "comparisons": len(verdicts), "agree": sum(v["agree"] for v in verdicts),
           "disagree": [v for v in verdicts if not v["agree"]],
           "decided": {name: sum(v[name]["verdict"] in ("higher", "lower") for v in verdicts) for name in results},
           "pooled_decided": sum(v["both runs pooled"]["verdict"] in ("higher", "lower") for v in verdicts),
           "models_compared": len(models),
           "model_f1_moved": {"max": round(float(moved.max()), 4), "median": round(float(moved.median()), 4),
                              "identical_models": int((moved == 0).sum())},
           "verdicts": verdicts}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"{out['agree']} of {out['comparisons']} verdicts agree; decided: {out['decided']}; "
          f"model F1 moved by up to {out['model_f1_moved']['max']} between the runs")
    for v in out["disagree"]:
        print("DISAGREE", v)


if __name__ == "__main__":
    main()
