"""Figures of the evaluation and of the volunteer consensus (PNG and PDF, written atomically).

Colours follow Okabe & Ito (2008), which stay distinguishable with the common colour-vision
deficiencies; lines also differ in style or marker where colour carries meaning.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from astropy.stats import binom_conf_interval  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from clumpfinder.io import atomic_path  # noqa: E402
from clumpfinder.imaging import read_image  # noqa: E402

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

Run = tuple[str, int, int, dict[str, Any]]  # backbone, n_train, seed, metrics.json


#: the widest figure (inches) that the Snakemake report shows without shrinking its fonts below
#: ~11 px in a 1440 px wide window (the report's image pane is ~1050 px wide)
REPORT_WIDTH = 10.0
DPI = 150


def report_size(width: float, height: float) -> tuple[float, float]:
    """A figure size that fits the report's image pane in a 1440 x 900 window: at most
    REPORT_WIDTH wide, and no taller than the pane once the viewer has scaled it to the pane's
    width (~0.75 of the width for wide figures, ~5.6 in at DPI for narrow ones); the viewer
    centres images vertically, so a taller one loses its top, titles and column headers."""
    width = min(width, REPORT_WIDTH)
    return width, min(height, max(5.6, 0.75 * width))


def save(fig: plt.Figure, png: str | Path, pdf: str | Path, dpi: int = DPI) -> plt.Figure:
    """Write the figure as PNG and PDF (atomically) and release it from pyplot; returns it, so
    that callers (and tests) can still read what was drawn."""
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return fig


def _colours(names: Iterable[str]) -> dict[str, str]:
    return {n: PALETTE[k % len(PALETTE)] for k, n in enumerate(sorted(set(names)))}


#: reference points of summary.csv drawn as horizontal lines: (label, colour, line style)
_REFERENCE_STYLE = {"consensus_ceiling": ("consensus labels (ceiling)", "0.15", (0, (1, 1))),
                    "classical": ("classical finder", "0.45", (0, (5, 2, 1, 2)))}


def plot_completeness_purity(table: pd.DataFrame, png: str | Path, pdf: str | Path,
                             comparison: pd.DataFrame | None = None) -> plt.Figure:
    """Completeness, purity and F1 vs training-set size, a line per backbone through the mean of
    its training seeds, each seed a small point; solid against the consensus labels, dashed
    against the simulated truth where present. Error bars: the interval over training seeds and
    test galaxies of ``comparison`` (comparison.csv) where given, else the mean of the seeds'
    intervals over test galaxies. Reference points (rows with no training-set size: the consensus
    labels against the truth, the classical finder) are horizontal lines in grey, against the
    truth where there is one. With ``comparison``, a fourth panel: each backbone's F1 minus the
    baseline's at every size with its interval; a hollow marker where the difference cannot be
    decided (fewer than MIN_SEEDS seeds: the per-model interval over test galaxies)."""
    refs = [r for r in ("consensus", "truth") if f"{r}_completeness" in table]
    is_ref = table["backbone"].isin(list(_REFERENCE_STYLE))
    points, table = table[is_ref], table[~is_ref].astype({"n_train": int})
    panels = 4 if comparison is not None and (comparison["backbone"] != comparison["baseline"]).any() else 3
    shape = (2, 2) if panels == 4 else (1, 3)
    fig, grid = plt.subplots(*shape, figsize=report_size(10, 7.5 if panels == 4 else 4.6), sharex=True,
                             constrained_layout=True)
    axes = list(np.ravel(grid))
    colours = _colours(table["backbone"])
    sizes = sorted(table["n_train"].unique())
    for ax, measure in zip(axes, ("completeness", "purity", "f1")):
        for backbone, g in table.groupby("backbone", sort=True):
            colour = colours[backbone]
            for ref, style, marker, face in zip(refs, ("-", "--"), ("o", "s"), (None, "none")):
                stats = g.groupby("n_train")[f"{ref}_{measure}"].agg(["mean", "count"])
                n_seeds = int(stats["count"].max())
                label = f"{backbone} vs {ref}" + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else "")
                lo, hi = _cell_interval(g, comparison, backbone, ref, measure)
                yerr = None if lo is None else [(stats["mean"] - lo).clip(lower=0), (hi - stats["mean"]).clip(lower=0)]
                ax.errorbar(stats.index, stats["mean"], yerr=yerr, fmt=style, marker=marker, color=colour,
                            markerfacecolor=face or colour, capsize=3, label=label)
                if n_seeds > 1:  # every seed's value, a little to the side of the mean
                    ax.scatter(g["n_train"] * (1.04 if ref == "consensus" else 0.96), g[f"{ref}_{measure}"], s=9,
                               marker=marker, color=colour, alpha=0.45, linewidths=0.6,
                               facecolors=colour if face is None else "none", zorder=1)
        for _, r in points.iterrows():
            ref = next((x for x in ("truth", "consensus") if pd.notna(r.get(f"{x}_{measure}"))), None)
            if ref is None:
                continue
            label, colour, dash = _REFERENCE_STYLE[r["backbone"]]
            ax.axhline(r[f"{ref}_{measure}"], color=colour, ls=dash, lw=1.4, label=f"{label} vs {ref}")
        score = table["score"]
        threshold = f"score >= {score.iloc[0]:g}" if score.nunique() == 1 else "score: F1-best on val"
        ax.set_ylabel(f"{'F1' if measure == 'f1' else measure} (IoU >= {table['iou'].iloc[0]:g}, {threshold})")
        ax.set_ylim(0, 1)
        ax.set_title("F1" if measure == "f1" else measure.capitalize())
    if panels == 4:
        _plot_differences(axes[3], comparison, colours)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training-set size (images)")
        ax.tick_params(labelleft=True, labelbottom=True)  # every panel carries its own scale
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    return save(fig, png, pdf)


def _cell_interval(g: pd.DataFrame, comparison: pd.DataFrame | None, backbone: str, ref: str,
                   measure: str) -> tuple[pd.Series | None, pd.Series | None]:
    """Per training-set size, the interval of a backbone's measure: comparison.csv's (over seeds
    and galaxies) where given, else the mean of its seeds' intervals over test galaxies."""
    if comparison is not None and len(comparison):
        rows = comparison[(comparison["backbone"] == backbone) & (comparison["reference"] == ref)]
        if len(rows):
            sizes = sorted(g["n_train"].unique())  # aligned with the table's sizes (NaN where comparison lacks one)
            rows = rows.set_index("n_train")
            return rows[f"{measure}_low"].reindex(sizes), rows[f"{measure}_high"].reindex(sizes)
    if f"{ref}_{measure}_low" in g:
        return g.groupby("n_train")[f"{ref}_{measure}_low"].mean(), g.groupby("n_train")[f"{ref}_{measure}_high"].mean()
    return None, None


def _plot_differences(ax: plt.Axes, comparison: pd.DataFrame, colours: dict[str, str]) -> None:
    """Each backbone's F1 minus the baseline's against training-set size, per label set, with its
    interval: over training seeds and test galaxies where it can be decided (filled markers; thick
    bars where it is decided), the per-model one over test galaxies where it cannot (hollow markers,
    dotted bars)."""
    base = comparison["baseline"].iloc[0]
    ax.axhline(0.0, color="0.3", lw=1)
    for (backbone, ref), rows in comparison[comparison["backbone"] != base].groupby(["backbone", "reference"]):
        if ref not in ("consensus", "truth"):
            continue
        rows = rows.sort_values("n_train")
        style, marker, shift = ("-", "o", 1.04) if ref == "consensus" else ("--", "s", 0.96)
        colour = colours.get(backbone, PALETTE[0])
        x = rows["n_train"].to_numpy() * shift
        ax.plot(x, rows["f1_diff"], ls=style, color=colour, label=f"{backbone} − {base} vs {ref}")
        for xi, (_, r) in zip(x, rows.iterrows()):
            open_ = r["f1_verdict"] == "cannot decide"
            lo, hi = (r["f1_diff_galaxy_low"], r["f1_diff_galaxy_high"]) if open_ else (r["f1_diff_low"], r["f1_diff_high"])
            decided = r["f1_verdict"] in ("higher", "lower")
            bars = ax.errorbar([xi], [r["f1_diff"]], yerr=[[max(0.0, r["f1_diff"] - lo)], [max(0.0, hi - r["f1_diff"])]],
                               fmt=marker, color=colour, markerfacecolor="white" if open_ else colour, capsize=3,
                               elinewidth=2.4 if decided else 1.0)
            if open_:
                bars[2][0].set_linestyle(":")
    ax.set_ylabel(f"ΔF1 = backbone − {base}")
    ax.set_title("F1 difference to the baseline (thick: decided; hollow: cannot be decided)")
    ax.legend(fontsize=7, loc="best")


def plot_learning_curves(runs: Sequence[Run], png: str | Path, pdf: str | Path) -> plt.Figure:
    """Validation F1 (the checkpoint choice) against optimiser steps, one panel per training-set
    size, one line per backbone and seed (``runs`` carry train_metrics.json); a star marks the
    kept weights, a cross where training stopped early. Below, the training loss."""
    sizes = sorted({n for _, n, _, _ in runs})
    colours = _colours(b for b, *_ in runs)
    fig, axes = plt.subplots(2, len(sizes), figsize=report_size(3.4 * len(sizes) + 0.6, 5.6), squeeze=False, sharex=True,
                             sharey="row", constrained_layout=True)
    for j, n in enumerate(sizes):
        top, bottom = axes[0, j], axes[1, j]
        for backbone, n_train, seed, m in sorted(runs, key=lambda r: (r[0], r[2])):
            if n_train != n:
                continue
            h = [r for r in m["history"] if r.get("val_f1") is not None]
            first = seed == min(s for b, nn, s, _ in runs if b == backbone and nn == n)
            kw = {"color": colours[backbone], "alpha": 0.9 if first else 0.5, "lw": 1.2}
            if h:
                top.plot([r["step"] for r in h], [r["val_f1"] for r in h], label=backbone if first else None, **kw)
                if m.get("best_step") is not None:
                    top.plot(m["best_step"], m["best_val_f1"], "*", ms=11, color=colours[backbone])
                if m.get("stopped_early"):
                    top.plot(h[-1]["step"], h[-1]["val_f1"], "x", ms=8, color=colours[backbone])
            bottom.plot([r["step"] for r in m["history"]], [r.get("loss") for r in m["history"]], **kw)
        top.set_title(f"n = {n} training images")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
        bottom.set_xlabel("optimiser steps")
    axes[0, 0].set_ylabel("validation F1 (vs consensus)")
    axes[1, 0].set_ylabel("training loss")
    axes[0, 0].set_ylim(0, 1)
    axes[0, -1].legend(fontsize=8, loc="lower right", title="star: kept; x: stopped", title_fontsize=8)
    return save(fig, png, pdf)


def plot_pr_curves(runs: Sequence[Run], iou: float, png: str | Path, pdf: str | Path) -> plt.Figure:
    """Precision (purity) against recall (completeness) as the score threshold falls, one panel
    per training-set size (columns) and label set (rows), one line per backbone and seed; the
    marker is the headline operating point (each model's own threshold)."""
    refs = [r for r in ("consensus", "truth") if any(r in m["references"] for *_, m in runs)]
    sizes = sorted({n for _, n, _, _ in runs})
    colours = _colours(b for b, *_ in runs)
    fig, axes = plt.subplots(len(refs), len(sizes), figsize=report_size(3.3 * len(sizes) + 0.4, 3.0 * len(refs)),
                             squeeze=False, sharex=True, sharey=True, constrained_layout=True)
    key = f"{iou:g}"
    for i, ref in enumerate(refs):
        for j, n in enumerate(sizes):
            ax = axes[i, j]
            for backbone, n_train, seed, m in sorted(runs, key=lambda r: (r[0], r[2])):
                if n_train != n or ref not in m["references"]:
                    continue
                r = m["references"][ref]
                pr = r["pr"][key]
                first = seed == min(s for b, nn, s, _ in runs if b == backbone and nn == n)
                ax.plot(pr["recall"], pr["precision"], color=colours[backbone], lw=1.2, alpha=0.9 if first else 0.5,
                        label=backbone if first else None)
                ax.plot(r["merged"]["completeness"], r["merged"]["purity"], "o", color=colours[backbone], ms=5,
                        mec="black", mew=0.5)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"n = {n}, vs {ref}", fontsize=10)
            if i == len(refs) - 1:
                ax.set_xlabel(f"completeness (recall, IoU >= {iou:g})")
            if j == 0:
                ax.set_ylabel("purity (precision)")
    axes[0, -1].legend(fontsize=8, loc="lower left")
    return save(fig, png, pdf)


def plot_flux_completeness(runs: Sequence[Run], min_flux_fraction: float | None, png: str | Path,
                           pdf: str | Path, level: float = 0.95) -> plt.Figure:
    """Completeness of the simulated clumps against their share of the galaxy's g-band flux (at
    each model's headline threshold), one panel per training-set size, one line per backbone
    (mean over seeds). Error bars: Wilson binomial interval for the clumps of one bin; horizontal
    bars: the bin's range. Clumps fainter than ``min_flux_fraction`` are not counted as missed in
    the headline numbers (dotted line) but are shown here."""
    runs = [r for r in runs if "by_flux" in r[3]["references"].get("truth", {})]
    if not runs:
        raise ValueError("no evaluation has completeness by flux fraction (it needs the simulated truth)")
    sizes = sorted({n for _, n, _, _ in runs})
    colours = _colours(b for b, *_ in runs)
    backbones = sorted(colours)
    fig, axes = plt.subplots(1, len(sizes), figsize=report_size(3.4 * len(sizes) + 0.4, 3.6), squeeze=False, sharey=True,
                             constrained_layout=True)
    markers = "osD^vP*X"
    for j, n in enumerate(sizes):
        ax = axes[0, j]
        for k, backbone in enumerate(backbones):
            sel = [m["references"]["truth"]["by_flux"] for b, nn, _, m in runs if b == backbone and nn == n]
            if not sel:
                continue
            bins = pd.DataFrame(sel[0])[["low", "high", "n"]]
            found = np.mean([[b["found"] for b in s] for s in sel], axis=0)
            ok = bins["n"].to_numpy() > 0
            lo, hi = bins["low"].to_numpy() * 100, bins["high"].to_numpy() * 100
            centre = np.sqrt(np.maximum(lo, 1e-3) * hi)  # geometric centre on the log axis
            frac = np.where(ok, found / np.maximum(bins["n"], 1), np.nan)
            ci = binom_conf_interval(np.round(found[ok]).astype(int), bins["n"].to_numpy()[ok],
                                     confidence_level=level, interval="wilson")
            shift = 1 + 0.04 * (k - (len(backbones) - 1) / 2)  # keep the error bars apart
            yerr = np.clip([frac[ok] - ci[0], ci[1] - frac[ok]], 0, None)  # rounding at 0 and 1
            ax.errorbar(centre[ok] * shift, frac[ok], yerr=yerr,
                        xerr=[centre[ok] - lo[ok], hi[ok] - centre[ok]] if k == 0 else None,
                        fmt="-", marker=markers[k % len(markers)], color=colours[backbone], capsize=2, lw=1.2,
                        elinewidth=0.8, label=backbone + (f" (mean of {len(sel)} seeds)" if len(sel) > 1 else ""))
        if min_flux_fraction:
            ax.axvline(min_flux_fraction * 100, color="0.4", ls=":", lw=1)
        ax.set_xscale("log")
        edges = sorted({e * 100 for b in runs[0][3]["references"]["truth"]["by_flux"] for e in (b["low"], b["high"])
                        if e > 0})
        ax.set_xticks(edges, [f"{e:g}" for e in edges])
        ax.minorticks_off()
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.set_title(f"n = {n}", fontsize=10)
        ax.set_xlabel("clump flux fraction, g band (%; ticks: bin edges)")
        if j == 0:
            ax.set_ylabel("completeness vs truth (clumps)")
    axes[0, -1].legend(fontsize=8, loc="lower right")
    return save(fig, png, pdf)


def pick_gallery(image_ids: Sequence[int], n: int, seed: int) -> list[int]:
    """A seeded random sample of test galaxies (sorted ids): the same galaxies for every model."""
    rng = np.random.default_rng(seed)
    ids = sorted(int(i) for i in image_ids)
    return sorted(int(i) for i in rng.choice(ids, size=min(n, len(ids)), replace=False))


def _boxes(ax: plt.Axes, anns: Iterable[dict[str, Any]], **style: Any) -> int:
    k = 0
    for a in anns:
        x, y, w, h = a["bbox"]
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, **style))
        k += 1
    return k


def _label_spots(box: Sequence[float], size: tuple[float, float], shape: tuple[int, int]) -> list[tuple[float, float]]:
    """Candidate top-left corners (image pixels) for a label of ``size`` (w, h) next to ``box``
    (x, y, w, h): above, below, right, left, kept inside the image of ``shape`` (rows, cols)."""
    x, y, w, h = box
    tw, th = size
    spots = [(x, y - th - 1), (x, y + h + 1), (x + w + 1, y), (x - tw - 1, y)]
    return [(min(max(sx, 0), shape[1] - tw), min(max(sy, 0), shape[0] - th)) for sx, sy in spots]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return max(0.0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0.0, min(ay + ah, by + bh) - max(ay, by))


def place_labels(boxes: Sequence[Sequence[float]], size: tuple[float, float], shape: tuple[int, int],
                 avoid: Sequence[Sequence[float]] = (), most: int = 8) -> list[tuple[float, float] | None]:
    """Top-left corners for one label per box, in order (give the most important first): each at
    the first of above / below / right / left of its box that overlaps no label placed before it
    and no box in ``boxes`` or ``avoid``, else the free-of-labels spot that overlaps boxes least.
    A box whose every spot would cover an earlier label, or beyond the first ``most``, gets None
    (no label): a crowded image keeps readable labels on its best detections."""
    placed: list[tuple[float, float, float, float]] = []
    obstacles = [tuple(b) for b in list(boxes) + list(avoid)]
    out: list[tuple[float, float] | None] = []
    for box in boxes:
        best, cost = None, math.inf
        if len(placed) < most:
            for sx, sy in _label_spots(box, size, shape):
                rect = (sx, sy, size[0], size[1])
                if any(_overlap(rect, q) > 0 for q in placed):
                    continue
                c = sum(_overlap(rect, q) for q in obstacles)
                if c < cost:
                    best, cost = (sx, sy), c
                if c == 0:
                    break
        if best is not None:
            placed.append((best[0], best[1], size[0], size[1]))
        out.append(best)
    return out


def plot_gallery(coco: dict[str, Any], image_dir: str | Path, predictions: dict[str, list[dict[str, Any]]],
                 scores: dict[str, float], image_ids: Sequence[int], png: str | Path, pdf: str | Path,
                 truth: dict[str, Any] | None = None, title: str = "") -> plt.Figure:
    """Each model (rows) on the same test galaxies (columns), a landscape grid that fits the
    report: the consensus boxes (white, dashed), the simulated truth (blue, dotted; faint clumps
    that do not count thinner) and the model's detections above its headline threshold (orange:
    clump, pink: odd clump) with their scores on dark tags placed clear of the boxes and of
    each other (the highest scores first; where no free spot is left, or beyond eight per
    galaxy, a detection has no tag)."""
    images = {im["id"]: im for im in coco["images"]}
    missing = [i for i in image_ids if i not in images]
    if missing:
        raise ValueError(f"gallery images {missing[:5]} are not in the test labels")
    cons = {i: [a for a in coco["annotations"] if a["image_id"] == i] for i in image_ids}
    true = {i: [a for a in truth["annotations"] if a["image_id"] == i] for i in image_ids} if truth else {}
    cat_colour = {1: "#E69F00", 2: "#CC79A7"}
    models = list(predictions)
    label_w, header = 1.5, 1.2  # inches: row labels on the left; title, column headers and legend
    panel = min(1.6, (REPORT_WIDTH - label_w) / max(len(image_ids), 1), (5.6 - header) / max(len(models), 1))
    fig, axes = plt.subplots(len(models), len(image_ids), squeeze=False, constrained_layout=True,
                             figsize=report_size(panel * len(image_ids) + label_w, panel * len(models) + header))
    fontsize = 6.5
    for j, image_id in enumerate(image_ids):
        info = images[image_id]
        rgb = read_image(image_dir, info)
        px_per_pt = rgb.shape[1] / (panel * 72)  # image pixels per typographic point in this panel
        tag = (fontsize * 2.0 * px_per_pt + 2, fontsize * 1.25 * px_per_pt)  # a "0.87" tag, in image pixels
        for i, model in enumerate(models):
            ax = axes[i, j]
            ax.imshow(rgb, origin="upper", interpolation="nearest")
            if true:
                _boxes(ax, [a for a in true[image_id] if not a.get("iscrowd")], ec="#56B4E9", ls=":", lw=1.4)
                _boxes(ax, [a for a in true[image_id] if a.get("iscrowd")], ec="#56B4E9", ls=":", lw=0.6)
            _boxes(ax, cons[image_id], ec="white", ls="--", lw=0.9)
            dets = sorted((d for d in predictions[model] if d["image_id"] == image_id and d["score"] >= scores[model]),
                          key=lambda d: -d["score"])
            for d in dets:
                _boxes(ax, [d], ec=cat_colour.get(d["category_id"], "#F0E442"), lw=1.1)
            spots = place_labels([d["bbox"] for d in dets], tag, rgb.shape[:2],
                                 avoid=[a["bbox"] for a in cons[image_id]])
            for d, spot in zip(dets, spots):
                if spot is None:
                    continue
                sx, sy = spot
                ax.text(sx + tag[0] / 2, sy + tag[1] / 2, f"{d['score']:.2f}", ha="center", va="center",
                        fontsize=fontsize, color=cat_colour.get(d["category_id"], "#F0E442"), zorder=5,
                        bbox={"boxstyle": "square,pad=0.1", "fc": "black", "ec": "none", "alpha": 0.7})
            ax.set_xlim(-0.5, rgb.shape[1] - 0.5)
            ax.set_ylim(rgb.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"galaxy {image_id}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{model}\nscore >= {scores[model]:.2f}", fontsize=8, rotation=0, ha="right",
                              va="center")
    handles = [Line2D([], [], color="white", ls="--", label="volunteer consensus"),
               Line2D([], [], color="#E69F00", label="detected clump (tag: score)"),
               Line2D([], [], color="#CC79A7", label="detected odd clump")]
    if true:
        handles.insert(1, Line2D([], [], color="#56B4E9", ls=":", lw=1.4, label="truth (thin: too faint to count)"))
    leg = fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, facecolor="0.3",
                     labelcolor="white")
    leg.get_frame().set_edgecolor("0.3")
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, png, pdf)


def _logit_bins(lo: float = 1e-4, n: int = 41) -> np.ndarray:
    x = np.linspace(math.log(lo / (1 - lo)), -math.log(lo / (1 - lo)), n)
    return 1 / (1 + np.exp(-x))


def plot_consensus(volunteers: pd.DataFrame, subjects: pd.DataFrame, png: str | Path, pdf: str | Path,
                   true_volunteers: pd.DataFrame | None = None) -> plt.Figure:
    """Diagnostics of the volunteer consensus: the volunteers' SWAP skills (P(yes | clumpy) and
    P(no | not clumpy), for those who saw gold subjects), their EM click skills (probability of
    missing a clump and of a false click), the subjects' SWAP posteriors (gold subjects by
    their known answer), and, when the true skills of simulated volunteers are given, the EM
    miss probability against each volunteer's true miss rate."""
    panels = 3 + (true_volunteers is not None)
    fig, grid = plt.subplots(2, 2, figsize=report_size(10, 7.5), constrained_layout=True)
    axes = grid.ravel()
    if panels == 3:
        axes[3].remove()
    ax = axes[0]
    trained = volunteers[volunteers["swap_n_trained"].fillna(0) > 0]
    bins = np.linspace(0, 1, 21)
    ax.hist(trained["swap_pl"].dropna(), bins=bins, histtype="step", lw=1.5, color=PALETTE[0],
            label="P(yes | has clumps)")
    ax.hist(trained["swap_pd"].dropna(), bins=bins, histtype="step", lw=1.5, ls="--", color=PALETTE[1],
            label="P(no | no clumps)")
    ax.set_xlabel("SWAP volunteer skill")
    ax.set_ylabel(f"volunteers (of {len(trained)} who saw gold)")
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    em = volunteers.dropna(subset=["p_fn", "p_fp"])
    if len(em):
        ax.hist(em["p_fn"], bins=bins, histtype="step", lw=1.5, color=PALETTE[0], label="p(miss a clump)")
        ax.hist(em["p_fp"], bins=bins, histtype="step", lw=1.5, ls="--", color=PALETTE[1], label="p(false click)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_ylabel(f"volunteers (of {len(em)})")
    else:
        ax.text(0.5, 0.5, "no EM skills\n(consensus.method is not em)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("EM volunteer click skill")
    ax = axes[2]
    logit_bins = _logit_bins()
    p = subjects["swap_prob"].clip(logit_bins[0], logit_bins[-1])
    gold = subjects["gold"].fillna(-1).astype(int)
    for value, label, colour, style in ((-1, "not gold", "0.3", "-"), (1, "gold: has clumps", PALETTE[0], "--"),
                                        (0, "gold: no clumps", PALETTE[1], ":")):
        sel = p[gold == value]
        if len(sel):
            ax.hist(sel, bins=logit_bins, histtype="step", lw=1.5, color=colour, ls=style,
                    label=f"{label} ({len(sel)})")
    ax.set_xscale("logit")
    ticks = [1e-4, 1e-2, 0.5, 0.99, 1 - 1e-4]  # the logit axis's own labels run into each other
    ax.set_xticks(ticks, ["$10^{-4}$", "0.01", "0.5", "0.99", "$1-10^{-4}$"])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("SWAP posterior P(has clumps)")
    ax.set_ylabel("subjects")
    ax.legend(fontsize=8, loc="upper center")
    if true_volunteers is not None:
        ax = axes[3]
        tv = true_volunteers.copy()
        tv["user"] = [f"id:{int(u)}" if pd.notna(u) and u != "" else f"name:{n}"
                      for u, n in zip(tv["user_id"], tv["user_name"])]
        both = em.merge(tv[["user", "miss", "kind"]], on="user")
        both = both[both["n_classifications"] >= 5]
        for k, (kind, g) in enumerate(both.groupby("kind")):
            ax.scatter(g["miss"], g["p_fn"], s=8, color=PALETTE[k % len(PALETTE)], marker="os^D"[k % 4],
                       label=f"{kind} ({len(g)})", alpha=0.7)
        rho = spearmanr(both["miss"], both["p_fn"]).statistic if len(both) > 2 else math.nan
        ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls=":")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("true miss rate (simulated volunteer)")
        ax.set_ylabel("EM p(miss a clump)")
        ax.set_title(f"volunteers with >= 5 classifications, Spearman rho = {rho:.2f}", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    return save(fig, png, pdf)


def plot_catalogue(clumps: pd.DataFrame, galaxies: pd.DataFrame, overlays: str | Path, png: str | Path,
                   pdf: str | Path, flags: Sequence[float] = (0.03, 0.08), n_overlays: int = 5, seed: int = 0,
                   validation: dict[str, Any] | None = None) -> plt.Figure:
    """The clump catalogue at a glance: clumps per galaxy, the clump/galaxy flux ratios against the
    3 % / 8 % flags, the detector scores, and overlays of a few galaxies with clumps (seeded choice);
    with a simulated truth, the validation figures in the title."""
    fig = plt.figure(figsize=report_size(10, 6.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    ax = top.subplots(1, 3)
    counts = galaxies["n_clumps"].to_numpy(int) if len(galaxies) else np.zeros(0, int)
    ax[0].hist(counts, bins=np.arange(-0.5, max(counts.max(initial=0), 1) + 1.5), color=PALETTE[0])
    ax[0].set(xlabel="clumps per galaxy", ylabel="galaxies", title=f"{len(galaxies)} galaxies")
    star = clumps[clumps["label"] == "clump"] if len(clumps) else clumps
    ratio = star["flux_ratio"].to_numpy(float) if "flux_ratio" in star else np.zeros(0)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if len(ratio):
        ax[1].hist(ratio, bins=np.logspace(np.log10(max(ratio.min(), 1e-3)), np.log10(max(ratio.max(), 1.0)), 30),
                   color=PALETTE[2])
        ax[1].set_xscale("log")
        for f, style in zip(flags, ("--", "-")):
            ax[1].axvline(f, color="0.2", ls=style, lw=1, label=f"{100 * f:g} %")
        ax[1].legend(frameon=False, fontsize=8)
    else:
        ax[1].text(0.5, 0.5, "no flux ratios\n(images without photometry)", ha="center", va="center",
                   transform=ax[1].transAxes)
    ax[1].set(xlabel="clump / galaxy flux (bluest band)", ylabel="clumps", title=f"{len(star)} clumps")
    for label, colour in (("clump", PALETTE[0]), ("odd_clump", PALETTE[1])):
        s = clumps.loc[clumps["label"] == label, "score"] if len(clumps) else []
        ax[2].hist(s, bins=np.linspace(0, 1, 21), color=colour, alpha=0.7, label=label)
    ax[2].set(xlabel="detector score", ylabel="detections kept", title="scores")
    ax[2].legend(frameon=False, fontsize=8)
    with_clumps = sorted(galaxies.loc[galaxies["n_clumps"] > 0, "galaxy"].astype(str)) if len(galaxies) else []
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(with_clumps, min(n_overlays, len(with_clumps)), replace=False)) if with_clumps else []
    axes = bottom.subplots(1, n_overlays)
    for a in np.atleast_1d(axes):
        a.set_axis_off()
    for a, name in zip(np.atleast_1d(axes), pick):
        path = Path(overlays) / f"{name}.png"
        if path.is_file():
            a.imshow(plt.imread(path))
            a.set_title(name, fontsize=8)
    bottom.suptitle("overlays: yellow > 8 %, cyan > 3 % of the galaxy's flux, white fainter or odd", fontsize=9)
    if validation:
        pos, ph, fl = validation["position"], validation["photometry"], validation["flag"]
        fig.suptitle(
            f"vs the simulated truth: median offset {pos['median_offset_arcsec']:.2f}\u2033; giant clumps (\u2265 8 %) "
            f"median |\u0394{ph['band']}| {ph['median_abs_dmag']:.3f} mag, robust scatter {ph['robust_scatter_mag']:.3f}; "
            f"8 % flag completeness {fl['completeness_flagged']:.2f}, purity {fl['purity_giant']:.2f}",
            fontsize=9) if ph["n"] and pos["n"] else None
    return save(fig, png, pdf)


#: the partnership strategies as the figure and the report name them, in drawing order
STRATEGY_LABELS = {"fixed": "every classification (fixed)", "retirement": "humans, with retirement",
                   "machine": "humans + machine"}


def plot_partnership(curves: pd.DataFrame, summary: dict[str, Any], png: str | Path, pdf: str | Path) -> plt.Figure:
    """Effort curves of the partnership replay: label F1 against the truth (with bootstrap
    intervals) and the share of subjects decided, against the human classifications spent.
    Without a truth (real exports) only the second panel has data."""
    scored = "f1" in curves and curves["f1"].notna().any()
    fig, axes = plt.subplots(1, 2, figsize=report_size(10.0, 4.2), constrained_layout=True)
    total = summary["fixed_human_classifications"]
    styles = {"fixed": ("-", "o"), "retirement": ("--", "s"), "machine": ("-.", "^")}
    for k, (name, label) in enumerate(STRATEGY_LABELS.items()):
        c = curves[curves["strategy"] == name]
        if c.empty:
            continue
        ls, marker = styles[name]
        x = c["human_classifications"] / 1000
        colour = PALETTE[k]
        if scored:
            axes[0].plot(x, c["f1"], ls=ls, marker=marker, ms=3, color=colour, label=label)
            axes[0].fill_between(x, c["f1_low"], c["f1_high"], color=colour, alpha=0.2, lw=0)
        axes[1].plot(x, c["decided_share"], ls=ls, marker=marker, ms=3, color=colour, label=label)
    if scored:
        target = summary.get("target_f1")
        if target is not None:
            axes[0].axhline(target, color="0.4", ls=":", lw=1, label="fixed strategy's final F1")
        for k, name in enumerate(STRATEGY_LABELS):
            share = summary["strategies"].get(name, {}).get("human_share")
            if name != "fixed" and share is not None:
                axes[0].axvline(share * total / 1000, color=PALETTE[k], ls=":", lw=1)
        axes[0].set_ylabel("label F1 against the truth")
        axes[0].set_ylim(0, 1)
        axes[0].legend(loc="lower right", fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "no truth to score labels against\n(real export)", ha="center", va="center",
                     transform=axes[0].transAxes)
    axes[1].set_ylabel("share of subjects decided")
    axes[1].set_ylim(0, 1.02)
    for ax in axes:
        ax.set_xlabel("human classifications spent (thousands)")
        ax.set_xlim(0, total / 1000 * 1.02 if total else 1)
        ax.grid(alpha=0.3)
    return save(fig, png, pdf)
