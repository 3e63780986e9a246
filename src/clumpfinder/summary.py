"""Summary over the sweep: one table row per (backbone, n_train, seed) and the headline figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from clumpfinder.io import atomic_path  # noqa: E402

# Okabe & Ito (2008) colour-blind-safe palette
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def summary_row(backbone: str, n_train: int, metrics: dict[str, Any], train: dict[str, Any],
                seed: int = 0) -> dict[str, Any]:
    """Flatten one evaluation (and its training record) into a table row."""
    row: dict[str, Any] = {"backbone": backbone, "arch": train["backbone"]["arch"],
                           "init": train["backbone"]["init"], "n_train": n_train, "seed": seed}
    for ref, m in metrics["references"].items():
        for k in ("AP", "AP50", "AP75", "AR"):
            row[f"{ref}_{k}"] = m[k]
        for k in ("completeness", "purity", "f1", "tp", "fp", "n_gt"):
            row[f"{ref}_{k}"] = m["merged"][k]
        for k, ci in m["merged"].get("ci", {}).items():  # bootstrap interval over test galaxies
            row[f"{ref}_{k}_low"], row[f"{ref}_{k}_high"] = ci["low"], ci["high"]
        for cls, c in m["by_class"]["per_class"].items():
            row[f"{ref}_{cls}_completeness"] = c["completeness"]
            row[f"{ref}_{cls}_purity"] = c["purity"]
    row["iou"] = metrics["iou"]
    row["score"] = metrics["score"]
    row["n_test_images"] = metrics["n_images"]
    row["train_steps"] = train["steps"]
    row["train_seconds"] = train["seconds"]
    row["train_img_per_s"] = train["img_per_s"]
    row["device"] = train["device"]
    return row


def summary_table(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows)).sort_values(["backbone", "n_train", "seed"]).reset_index(drop=True)


def plot_completeness_purity(table: pd.DataFrame, png: str | Path, pdf: str | Path) -> None:
    """Completeness and purity vs training-set size, a line per backbone; solid against the
    consensus labels, dashed against the simulated truth where present. With several training
    seeds the line is their mean and a shaded band spans their range. Error bars: the bootstrap
    interval over test galaxies (mean of the seeds' bounds) where the table has one."""
    refs = [r for r in ("consensus", "truth") if f"{r}_completeness" in table]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True, sharey=True, constrained_layout=True)
    for ax, measure in zip(axes, ("completeness", "purity")):
        for k, (backbone, g) in enumerate(table.groupby("backbone", sort=True)):
            for ref, style, marker, face in zip(refs, ("-", "--"), ("o", "s"), (None, "none")):
                colour = PALETTE[k % len(PALETTE)]
                stats = g.groupby("n_train")[f"{ref}_{measure}"].agg(["mean", "min", "max", "count"])
                n_seeds = int(stats["count"].max())
                label = f"{backbone} vs {ref}" + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else "")
                if f"{ref}_{measure}_low" in g:
                    lo = g.groupby("n_train")[f"{ref}_{measure}_low"].mean()
                    hi = g.groupby("n_train")[f"{ref}_{measure}_high"].mean()
                    yerr = [(stats["mean"] - lo).clip(lower=0), (hi - stats["mean"]).clip(lower=0)]
                else:
                    yerr = None
                ax.errorbar(stats.index, stats["mean"], yerr=yerr, fmt=style, marker=marker, color=colour,
                            markerfacecolor=face or colour, capsize=3, label=label)
                if n_seeds > 1:
                    ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.15, lw=0)
        ax.axhline(0.8, color="0.6", lw=0.8, ls=":")
        ax.set_xscale("log")
        sizes = sorted(table["n_train"].unique())
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training-set size (images)")
        score = table["score"]
        threshold = f"score >= {score.iloc[0]:g}" if score.nunique() == 1 else "score: F1-best on val"
        ax.set_ylabel(f"{measure} (IoU >= {table['iou'].iloc[0]:g}, {threshold})")
        ax.set_ylim(0, 1)
        ax.tick_params(labelleft=True)  # both panels carry their own scale
        ax.set_title(measure.capitalize())
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=8, loc="lower right")
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150)
    plt.close(fig)
