"""Which aperture and background annulus measure clumps best: a choice made on validation galaxies.

    python benchmarks/catalogue_photometry.py --results DIR [--split val]

``DIR`` is the ``results/`` folder of a run of the default configuration. For every giant clump
(star-forming, >= 8 % of its galaxy's g-band flux) of the split's galaxies, the catalogue's
photometry (``clumpfinder.clumps.measure``: footprint, aperture, annulus background with the
other objects masked, PSF aperture correction) runs at the clump's *true* position, so that the
settings are compared on photometry alone, for each candidate (aperture radius, annulus) in PSF
FWHM: Popp et al.'s (1.125; 1.5-2.5), annuli closer to the aperture, a smaller aperture. Reports,
per candidate, the median g-band delta mag (catalogue - truth), the median |delta mag| and the
robust scatter (1.4826 x MAD). The test split is refused: settings are chosen on validation
galaxies (docs/protocol.md). Results go to benchmarks/results/catalogue_photometry_<split>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from clumpfinder.data.kinds import STAR_FORMING  # noqa: E402
from provenance import command_line, git_commit, merged_config, run_data_seeds  # noqa: E402

#: (aperture radius, [annulus inner, outer]) in PSF FWHM
CANDIDATES = [(1.125, [1.5, 2.5]), (1.125, [1.25, 2.0]), (1.125, [1.125, 1.75]), (1.0, [1.25, 2.0]),
              (0.75, [1.5, 2.5])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--split", choices=["train", "val"], default="val")
    ap.add_argument("--configfile", action="append", default=[], help="the configuration files the run was made with")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from clumpfinder.clumps.measure import MeasureSpec, footprint, photometry
    from clumpfinder.clumps.sources import FitsOptions, survey
    from clumpfinder.clumps.validate import robust_scatter

    cfg = merged_config(args.configfile)
    seeds = run_data_seeds(args.results, args.configfile)
    res = args.results
    truth = pd.read_csv(res / "survey" / "truth.csv")
    splits = pd.read_csv(res / "labels" / "splits.csv")
    ids = set(splits.loc[splits["split"] == args.split, "subject_id"])
    star = truth[truth["kind"].isin(STAR_FORMING) & truth["subject_id"].isin(ids)]
    giant_ids = set(star.loc[star["flux_fraction_g"] >= 0.08, "subject_id"])
    manifest = pd.read_csv(res / "survey" / "manifest.csv")
    manifest = manifest[manifest["subject_id"].isin(giant_ids)]
    galaxies = list(survey(manifest, FitsOptions(png=cfg["simulate"]["png"]), res / "survey" / "fits"))
    base = cfg["catalogue"]["measure"]
    rows = []
    for aperture, annulus in CANDIDATES:
        spec = MeasureSpec.from_config({**base, "aperture_fwhm": aperture, "annulus_fwhm": annulus})
        dmag = []
        for g in galaxies:
            t = star[star["subject_id"] == int(g.name)]  # every star-forming object masked as a clump
            clumps = pd.DataFrame({"x": t["x"].to_numpy(), "y": t["y"].to_numpy(), "label": "clump"})
            phot, _ = photometry(g, clumps, footprint(g, spec), spec)
            giant = (t["flux_fraction_g"] >= 0.08).to_numpy()
            dmag += list(phot["mag_g"].to_numpy()[giant] - (22.5 - 2.5 * np.log10(t["flux_g"].to_numpy()[giant])))
        d = np.asarray(dmag)
        d = d[np.isfinite(d)]
        rows.append({"aperture_fwhm": aperture, "annulus_fwhm": annulus, "n": int(len(d)),
                     "median_dmag": round(float(np.median(d)), 4), "median_abs_dmag": round(float(np.median(np.abs(d))), 4),
                     "robust_scatter_mag": round(robust_scatter(d), 4)})
        print(rows[-1])
    out = {
        "command": command_line(), "date": dt.date.today().isoformat(), "commit": git_commit(),
        "data_seeds": seeds, "split": args.split,
        "galaxies": len(galaxies), "positions": "true (photometry alone)", "candidates": rows,
        "default": {"aperture_fwhm": base["aperture_fwhm"], "annulus_fwhm": base["annulus_fwhm"]},
    }
    path = args.out or REPO / "benchmarks" / "results" / f"catalogue_photometry_{args.split}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
