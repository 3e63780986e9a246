"""Do the simulated consensus labels look like the real Clump Scout labels?

    python benchmarks/label_realism.py                      # default config, reporting and development seeds
    python benchmarks/label_realism.py --seeds development  # only the development simulation (for tuning)
    python benchmarks/label_realism.py --set simulate.clumps.radial_scale=1.5 --seeds development

For each simulation seed set (``reporting``: config/config.yaml as it is; ``development``: with
config/development.yaml on top, where every simulator setting is chosen) and each geometry, the
survey's catalogue is drawn (no images are rendered: the labels depend only on the objects),
volunteers classify it, the export is parsed and the EM consensus makes the labels as Clump Scout
made the real ones: Dickinson et al.'s EM, i.e. the workflow's EM without its false-site layer
(which drops clumps a group of volunteers marks together; the real labels kept them, so comparing
the simulator with them needs them kept). The workflow's own labels (false sites on) are reported
beside it at the default geometry (``workflow_consensus``), for information, not for tuning. Gold subjects are left out, as from the detection labels. The statistics of
the real labels (benchmarks/reference/clump_scout_labels.json, derived by
benchmarks/real_label_stats.py from Popp et al.'s published training set) are compared by
Kolmogorov-Smirnov distances, in units of the detector image's side:

* ``default``: the default geometry, the whole 96 px image the detector sees;
* ``popp``: Popp et al.'s geometry, 400 px subjects over a field of 9.3 half-light radii (Clump
  Scout's 4 x Petrosian R90 of an exponential disc) clipped to 62-106 arcsec, labels in the
  central 200 px crop's frame (boxes outside the crop kept, as in the real table).

Also: odd share of boxes, clicks per classification (real: 3,561,454 / 1,739,259 = 2.05), the
share of classifications that marked nothing (no real figure was found), and the volunteers'
clicks on knots (star-forming regions below 1.5 % of the galaxy's g flux: correlated false
positives). Writes benchmarks/results/label_realism.json.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from clumpfinder.crowd.consensus import ConsensusSpec, run_consensus  # noqa: E402
from clumpfinder.data.realism import ks_to_reference, label_statistics, summarise  # noqa: E402
from clumpfinder.data.simulate import SurveySpec, simulate_catalogue  # noqa: E402
from clumpfinder.data.kinds import FIELD, STAR_FORMING  # noqa: E402
from clumpfinder.data.volunteers import CrowdSpec, gold_subjects, simulate_export  # noqa: E402
from clumpfinder.data.zooniverse import read_export  # noqa: E402
from consensus_vs_truth import match  # noqa: E402
from provenance import command_line, data_seeds, git_commit  # noqa: E402

REAL_CLICKS_PER_CLASSIFICATION = 3_561_454 / 1_739_259
POPP = {"image_size": 400, "fov": {"factor": 9.3, "min_arcsec": 62.0, "max_arcsec": 106.0}}
POPP_CROP = 200


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base`` key by key, as Snakemake merges config files."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def setting(text: str) -> dict:
    """'a.b.c=1.5' -> {'a': {'b': {'c': 1.5}}} (the value read as YAML)."""
    key, _, value = text.partition("=")
    out: dict = yaml.safe_load(value)
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def measure(cfg: dict, geometry: str, workdir: Path) -> dict[str, Any]:
    """Labels of one simulated survey and their statistics against the real ones."""
    sim = merge(cfg["simulate"], POPP) if geometry == "popp" else cfg["simulate"]
    manifest, truth = simulate_catalogue(SurveySpec.from_config(sim))
    crowd = CrowdSpec.from_config(cfg["volunteers"])
    export = workdir / f"export_{geometry}.csv"
    simulate_export(crowd, manifest, truth, export)
    parsed = read_export(export)
    gold = gold_subjects(crowd, manifest, truth).set_index("subject_id")["has_clumps"]
    spec = ConsensusSpec.from_config(cfg["consensus"])
    boxes = run_consensus(parsed, spec, gold).boxes
    boxes = boxes[~boxes["subject_id"].isin(gold.index)]
    side = sim["image_size"]
    if geometry == "popp":  # the central crop's frame, as the real table
        shift = (side - POPP_CROP) / 2
        boxes = boxes.assign(x1=boxes["x1"] - shift, x2=boxes["x2"] - shift, y1=boxes["y1"] - shift,
                             y2=boxes["y2"] - shift)
        side = POPP_CROP
    marks = what_boxes_mark(boxes, truth, manifest.set_index("subject_id")["psf_fwhm_pixels"])
    stats = label_statistics(boxes.assign(odd=boxes["category"] == "odd_clump"), side)
    cls = parsed.classifications
    return {
        "stats": stats, "boxes_mark": marks,
        "clicks_per_classification": round(parsed.report["clicks_used"] / len(cls), 4),
        "empty_classification_share": round(float((cls["n_marks"] == 0).mean()), 4),
        "subjects": len(manifest), "subjects_with_boxes_share": round(stats["galaxies"] / len(manifest), 4),
        "truth_objects_per_galaxy": truth.groupby("kind").size().div(len(manifest)).round(3).to_dict(),
    }


def what_boxes_mark(boxes: pd.DataFrame, truth: pd.DataFrame, fwhm: pd.Series) -> dict[str, float]:
    """Share of consensus boxes on each kind of object (nearest within 0.5 PSF FWHM, one box per
    object): giant clumps (>= 3 % of the galaxy's g flux) and odd objects, star-forming regions of
    1.5-3 % (neither right nor wrong in the evaluation), fainter knots, field sources beside the
    galaxy (ignored by the evaluation), or nothing."""
    sf = truth["kind"].isin(STAR_FORMING)
    f = truth["flux_fraction_g"]
    label = np.select([(truth["kind"] == "odd") | (sf & (f >= 0.03)), sf & (f >= 0.015), truth["kind"] == FIELD],
                      ["clump_or_odd", "clump_1.5_to_3pct", "field_source"], "knot_below_1.5pct")
    m = match(boxes, truth.assign(label=label), fwhm, 0.5)
    counts = m.loc[m["matched"], "label"].value_counts()
    out = {k: round(float(counts.get(k, 0)) / len(boxes), 4) for k in ("clump_or_odd", "clump_1.5_to_3pct",
                                                                      "knot_below_1.5pct", "field_source")}
    out["nothing"] = round(1.0 - sum(out.values()), 4)
    return out


def report(result: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    ks = ks_to_reference(result["stats"], reference)
    return {
        "ks": ks,
        "odd_share": round(result["stats"]["odd_share"], 4),
        "clicks_per_classification": result["clicks_per_classification"],
        "empty_classification_share": result["empty_classification_share"],
        "labelled_galaxy_share": result["subjects_with_boxes_share"],
        "summary": summarise(result["stats"]),
        "consensus_boxes_mark": result["boxes_mark"],
        "truth_objects_per_galaxy": result["truth_objects_per_galaxy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", type=Path, action="append", default=[],
                    help="override file(s) merged on top of config/config.yaml (before the seed set)")
    ap.add_argument("--seeds", nargs="+", choices=["reporting", "development"], default=["reporting", "development"])
    ap.add_argument("--geometry", nargs="+", choices=["default", "popp"], default=["default", "popp"])
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="one setting, e.g. simulate.clumps.radial_scale=1.4 (YAML value)")
    ap.add_argument("--reference", type=Path, default=REPO / "benchmarks" / "reference" / "clump_scout_labels.json")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "label_realism.json")
    a = ap.parse_args()
    reference = json.loads(a.reference.read_text())
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for f in a.configfile:
        base = merge(base, yaml.safe_load(f.read_text()) or {})
    for s in a.settings:
        base = merge(base, setting(s))
    development = yaml.safe_load((REPO / "config" / "development.yaml").read_text())
    out: dict[str, Any] = {
        "command": command_line(),
        "date": dt.date.today().isoformat(), "commit": git_commit(),
        "data_seeds": [data_seeds(merge(base, development) if s == "development" else base) for s in a.seeds],
        "reference": {"file": str(a.reference.relative_to(REPO)), "source": reference["source"]["repository"],
                      "galaxies": reference["galaxies"], "boxes": reference["boxes"],
                      "boxes_per_galaxy_mean": reference["boxes_per_galaxy"]["mean"],
                      "odd_share": reference["odd_share"], "clicks_per_classification": round(REAL_CLICKS_PER_CLASSIFICATION, 4)},
        "seeds": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for seed_set in a.seeds:
            cfg = merge(base, development) if seed_set == "development" else base
            out["seeds"][seed_set] = {"simulate_seed": cfg["simulate"]["seed"],
                                      "volunteers_seed": cfg["volunteers"]["seed"]}
            clump_scout = merge(cfg, {"consensus": {"em": {"false_sites": {"enabled": False}}}})
            runs = [(g, g, clump_scout) for g in a.geometry]
            if "default" in a.geometry:
                runs.append(("workflow_consensus", "default", cfg))
            for name, geometry, run_cfg in runs:
                t0 = time.perf_counter()
                res = report(measure(run_cfg, geometry, Path(tmp)), reference)
                res["seconds"] = round(time.perf_counter() - t0, 1)
                res["false_sites"] = run_cfg["consensus"]["em"]["false_sites"]["enabled"]
                out["seeds"][seed_set][name] = res
                print(seed_set, name, json.dumps({k: res[k] for k in ("ks", "odd_share", "clicks_per_classification",
                                                                         "empty_classification_share")}), flush=True)
    first = out["seeds"][a.seeds[0]]
    if "default" in first:  # the headline: the first seed set (reporting by default) at the default geometry
        out.update({k: first["default"][k] for k in ("ks", "odd_share", "clicks_per_classification")})
        out["headline_seeds"] = a.seeds[0]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
