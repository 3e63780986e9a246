"""How a detector does on real galaxies with published clumps: the development set of
``../shared/real-galaxies`` (30 SDSS Stripe 82 galaxies of Mehta et al. 2021, as Galaxy Zoo JPEGs,
with the clumps those authors catalogued; its README says where they come from).

    python benchmarks/real_galaxies.py --folder ../shared/real-galaxies \\
        --model dev/results/clumps/detector.pt --configfile config/development.yaml

The detector runs through the code path of ``clumpfinder detect --images FOLDER/jpegs --galaxies
FOLDER/galaxies.csv`` (:func:`clumpfinder.clumps.cli.catalogue_files`): each galaxy cut to the field
the detector was trained on, its detections post-processed (bulge cut, off-galaxy cut, merging)
exactly as a user's catalogue is. ``--whole-image`` measures what a user gets without the galaxy
table (the whole 424 px JPEG). The workflow's classical finder runs beside it on the same windows,
with the median filter and threshold it chose on its run's validation split (``--classical``).

Scored as the set's README says (its labels are not Clump Scout's): a detection matches a
catalogued clump when its box centre lies within half the clump's ``box_side``, one to one, highest
score first. ``purity_clump``: matched ``clump``-class detections over all ``clump``-class
detections (the catalogue leaves stars and background galaxies out, which the simulation calls odd
clumps); ``purity``: the same over every detection; ``completeness_3pct``: matched catalogued
clumps with ``flux_fraction_g`` >= 0.03 over all such clumps; ``f1``: the harmonic mean of
``purity`` and ``completeness_3pct``. At the model's own score threshold (chosen on the simulation's
validation split, never on these galaxies) and over a grid of thresholds (a curve, to read, not to
choose from). Writes ``--out`` (JSON: command, date, commit, the detector's training data seeds)
and a gallery PNG (``--gallery``; it shows the survey's images, so it stays outside the repository).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import command_line, git_commit, merged_config, run_data_seeds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = [round(t, 2) for t in np.arange(0.05, 0.96, 0.05)]
GIANT = 0.03  # flux_fraction_g of the clumps completeness is judged on (Clump Scout's faintest)


def match(detections: pd.DataFrame, clumps: pd.DataFrame) -> pd.DataFrame:
    """``detections`` (galaxy, x, y, score, label) with a ``match`` column: the index in
    ``clumps`` (galaxy, x, y, box_side) of the catalogued clump it matched, or -1. One to one per
    galaxy, highest score first, each detection taking the nearest free clump within half its
    ``box_side``."""
    out = detections.sort_values("score", ascending=False, kind="stable").copy()
    out["match"] = -1
    by_galaxy = {g: c for g, c in clumps.groupby("galaxy")}
    for g, dets in out.groupby("galaxy", sort=False):
        cat = by_galaxy.get(g)
        if cat is None:
            continue
        free = np.ones(len(cat), bool)
        cx, cy, half = cat["x"].to_numpy(), cat["y"].to_numpy(), cat["box_side"].to_numpy() / 2
        for i, (x, y) in zip(dets.index, dets[["x", "y"]].to_numpy()):
            d = np.hypot(cx - x, cy - y)
            ok = free & (d <= half)
            if ok.any():
                k = int(np.argmin(np.where(ok, d, np.inf)))
                free[k] = False
                out.at[i, "match"] = int(cat.index[k])
    return out


def scores(matched: pd.DataFrame, clumps: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Purity, completeness and F1 (module docstring) of the detections at ``threshold``."""
    d = matched[matched["score"] >= threshold]
    clump_class = d[d["label"] == "clump"]
    giant = clumps.index[clumps["flux_fraction_g"] >= GIANT]
    found = set(d.loc[d["match"] >= 0, "match"])
    n_giant_found = len(found & set(giant))
    purity = (d["match"] >= 0).mean() if len(d) else float("nan")
    purity_clump = (clump_class["match"] >= 0).mean() if len(clump_class) else float("nan")
    completeness = n_giant_found / len(giant) if len(giant) else float("nan")
    f1 = 2 * purity * completeness / (purity + completeness) if purity + completeness > 0 else 0.0
    return {"score": threshold, "detections": len(d), "clump_class_detections": len(clump_class),
            "matched": int((d["match"] >= 0).sum()), "purity": _r(purity), "purity_clump": _r(purity_clump),
            "giant_clumps_found": n_giant_found, "completeness_3pct": _r(completeness),
            "completeness_all": _r(len(found) / len(clumps)) if len(clumps) else None, "f1": _r(f1)}


def _r(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def run_detector(folder: Path, model: Path, whole_image: bool = False):
    """The catalogue of the folder's JPEGs as ``clumpfinder detect --images FOLDER/jpegs --galaxies
    FOLDER/galaxies.csv --score 0.05`` makes it (without ``--galaxies`` for ``whole_image``); the
    curve's thresholds are applied to it afterwards (post-processing at a higher threshold keeps
    exactly the detections above it: a detection is only ever merged into a higher-scored one)."""
    from clumpfinder.clumps.cli import catalogue_files
    from clumpfinder.clumps.sources import open_source, read_galaxy_table

    table = None if whole_image else read_galaxy_table(folder / "galaxies.csv")
    with tempfile.TemporaryDirectory() as tmp:
        return catalogue_files(lambda prep: open_source("images", folder / "jpegs", None, table), model,
                               Path(tmp) / "catalogue.fits", score=min(THRESHOLDS), progress_bar=False)


def read_set(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(galaxies, catalogued clumps) of a real-galaxies folder, the clumps' galaxies named by their
    image's stem, as the catalogue names them."""
    galaxies = pd.read_csv(folder / "galaxies.csv", dtype={"galaxy": str})
    clumps = pd.read_csv(folder / "clumps.csv", dtype={"galaxy": str})
    clumps["galaxy"] = clumps["galaxy"].map(dict(zip(galaxies["galaxy"], galaxies["jpeg"].map(lambda f: Path(f).stem))))
    return galaxies, clumps


def detections(cat) -> pd.DataFrame:
    """A catalogue's clumps as the matching takes them (galaxy, x, y, score, label, box_side)."""
    return cat.clumps.assign(box_side=cat.clumps["box_x2"] - cat.clumps["box_x1"])[
        ["galaxy", "x", "y", "score", "label", "box_side"]]


def classical_detections(galaxies: pd.DataFrame, folder: Path, windows: dict[str, tuple[int, int, int, int]],
                         classical: dict[str, Any], config: dict[str, Any]) -> pd.DataFrame:
    """The workflow's classical finder on each galaxy's detector window (its PSF from the table)."""
    from PIL import Image

    from clumpfinder.clumps.field import cut_window
    from clumpfinder.scoring.classical import ClassicalSpec, find_clumps

    spec = ClassicalSpec.from_config(config["classical"])
    rows = []
    for g in galaxies.itertuples():
        name = Path(g.jpeg).stem
        with Image.open(folder / "jpegs" / g.jpeg) as im:
            rgb = np.asarray(im.convert("RGB"))
        x0, y0, w, h = windows.get(name, (0, 0, rgb.shape[1], rgb.shape[0]))
        peaks = find_clumps(cut_window(rgb, (x0, y0, w, h)), g.psf_fwhm_arcsec / g.jpeg_scale_arcsec,
                            classical["filter_fwhm"], spec)
        for p in peaks.itertuples():
            rows.append({"galaxy": name, "x": p.x + 0.5 + x0, "y": p.y + 0.5 + y0,
                         "score": p.snr / (p.snr + spec.snr_half), "label": "clump"})
    return pd.DataFrame(rows, columns=["galaxy", "x", "y", "score", "label"])


def gallery(path: Path, folder: Path, galaxies: pd.DataFrame, clumps: pd.DataFrame, matched: pd.DataFrame,
            windows: dict[str, tuple[int, int, int, int]], threshold: float) -> None:
    """One panel per galaxy (its detector window): catalogued clumps as circles (cyan: >= 3 % of
    the g flux), detections at the model's threshold as squares (green: matched, red: not; dashed:
    the odd class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle
    from PIL import Image

    n = len(galaxies)
    cols = 6
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(2.2 * cols, 2.2 * -(-n // cols)))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, g in zip(np.ravel(axes), galaxies.itertuples()):
        name = Path(g.jpeg).stem
        with Image.open(folder / "jpegs" / g.jpeg) as im:
            rgb = np.asarray(im.convert("RGB"))
        x0, y0, w, h = windows.get(name, (0, 0, rgb.shape[1], rgb.shape[0]))
        ax.imshow(rgb, extent=(0, rgb.shape[1], rgb.shape[0], 0))
        ax.set_xlim(x0, x0 + w)
        ax.set_ylim(y0 + h, y0)
        for c in clumps[clumps["galaxy"] == name].itertuples():
            ax.add_patch(Circle((c.x, c.y), c.box_side / 2, fill=False, lw=0.8,
                                color="cyan" if c.flux_fraction_g >= GIANT else "white"))
        d = matched[(matched["galaxy"] == name) & (matched["score"] >= threshold)]
        for r in d.itertuples():
            ax.add_patch(Rectangle((r.x - r.box_side / 2, r.y - r.box_side / 2), r.box_side, r.box_side, fill=False, lw=0.8,
                                   color="lime" if r.match >= 0 else "red", ls="-" if r.label == "clump" else "--"))
        ax.set_title(f"{name[-6:]}: {int((d['match'] >= 0).sum())}/{len(d)} det.", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True, help="the real-galaxies folder (jpegs/, galaxies.csv, clumps.csv)")
    ap.add_argument("--model", type=Path, required=True, help="an exported detector (results/clumps/detector.pt of a run)")
    ap.add_argument("--configfile", nargs="*", default=[], help="the configuration files the detector's run used")
    ap.add_argument("--classical", type=Path, default=None,
                    help="the run's eval/classical/metrics.json (default: beside the model's run)")
    ap.add_argument("--whole-image", action="store_true", help="no galaxy table: the detector sees each whole JPEG")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "real_galaxies_development.json")
    ap.add_argument("--gallery", type=Path, default=Path("real_galaxies_gallery.png"),
                    help="gallery PNG (shows the survey's images: keep it out of the repository)")
    a = ap.parse_args()

    from clumpfinder.clumps.model import load_detector

    t0 = time.time()
    results = a.model.resolve().parents[1]
    galaxies, clumps = read_set(a.folder)
    cat = run_detector(a.folder, a.model, a.whole_image)
    provenance = load_detector(a.model)[3]
    model_score = float(provenance["score"])
    if len(cat.failures):
        raise SystemExit(f"{len(cat.failures)} galaxies failed: {cat.failures.to_dict('records')[:3]}")
    g = cat.galaxies.set_index("galaxy")
    windows = {name: tuple(int(r[f"window_{k}"]) for k in ("x0", "y0", "width", "height")) for name, r in g.iterrows()}
    matched = match(detections(cat), clumps)
    cfg = merged_config(a.configfile)
    classical_file = a.classical or results / "eval" / "classical" / "metrics.json"
    classical = json.loads(classical_file.read_text())["threshold"]
    cl = match(classical_detections(galaxies, a.folder, windows, classical, cfg), clumps)
    out = {
        "command": command_line(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
        "data_seeds": run_data_seeds(results, a.configfile),
        "model": {"path": str(a.model), **{k: provenance.get(k) for k in ("backbone", "n_train", "seed", "score",
                                                                          "val_f1", "commit")}},
        "folder": str(a.folder), "galaxies": len(galaxies), "catalogued_clumps": len(clumps),
        "giant_clumps_3pct": int((clumps["flux_fraction_g"] >= GIANT).sum()),
        "window": "whole image" if a.whole_image else "the detector's field (galaxies.csv: petror50_r, jpeg_scale_arcsec)",
        "windows_used": g["field"].value_counts().to_dict(),
        "detector": {"at_model_score": scores(matched, clumps, model_score),
                     "curve": [scores(matched, clumps, t) for t in THRESHOLDS]},
        "classical": {"filter_fwhm": classical["filter_fwhm"], "at_its_score": scores(cl, clumps, classical["score"]),
                      "curve": [scores(cl, clumps, t) for t in THRESHOLDS]},
        "dropped_by_post_processing": {k: int(g[k].sum()) for k in ("n_bulge", "n_outside", "n_merged")},
        "definitions": " ".join(__doc__.split("Scored as", 1)[1].split("Writes", 1)[0].split()),
        "seconds": round(time.time() - t0, 1),
    }
    best = max(out["detector"]["curve"], key=lambda r: r["f1"] or 0)
    out["detector"]["best_f1_on_curve"] = {"score": best["score"], "f1": best["f1"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    gallery(a.gallery, a.folder, galaxies, clumps, matched, windows, model_score)
    m, c = out["detector"]["at_model_score"], out["classical"]["at_its_score"]
    print(f"detector at score {model_score}: purity {m['purity']} (clump class {m['purity_clump']}), "
          f"completeness >= 3 % {m['giant_clumps_found']}/{out['giant_clumps_3pct']}, F1 {m['f1']}; "
          f"classical: purity {c['purity']}, completeness {c['giant_clumps_found']}/{out['giant_clumps_3pct']}, "
          f"F1 {c['f1']}; -> {a.out}, {a.gallery}")


if __name__ == "__main__":
    main()
