"""The partnership replay's settings compared on a simulated survey (the development seeds).

    snakemake --cores 2 results/survey/manifest.csv results/consensus/report.json \
        --configfile config/development.yaml --directory DEV
    python benchmarks/partnership_choices.py --workdir DEV --configfile config/development.yaml

Runs the replay (the rule's own code, :func:`clumpfinder.partnership.run.replay_files`) on the
survey, export and truth under DEV/results/survey for each variant below, on top of
config/config.yaml and the given config files, and writes the human shares, label F1 (with
intervals), classifications used, subjects decided and the machine's rounds of each to
benchmarks/results/partnership_choices_<role>.json (role: report.seed_role of the merged config).
Choices are made on the development seeds; the reporting seeds are run once, by the workflow.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from clumpfinder.compute import ComputeSpec  # noqa: E402
from clumpfinder.config import Plan, deep_update  # noqa: E402
from clumpfinder.partnership.run import replay_files  # noqa: E402
from provenance import command_line, data_seeds, git_commit  # noqa: E402

#: (name, partnership overrides, with the machine)
VARIANTS = [
    ("finished_em_own", {"finished": {"max_risk": 1.0, "max_expected": 0.3}}, False),
    ("finished_0.5_0.15", {}, False),
    ("finished_0.3_0.1", {"finished": {"max_risk": 0.3, "max_expected": 0.1}}, False),
    ("check_every_100", {"check_every": 100}, False),
    ("machine_from_init_each_round", {"machine": {"fine_tune": False}}, True),
    ("machine_fine_tuned", {}, True),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--configfile", type=Path, nargs="*", default=[])
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("clumpfinder.detection").setLevel(logging.WARNING)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for f in args.configfile:
        config = deep_update(config, yaml.safe_load(f.read_text()))
    role = config["report"]["seed_role"]
    out = args.out or REPO / "benchmarks" / "results" / f"partnership_choices_{role}.json"
    plan = Plan(config, "results", yaml.safe_load((REPO / "config" / "schema.yaml").read_text()))
    backbone = plan.partnership_backbone()
    survey = args.workdir / "results" / "survey"
    record = {"command": "python benchmarks/partnership_choices.py --workdir DIR --configfile ... [--only NAME ...]",
              "data_seeds": data_seeds(config), "seed_role": role, "simulate_seed": config["simulate"]["seed"],
              "volunteers_seed": config["volunteers"]["seed"], "machine_backbone": backbone, "variants": {}}
    if args.only and out.exists():  # a few variants again: the others' results stay
        record["variants"] = json.loads(out.read_text())["variants"]
    for name, override, machine in VARIANTS:
        if args.only and name not in args.only:
            continue
        cfg = copy.deepcopy(config)
        cfg["partnership"] = deep_update(cfg["partnership"], override)
        t0 = time.perf_counter()
        _, _, summary = replay_files(
            survey / "classifications.csv", survey / "manifest.csv", survey / "png", cfg,
            plan.backbone_spec(backbone), plan.training_spec(backbone, 0),
            ComputeSpec.from_config({**cfg["compute"], "device": "cpu"}), threads=args.threads,
            gold=survey / "gold.csv", truth=survey / "truth.csv", with_machine=machine)
        keep = ("human_classifications", "share_of_fixed", "subjects_decided", "f1", "f1_interval", "completeness",
                "purity", "human_share", "human_share_interval", "reached_in_resamples", "retired_as")
        record["variants"][name] = {
            "command": command_line(),
            "date": dt.date.today().isoformat(), "commit": git_commit(),
            "override": override, "with_machine": machine, "seconds": round(time.perf_counter() - t0, 1),
            "target_f1": summary["target_f1"],
            "strategies": {s: {k: e.get(k) for k in keep} for s, e in summary["strategies"].items()},
            "machine_rounds": [{k: r.get(k) for k in ("round", "human_classifications", "trained_on", "held_out_f1",
                                                      "threshold", "marked", "classified", "seconds")}
                               for r in summary["machine_rounds"]] if machine else None,
        }
        out.write_text(json.dumps(record, indent=1) + "\n")  # after each variant: a long run shows progress
        logging.info("%s: %s", name, json.dumps(record["variants"][name]["strategies"]))


if __name__ == "__main__":
    main()
