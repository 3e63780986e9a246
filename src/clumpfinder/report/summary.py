"""Summary over the sweep: one table row per (backbone, n_train, seed), and the headline
comparison of every backbone with a baseline at each training-set size, written as a table and as
Markdown / HTML with a one-line answer. Every comparison is of training recipes: its interval
holds the scatter of each arm's training seeds and of the test galaxies the arms share
(:func:`clumpfinder.metrics.recipe_intervals`), and a difference is decided only with
:data:`~clumpfinder.metrics.MIN_SEEDS` training seeds per arm and an interval that excludes zero."""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from clumpfinder.io import read_json
from clumpfinder.metrics import MIN_SEEDS, recipe_intervals

MEASURES = ("completeness", "purity", "f1")


def sweep_runs(backbones: Iterable[str], n_train: Iterable[int | str], seeds: Iterable[int],
               metrics_files: Iterable[str], full: int | None = None) -> list[tuple[str, int, int, dict[str, Any]]]:
    """(backbone, n_train, seed, metrics.json) for the sweep's evaluation files, which the rules
    list in expand()'s order: backbones outermost, seeds innermost. The size 'full' (the whole
    training pool) becomes ``full``, the pool's size."""
    sizes = list(n_train)
    if "full" in sizes and full is None:
        raise ValueError("n_train 'full' needs the size of the training pool")
    sizes = [full if n == "full" else int(n) for n in sizes]
    cells = [(b, n, s) for b in backbones for n in sizes for s in seeds]
    files = list(metrics_files)
    if len(files) != len(cells):
        raise ValueError(f"{len(files)} metrics files for {len(cells)} (backbone, n_train, seed) cells")
    return [(b, n, s, read_json(f)) for (b, n, s), f in zip(cells, files)]


def _metric_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metric columns of one evaluation (a detector's, or a reference point's)."""
    row: dict[str, Any] = {}
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
    return row


def summary_row(backbone: str, n_train: int, metrics: dict[str, Any], train: dict[str, Any],
                seed: int = 0) -> dict[str, Any]:
    """Flatten one evaluation (and its training record) into a table row."""
    row: dict[str, Any] = {"backbone": backbone, "arch": train["backbone"]["arch"],
                           "init": train["backbone"]["init"], "n_train": n_train, "seed": seed}
    row.update(_metric_columns(metrics))
    row["train_steps"] = train["steps"]
    row["train_max_steps"] = train.get("max_steps")
    row["train_batch_size"] = train.get("batch_size")
    row["train_epochs"] = train.get("epochs")
    row["train_best_step"] = train.get("best_step")
    row["train_best_val_f1"] = train.get("best_val_f1")
    row["train_stopped_early"] = train.get("stopped_early")
    row["train_seconds"] = train["seconds"]
    row["train_img_per_s"] = train["img_per_s"]
    row["device"] = train["device"]
    return row


#: the reference points beside the detectors, as summary.csv names them in its backbone column
REFERENCE_NAMES = {"consensus_ceiling": "consensus labels (the ceiling)", "classical": "classical finder"}


def reference_row(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A reference point (``consensus_ceiling`` or ``classical``) as a summary row: the same metric
    columns as the detectors, no training."""
    if name not in REFERENCE_NAMES:
        raise ValueError(f"unknown reference point {name!r}")
    return {"backbone": name, "arch": None, "init": None, "n_train": None, "seed": None, **_metric_columns(metrics)}


def summary_table(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The detectors' rows by backbone, size and seed, then the reference points."""
    table = pd.DataFrame(list(rows))
    is_ref = table["backbone"].isin(list(REFERENCE_NAMES))
    refs = table[is_ref].copy()
    refs["_order"] = refs["backbone"].map(list(REFERENCE_NAMES).index)
    dets = table[~is_ref].sort_values(["backbone", "n_train", "seed"])
    return pd.concat([dets, refs.sort_values("_order").drop(columns="_order")]).reset_index(drop=True)


def versus_references(cells: Iterable[tuple[str, int, int, dict[str, Any]]], references: dict[str, dict[str, Any]],
                      bootstrap: dict[str, Any]) -> pd.DataFrame:
    """Each reference point's scores and every detector's F1 difference to the classical finder,
    per label set and training-set size: one row per (reference, n_train, arm), the reference
    points with n_train None. Differences hold the scatter of the detector's training seeds and of
    the test galaxies both are scored on (the classical finder is not trained: it has no seeds);
    the ceiling gets no difference (it is not a competitor)."""
    by_cell: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for backbone, n_train, seed, m in cells:
        by_cell.setdefault((backbone, int(n_train)), {})[int(seed)] = m
    rows = []
    label_sets = sorted({ref for m in references.values() for ref in m["references"]},
                        key=lambda r: (r != "consensus", r))
    for ref in label_sets:
        for name, m in references.items():
            if ref not in m["references"]:
                continue
            merged = m["references"][ref]["merged"]
            row = {"reference": ref, "n_train": None, "arm": name}
            for k in MEASURES:
                row[k], row[f"{k}_low"], row[f"{k}_high"] = merged[k], merged["ci"][k]["low"], merged["ci"][k]["high"]
            rows.append(row)
        classical = references.get("classical", {}).get("references", {}).get(ref)
        if classical is None:
            continue
        for (backbone, n_train), runs in sorted(by_cell.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            seeds = sorted(runs)
            if ref not in runs[seeds[0]]["references"]:
                continue
            stats = recipe_intervals({"classical": [classical["per_image"]],
                                      backbone: [runs[s]["references"][ref]["per_image"] for s in seeds]},
                                     "classical", n=bootstrap["n"], seed=bootstrap["seed"], level=bootstrap["level"],
                                     fixed=("classical",))
            row = {"reference": ref, "n_train": n_train, "arm": backbone, "n_seeds": len(seeds)}
            for k in MEASURES:
                st = stats[backbone][k]
                row.update({k: st["value"], f"{k}_low": st["low"], f"{k}_high": st["high"],
                            f"{k}_diff_classical": st["diff"], f"{k}_diff_classical_low": st["diff_low"],
                            f"{k}_diff_classical_high": st["diff_high"],
                            f"{k}_diff_classical_galaxy_low": st["diff_galaxy_low"],
                            f"{k}_diff_classical_galaxy_high": st["diff_galaxy_high"],
                            f"{k}_diff_classical_verdict": st["verdict"]})
            rows.append(row)
    return pd.DataFrame(rows)


#: the statistics of each measure in comparison.csv (the measure's own column is the value)
_STATS = ("low", "high", "galaxy_low", "galaxy_high", "diff", "diff_low", "diff_high", "diff_galaxy_low",
          "diff_galaxy_high", "seed_sd", "verdict")


def compare(cells: Iterable[tuple[str, int, int, dict[str, Any]]], baseline: str,
            bootstrap: dict[str, Any]) -> pd.DataFrame:
    """Every backbone against ``baseline`` at each training-set size and label set.

    ``cells``: (backbone, n_train, seed, metrics.json). One row per (reference, n_train, backbone):
    the mean over its training seeds of completeness, purity, F1 and AP50; each measure's
    interval over training seeds and test galaxies (``_low``/``_high``) and over test galaxies
    alone (``_galaxy_low``/``_galaxy_high``: these trained models); the difference to the
    baseline (``_diff``) with the same two intervals, the seed standard deviation and the verdict
    (:func:`clumpfinder.metrics.verdict`: ``cannot decide`` with fewer than MIN_SEEDS seeds in
    either arm). See :func:`clumpfinder.metrics.recipe_intervals`.
    """
    by_cell: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for backbone, n_train, seed, m in cells:
        by_cell.setdefault((backbone, int(n_train)), {})[int(seed)] = m
    if not any(b == baseline for b, _ in by_cell):
        raise ValueError(f"summary baseline {baseline!r} is not among the evaluated backbones "
                         f"{sorted({b for b, _ in by_cell})}")
    rows = []
    for n_train in sorted({n for _, n in by_cell}):
        base = by_cell.get((baseline, n_train), {})
        arms = {b: runs for (b, n), runs in by_cell.items() if n == n_train}
        refs = [r for r in next(iter(base.values()))["references"]] if base else []
        for ref in refs:
            records, ap50 = {}, {}
            for b, runs in arms.items():
                seeds = sorted(runs)
                if ref not in runs[seeds[0]]["references"]:
                    continue
                records[b] = [runs[s]["references"][ref]["per_image"] for s in seeds]
                ap50[b] = sum(runs[s]["references"][ref]["AP50"] for s in seeds) / len(seeds)
            stats = recipe_intervals(records, baseline, n=bootstrap["n"], seed=bootstrap["seed"],
                                     level=bootstrap["level"])
            for b in sorted(stats, key=lambda name: (name != baseline, name)):
                row: dict[str, Any] = {"reference": ref, "n_train": n_train, "backbone": b, "baseline": baseline,
                                       "n_seeds": stats[b]["f1"]["n_seeds"],
                                       "baseline_n_seeds": stats[baseline]["f1"]["n_seeds"],
                                       "n_test_images": len(records[b][0]["image_id"]), "AP50": ap50[b]}
                for k in MEASURES:
                    row[k] = stats[b][k]["value"]
                    for field in _STATS:
                        row[f"{k}_{field}"] = stats[b][k][field]
                rows.append(row)
    return pd.DataFrame(rows)


def _num(v: float, signed: bool = False) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:+.3f}" if signed else f"{v:.3f}")


def _with_interval(v: float, low: float, high: float, signed: bool = False) -> str:
    return f"{_num(v, signed)} [{_num(low, signed)}, {_num(high, signed)}]"


#: how the sentences name each label set
LABEL_SETS = {"truth": "the simulated truth", "consensus": "the volunteer consensus labels"}


def _label_sets(comparison: pd.DataFrame) -> list[str]:
    """The label sets of a comparison, the truth first (where it exists it is what a detector
    should find; the consensus is what it learns from and all that real data have)."""
    refs = list(dict.fromkeys(comparison["reference"])) if len(comparison) else []
    return sorted(refs, key=lambda r: (r != "truth", r != "consensus", r))


def _long(ref: str) -> str:
    return LABEL_SETS.get(ref, f"the {ref} labels")


def _short(ref: str) -> str:
    return {"truth": "the truth", "consensus": "the consensus"}.get(ref, f"the {ref} labels")


def _decided(r: pd.Series, k: str = "f1") -> str:
    """The verdict of a row's difference in words: decided or not, or why it cannot be."""
    v = r[f"{k}_verdict"]
    if v == "cannot decide":
        return f"cannot be decided with fewer than {MIN_SEEDS} training seeds per arm"
    return "decided" if v in ("higher", "lower") else "not decided"


def _diff(r: pd.Series, k: str = "f1") -> str:
    """A difference to the baseline with its interval: over seeds and galaxies where it can be
    decided, else the per-model interval over test galaxies, labelled so."""
    if r[f"{k}_verdict"] == "cannot decide":
        return (_with_interval(r[f"{k}_diff"], r[f"{k}_diff_galaxy_low"], r[f"{k}_diff_galaxy_high"], signed=True)
                + " (per-model interval over test galaxies)")
    return _with_interval(r[f"{k}_diff"], r[f"{k}_diff_low"], r[f"{k}_diff_high"], signed=True)


def _leader(at: pd.DataFrame, refs: list[str]) -> str:
    """Who has the highest F1 in one training-set size's rows, against each label set."""
    base = at["baseline"].iloc[0]
    winners: dict[str, str | None] = {}
    score: dict[str, str] = {}
    for ref in refs:
        rows = at[at["reference"] == ref].sort_values("f1", ascending=False)
        if rows.empty:
            continue
        top = rows.iloc[0]
        tied = len(rows) > 1 and f"{rows.iloc[1]['f1']:.3f}" == f"{top['f1']:.3f}"
        winners[ref] = None if tied else top["backbone"]
        score[ref] = _with_interval(top["f1"], top["f1_low"], top["f1_high"])
    role = lambda b: f"**{b}**" + (" (the baseline)" if b == base else "")  # noqa: E731
    if len(set(winners.values())) == 1 and None not in winners.values():
        return f"{role(next(iter(winners.values())))} has the highest F1 against " + " and ".join(
            f"{_short(r)} ({score[r]})" for r in winners)
    return "; ".join(f"against {_short(r)} " + (f"{role(w)} has the highest F1 ({score[r]})" if w else
                                                 f"no backbone is ahead (highest F1 {score[r]}, shared)")
                     for r, w in winners.items())


def _which_backbone(comparison: pd.DataFrame, refs: list[str]) -> str:
    """The first question: which backbone has the highest F1 at the smallest training-set size,
    and every other backbone's difference to the baseline in the table's sign convention
    (backbone minus baseline), decided or not."""
    n_min = int(comparison["n_train"].min())
    at = comparison[comparison["n_train"] == n_min]
    base = at["baseline"].iloc[0]
    question = f"**Which backbone with the fewest training images (n = {n_min})?** "
    if at["backbone"].nunique() == 1:
        return question + f"Only {base} was trained: F1 " + ", ".join(
            f"{_with_interval(r['f1'], r['f1_low'], r['f1_high'])} against {_short(r['reference'])}"
            for _, r in at.iterrows()) + "."
    lead = _leader(at, refs)
    deltas = []
    for b in [b for b in dict.fromkeys(at["backbone"]) if b != base]:
        per_ref = []
        for ref in refs:
            row = at[(at["reference"] == ref) & (at["backbone"] == b)]
            if len(row):
                r = row.iloc[0]
                per_ref.append(f"{_diff(r)} against {_short(ref)} ({_decided(r)})")
        deltas.append(f"ΔF1 = {b} − {base} = " + " and ".join(per_ref))
    return question + lead[0].upper() + lead[1:] + ". " + "; ".join(deltas) + "."


def size_effect(cells: Iterable[tuple[str, int, int, dict[str, Any]]], bootstrap: dict[str, Any]) -> pd.DataFrame:
    """How much more data helps each backbone: per label set and backbone, completeness, purity
    and F1 at every training-set size (means over seeds) and the difference in F1 between the
    largest and the smallest size, with its interval over the training seeds of each size and the
    test galaxies both are scored on, and its verdict (as :func:`compare`)."""
    by: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for backbone, n_train, seed, m in cells:
        by.setdefault((backbone, int(n_train)), {})[int(seed)] = m
    rows = []
    for backbone in dict.fromkeys(b for b, _ in by):
        sizes = sorted(n for b, n in by if b == backbone)
        if len(sizes) < 2:
            continue
        small, large = by[(backbone, sizes[0])], by[(backbone, sizes[-1])]
        first = small[min(small)]
        for ref in first["references"]:
            if ref not in large[min(large)]["references"]:
                continue
            ends = {str(n): [by[(backbone, n)][s]["references"][ref]["per_image"] for s in sorted(by[(backbone, n)])]
                    for n in (sizes[0], sizes[-1])}
            stats = recipe_intervals(ends, str(sizes[0]), n=bootstrap["n"], seed=bootstrap["seed"],
                                     level=bootstrap["level"])
            st = stats[str(sizes[-1])]["f1"]
            row = {"reference": ref, "backbone": backbone, "n_from": sizes[0], "n_to": sizes[-1],
                   "n_seeds": min(len(small), len(large)), "f1_diff": st["diff"], "f1_diff_low": st["diff_low"],
                   "f1_diff_high": st["diff_high"], "f1_diff_galaxy_low": st["diff_galaxy_low"],
                   "f1_diff_galaxy_high": st["diff_galaxy_high"], "f1_verdict": st["verdict"], "sizes": sizes}
            for k in MEASURES:
                row[k] = [float(np.mean([m["references"][ref]["merged"][k] for m in by[(backbone, n)].values()]))
                          for n in sizes]
            rows.append(row)
    return pd.DataFrame(rows)


def _more_data(effect: pd.DataFrame | None, refs: list[str]) -> str:
    """The second question: how completeness, purity and F1 grow from the smallest to the largest
    training-set size, per backbone, with the F1 difference (larger minus smaller size) and its
    verdict."""
    question = "**Does more training data help?** "
    if effect is None or effect.empty:
        return question + "The run has one training-set size, so it cannot say."
    order = [r for r in refs if r in set(effect["reference"])]
    first = effect.iloc[0]
    n_from, n_to = int(first["n_from"]), int(first["n_to"])
    sizes = ", ".join(str(n) for n in first["sizes"])
    main = effect[effect["reference"] == order[0]]
    verdicts = list(main["f1_verdict"])
    against = _short(order[0])
    rising = [b for b, v in zip(main["backbone"], verdicts) if v == "higher"]
    falling = [b for b, v in zip(main["backbone"], verdicts) if v == "lower"]
    undecidable = [b for b, v in zip(main["backbone"], verdicts) if v == "cannot decide"]
    if len(undecidable) == len(verdicts):
        verdict = (f"It cannot be decided: fewer than {MIN_SEEDS} training seeds per size (the per-model "
                   f"intervals over test galaxies are given)")
    else:
        if len(rising) == len(verdicts):
            verdict = f"Yes: against {against} F1 rises decidedly for every backbone"
        elif rising:
            verdict = (f"For {len(rising)} of {len(verdicts)} backbones: against {against} F1 rises decidedly for "
                       + ", ".join(rising))
        elif falling:
            verdict = f"No: against {against} F1 falls decidedly for " + ", ".join(falling)
        else:
            verdict = f"Not decidedly: against {against} no backbone's F1 changes decidedly"
        if rising and falling:
            verdict += ", and falls decidedly for " + ", ".join(falling)
        if undecidable:
            verdict += (f"; for {', '.join(undecidable)} it cannot be decided (fewer than {MIN_SEEDS} training "
                        "seeds per size)")
    parts = []
    for _, r in main.iterrows():
        per_ref = [f"{_diff(o)} against {_short(o['reference'])} ({_decided(o)})"
                   for ref in order for _, o in effect[(effect["backbone"] == r["backbone"])
                                                       & (effect["reference"] == ref)].iterrows()]
        trend = {k: " → ".join(f"{v:.2f}" for v in r[k]) for k in ("completeness", "purity")}
        parts.append(f"{r['backbone']} ΔF1 = " + " and ".join(per_ref)
                     + f", completeness {trend['completeness']}, purity {trend['purity']}")
    return (question + verdict + f" (ΔF1 = F1 at n = {n_to} minus F1 at n = {n_from}; completeness and purity "
            f"against {against} at n = {sizes}): " + "; ".join(parts) + ".")


def _larger_sizes(comparison: pd.DataFrame, refs: list[str]) -> str:
    """The sizes above the smallest: who has the highest F1 at each, and every decided F1
    difference to the baseline there, in words."""
    n_min = int(comparison["n_train"].min())
    rest = comparison[comparison["n_train"] > n_min]
    if rest.empty or rest["backbone"].nunique() < 2:
        return ""
    base = comparison["baseline"].iloc[0]
    parts = []
    for n, at in rest.groupby("n_train", sort=True):
        found = []
        for b, cell in at[at["backbone"] != base].groupby("backbone", sort=False):
            hits = sorted((r for _, r in cell.iterrows() if r["f1_verdict"] in ("higher", "lower")),
                          key=lambda r: refs.index(r["reference"]) if r["reference"] in refs else len(refs))
            for group, word in (([r for r in hits if r["f1_diff"] > 0], "ahead of"),
                                ([r for r in hits if r["f1_diff"] < 0], "behind")):
                if group:
                    found.append(f"{b} is {word} {base} against "
                                 + " and ".join(f"{_short(r['reference'])} (ΔF1 = {_diff(r)})" for r in group))
        others = at[at["backbone"] != base]
        undecidable = list(dict.fromkeys(others.loc[others["f1_verdict"] == "cannot decide", "backbone"]))
        if others.empty:
            decided = ""
        elif len(undecidable) == others["backbone"].nunique():
            decided = f"; no difference to the baseline can be decided (fewer than {MIN_SEEDS} training seeds per arm)"
        else:
            decided = ("; decided: " + "; ".join(found)) if found else "; no difference to the baseline is decided"
            if undecidable:
                decided += (f"; for {', '.join(undecidable)} it cannot be decided (fewer than {MIN_SEEDS} training "
                            "seeds per arm)")
        parts.append(f"at n = {int(n)} {_leader(at, refs)}{decided}")
    sizes = ", ".join(str(int(n)) for n in sorted(rest["n_train"].unique()))
    text = ". ".join(p_[0].upper() + p_[1:] for p_ in parts)
    return f"**And with more training images (n = {sizes})?** " + text + "."


def _budget(table: pd.DataFrame | None) -> str:
    """The training budget per size: steps, batch, epochs, where the kept weights came from."""
    if table is None or "train_steps" not in table or table["train_steps"].isna().all():
        return ""
    dets = table[table["n_train"].notna() & table["train_steps"].notna()]
    parts = []
    for n, cell in dets.groupby("n_train", sort=True):
        steps = sorted({int(s) for s in cell["train_steps"]})
        epochs = cell["train_epochs"].dropna()
        text = f"n = {int(n)}: {steps[0]}" + (f"–{steps[-1]}" if len(steps) > 1 else "") + " steps"
        if len(epochs):
            lo, hi = epochs.min(), epochs.max()
            text += f" ({lo:.3g} epochs)" if f"{lo:.3g}" == f"{hi:.3g}" else f" ({lo:.3g}–{hi:.3g} epochs)"
        parts.append(text)
    best = dets["train_best_step"].dropna() if "train_best_step" in dets else pd.Series(dtype=float)
    batch = dets["train_batch_size"].dropna() if "train_batch_size" in dets else pd.Series(dtype=float)
    early = int(dets["train_stopped_early"].fillna(False).astype(bool).sum()) if "train_stopped_early" in dets else 0
    out = "**Training budget:** " + "; ".join(parts)
    if batch.nunique() == 1:
        out += f", of {int(batch.iloc[0])} images per step"
    if len(best):
        out += (f". Each model keeps the weights of its best validation F1 (at step "
                f"{int(best.min())}{'' if best.min() == best.max() else f'–{int(best.max())}'})")
    if early:
        out += f"; {early} of {len(dets)} runs stopped early without improvement"
    return out + "."


def findings(comparison: pd.DataFrame, effect: pd.DataFrame | None = None,
             table: pd.DataFrame | None = None) -> list[str]:
    """The answer, one sentence per question (Markdown, bold for emphasis): which backbone wins
    at the smallest size and by how much; whether more data helps; decided differences at the
    other sizes; the training budget per size. Differences are always backbone minus baseline,
    as in the tables; 'decided' means the interval over training seeds and test galaxies excludes
    zero, with at least MIN_SEEDS training seeds per arm."""
    refs = _label_sets(comparison)
    if not refs:
        return ["No evaluation to compare."]
    out = [_which_backbone(comparison, refs), _more_data(effect, refs), _larger_sizes(comparison, refs),
           _budget(table)]
    return [s for s in out if s]


#: marks a difference whose arms have fewer than MIN_SEEDS training seeds: its interval is the
#: per-model one over test galaxies, and it is not decided whatever that interval says
UNDECIDABLE_MARK = "†"


def comparison_table(comparison: pd.DataFrame, reference: str, bold=lambda s: f"**{s}**") -> pd.DataFrame:
    """The comparison as display strings: value [interval], and the difference to the baseline
    (emphasised with ``bold`` where it is decided; marked with UNDECIDABLE_MARK, and given the
    per-model interval over test galaxies, where it cannot be)."""
    rows = []
    for _, r in comparison[comparison["reference"] == reference].iterrows():
        row = {"n train": int(r["n_train"]), "backbone": r["backbone"], "seeds": int(r["n_seeds"])}
        for k, label in (("completeness", "completeness"), ("purity", "purity"), ("f1", "F1")):
            row[label] = _with_interval(r[k], r[f"{k}_low"], r[f"{k}_high"])
        row["AP50"] = _num(r["AP50"])
        for k, label in (("completeness", "Δ completeness"), ("purity", "Δ purity"), ("f1", "Δ F1")):
            if r["backbone"] == r["baseline"]:
                row[label] = "baseline"
            elif r[f"{k}_verdict"] == "cannot decide":
                row[label] = _with_interval(r[f"{k}_diff"], r[f"{k}_diff_galaxy_low"], r[f"{k}_diff_galaxy_high"],
                                            signed=True) + UNDECIDABLE_MARK
            else:
                text = _with_interval(r[f"{k}_diff"], r[f"{k}_diff_low"], r[f"{k}_diff_high"], signed=True)
                row[label] = bold(text) if r[f"{k}_verdict"] in ("higher", "lower") else text
        rows.append(row)
    return pd.DataFrame(rows)


def _context(comparison: pd.DataFrame, iou: float, threshold: str, level: float, n_boot: int) -> str:
    base = comparison["baseline"].iloc[0] if len(comparison) else "n/a"
    seeds = sorted({int(n) for n in comparison["n_seeds"]}) if len(comparison) else [0]
    n_images = int(comparison["n_test_images"].iloc[0]) if len(comparison) else 0
    seed_text = (f"{seeds[0]} training seed{'s' if seeds[0] > 1 else ''} per model" if len(seeds) == 1
                 else f"{seeds[0]}–{seeds[-1]} training seeds per model")
    text = (f"How to read this: matches at IoU >= {iou:g}; {threshold}; classes merged; {n_images} test galaxies; "
            f"{seed_text} (values are seed means). Intervals are {level * 100:g} % intervals that hold the "
            f"scatter of each arm's training seeds and of the test galaxies ({n_boot} bootstrap resamples, the same "
            f"galaxies for every arm; Student's t for the few seeds; docs/report.md), so they speak of the recipes, "
            f"not of single trained models. Δ is always backbone minus the baseline **{base}**; a difference is "
            f"**decided** when each arm has at least {MIN_SEEDS} training seeds and its interval excludes zero "
            f"(bold in the tables), otherwise not decided.")
    if seeds[0] < MIN_SEEDS:
        text += (f" {UNDECIDABLE_MARK}: fewer than {MIN_SEEDS} training seeds per arm, so the difference cannot be "
                 f"decided; its interval is the per-model one, over test galaxies alone, which measures these "
                 f"trained models and not the recipes (set sweep.seeds to {MIN_SEEDS} seeds or more).")
    return text


def data_text(data: dict[str, Any]) -> str:
    """Which data the run reports on, and whether any setting was chosen on them (the protocol of
    docs/protocol.md): ``data`` has ``source`` and, for simulated data, ``seed_role``,
    ``simulate_seed`` and ``volunteers_seed``."""
    if data["source"] != "simulate":
        return (f"Data: real ({data['source']}); settings were chosen on the development simulation and the "
                f"validation galaxies, never on these test galaxies.")
    seeds = f"survey seed {data['simulate_seed']}, volunteers seed {data['volunteers_seed']}"
    if data["seed_role"] == "reporting":
        return (f"Data: the simulated survey's **reporting seeds** ({seeds}): no setting of the workflow was "
                f"chosen on these galaxies or volunteers (choices are made on the development seeds of "
                f"config/development.yaml and on validation galaxies; docs/protocol.md).")
    return (f"Data: the simulated survey's **development seeds** ({seeds}): settings are chosen on this run, so "
            f"its numbers are not a headline; the reporting seeds (config/config.yaml) give the unbiased one "
            f"(docs/protocol.md).")


def summary_markdown(comparison: pd.DataFrame, iou: float, threshold: str, level: float, n_boot: int,
                     data: dict[str, Any] | None = None, references: pd.DataFrame | None = None,
                     effect: pd.DataFrame | None = None, table: pd.DataFrame | None = None,
                     partnership: dict[str, Any] | None = None) -> str:
    """results/summary.md: the answer (one sentence per question), which data it reports on, how
    to read it, and one table per label set; with ``partnership`` (its summary.json) a section on
    the humans + machine replay."""
    parts = ["# Clump detection: which backbone, how much data?", ""]
    parts += [f"- {sentence}" for sentence in findings(comparison, effect, table)] + [""]
    if data is not None:
        parts += [data_text(data), ""]
    parts += [_context(comparison, iou, threshold, level, n_boot), ""]
    for ref in _label_sets(comparison):
        parts += [f"## Against {_long(ref)}", "",
                  comparison_table(comparison, ref).to_markdown(index=False), ""]
    ref_parts = _reference_parts(references)
    if ref_parts:
        parts += ["## Beside the detectors: the label ceiling and a classical finder", "", _REFERENCE_INTRO, ""]
        for ref, sentence, table_ in ref_parts:
            parts += [f"Against {_long(ref)}:", "", table_.to_markdown(index=False), ""]
            if sentence:
                parts += [sentence, ""]
    if partnership is not None:
        text, strategies, skills = partnership_parts(partnership)
        parts += ["## Humans and machine: the export replayed in time order", "", text, "",
                  strategies.to_markdown(index=False), "", "Learned skills of the machine agent and of the volunteers "
                  "(the final humans + machine consensus):", "", skills.to_markdown(index=False), ""]
    return "\n".join(parts)


def references_table(refs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The reference points against one label set as display strings."""
    rows = []
    for _, r in refs[(refs["reference"] == reference) & refs["n_train"].isna()].iterrows():
        row = {"": REFERENCE_NAMES.get(r["arm"], r["arm"])}
        for k, label in (("completeness", "completeness"), ("purity", "purity"), ("f1", "F1")):
            row[label] = _with_interval(r[k], r[f"{k}_low"], r[f"{k}_high"])
        rows.append(row)
    return pd.DataFrame(rows)


def versus_classical_text(refs: pd.DataFrame, reference: str) -> str:
    """One sentence: every detector's F1 minus the classical finder's at the largest size."""
    rows = refs[(refs["reference"] == reference) & refs["n_train"].notna()]
    if rows.empty or "f1_diff_classical" not in rows:
        return ""
    n_max = int(rows["n_train"].max())
    parts = []
    for _, r in rows[rows["n_train"] == n_max].sort_values("arm").iterrows():
        if r["f1_diff_classical_verdict"] == "cannot decide":
            parts.append(f"{r['arm']} " + _with_interval(r["f1_diff_classical"], r["f1_diff_classical_galaxy_low"],
                                                         r["f1_diff_classical_galaxy_high"], signed=True)
                         + f" (per-model interval over test galaxies; cannot be decided with fewer than {MIN_SEEDS} "
                           "training seeds)")
        else:
            parts.append(f"{r['arm']} " + _with_interval(r["f1_diff_classical"], r["f1_diff_classical_low"],
                                                         r["f1_diff_classical_high"], signed=True)
                         + (" (decided)" if r["f1_diff_classical_verdict"] in ("higher", "lower") else " (not decided)"))
    return (f"At n = {n_max}, F1 minus the classical finder's against {_short(reference)} (over the detector's "
            f"training seeds and the test galaxies both are scored on): " + "; ".join(parts) + ".")


def _reference_parts(refs: pd.DataFrame | None) -> list[tuple[str, str, pd.DataFrame]]:
    """(label set, sentence, table) for each label set the reference points were scored against."""
    if refs is None or refs.empty:
        return []
    return [(ref, versus_classical_text(refs, ref), references_table(refs, ref))
            for ref in dict.fromkeys(refs["reference"])]


_REFERENCE_INTRO = ("The consensus labels of the test galaxies scored against the simulated truth are the ceiling for a "
                    "detector trained on such labels; the classical finder (residual peaks above a significance, "
                    "settings chosen on the validation split) is the baseline a detector has to beat.")


PARTNERSHIP_STRATEGIES = {"fixed": "every classification (fixed)", "retirement": "humans, with retirement",
                          "machine": "humans + machine"}
_SKILL_NAMES = {"swap_pl": "SWAP PL", "swap_pd": "SWAP PD", "p_fp": "EM p_fp", "p_fn": "EM p_fn",
                "variance": "EM variance"}


def _share(v: float | None) -> str:
    return "never" if v is None else f"{100 * v:.0f} %"


def partnership_parts(summary: dict[str, Any]) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """The partnership replay for the report: a paragraph, the strategies' table and the machine's
    learned skills beside the volunteers' (results/partnership/summary.json)."""
    total = summary["fixed_human_classifications"]
    rows = []
    for name, label in PARTNERSHIP_STRATEGIES.items():
        e = summary["strategies"].get(name)
        if e is None:
            continue
        row = {"strategy": label,
               "human classifications": f"{e['human_classifications']:,} ({_share(e['share_of_fixed'])})",
               "subjects decided": f"{e['subjects_decided']:,} of {summary['subjects']:,}"}
        if summary.get("scored"):
            low, high = e["f1_interval"]
            row["label F1"] = _with_interval(e["f1"], low, high)
            d_low, d_high = e["f1_minus_fixed_interval"]
            row["minus the fixed F1 (paired)"] = ("" if name == "fixed" else
                                                  _with_interval(e["f1_minus_fixed"], d_low, d_high, signed=True))
            row["completeness"] = _num(e["completeness"])
            row["purity"] = _num(e["purity"])
            interval = e.get("human_share_interval")
            row["share to reach the fixed F1"] = _share(e.get("human_share")) + (
                f" [{_share(interval[0])}, {_share(interval[1])}]; reached in {100 * e['reached_in_resamples']:.0f} % "
                "of resamples" if interval and name != "fixed" else "")
        rows.append(row)
    sk = summary["skills"]
    skill_rows = []
    if sk["machine"] is not None:
        skill_rows.append({"agent": f"machine ({sk['machine']['n_classifications']:,} classifications)",
                           **{_SKILL_NAMES[k]: _num(sk["machine"][k]) for k in _SKILL_NAMES}})
    quart = sk["volunteer_quartiles"]
    skill_rows.append({"agent": f"volunteers, median [quartiles] ({sk['volunteers']} with >= {sk['min_classifications']})",
                       **{_SKILL_NAMES[k]: (f"{_num(quart[k][1])} [{_num(quart[k][0])}, {_num(quart[k][2])}]"
                                            if quart.get(k) else "") for k in _SKILL_NAMES}})
    times = summary["times"]
    text = (f"The classification export replayed in time order ({times['first']} to {times['last']}; "
            f"{times['unparseable_time']} rows without a readable time left out, {times['out_of_order']} out of order) "
            f"under three strategies (docs/partnership.md). The fixed strategy used {total:,} human classifications. ")
    if summary.get("scored"):
        tolerance = summary["f1_tolerance"]
        text += (f"Label F1 is the final consensus of each strategy against the simulated truth on the "
                 f"{summary['subjects'] - summary['gold_subjects']:,} subjects that are not gold; a strategy reaches "
                 f"the fixed strategy's F1 ({_num(summary['target_f1'] + tolerance)}"
                 f"{f', less {tolerance:g}' if tolerance else ''}) "
                 f"with the share of its human classifications given in the last column ("
                 f"{100 * summary['bootstrap']['level']:.0f} % bootstrap intervals over subjects, "
                 f"{summary['bootstrap']['n']} resamples). Human share with the machine: "
                 f"**{_share(summary.get('human_share_machine'))}**; with retirement alone: "
                 f"**{_share(summary.get('human_share_retirement'))}**.")
    else:
        text += "These data have no truth: the label F1 columns and the human shares are left out."
    return text, pd.DataFrame(rows), pd.DataFrame(skill_rows)


def _md_bold_to_html(text: str) -> str:
    out = html.escape(text).split("**")
    return "".join(f"<b>{s}</b>" if i % 2 else s for i, s in enumerate(out))


def summary_html(comparison: pd.DataFrame, iou: float, threshold: str, level: float, n_boot: int,
                 data: dict[str, Any] | None = None, references: pd.DataFrame | None = None,
                 effect: pd.DataFrame | None = None, table: pd.DataFrame | None = None,
                 partnership: dict[str, Any] | None = None) -> str:
    """The same content as :func:`summary_markdown` as a self-contained HTML page (for the
    Snakemake report, which shows HTML results inline)."""
    body = ["<h1>Clump detection: which backbone, how much data?</h1>", "<ul class=\"answer\">"]
    body += [f"<li>{_md_bold_to_html(sentence)}</li>" for sentence in findings(comparison, effect, table)]
    body += ["</ul>"]
    if data is not None:
        body += [f"<p>{_md_bold_to_html(data_text(data))}</p>"]
    body += [f"<p>{_md_bold_to_html(_context(comparison, iou, threshold, level, n_boot))}</p>"]
    for ref in _label_sets(comparison):
        shown = comparison_table(comparison, ref, bold=lambda s: f"<b>{html.escape(s)}</b>")
        body += [f"<h2>Against {html.escape(_long(ref))}</h2>",
                 shown.to_html(index=False, escape=False, border=0, classes="summary")]
    ref_parts = _reference_parts(references)
    if ref_parts:
        body += ["<h2>Beside the detectors: the label ceiling and a classical finder</h2>",
                 f"<p>{html.escape(_REFERENCE_INTRO)}</p>"]
        for ref, sentence, table_ in ref_parts:
            body += [f"<p>Against {html.escape(_long(ref))}:</p>",
                     table_.to_html(index=False, border=0, classes="summary")]
            if sentence:
                body += [f"<p>{html.escape(sentence)}</p>"]
    if partnership is not None:
        text, strategies, skills = partnership_parts(partnership)
        body += ["<h2>Humans and machine: the export replayed in time order</h2>", f"<p>{_md_bold_to_html(text)}</p>",
                 strategies.to_html(index=False, border=0, classes="summary"),
                 "<p>Learned skills of the machine agent and of the volunteers (the final humans + machine "
                 "consensus):</p>", skills.to_html(index=False, border=0, classes="summary")]
    return html_page("Clump detection summary", "\n".join(body))


#: the style of the HTML pages the report shows inline: tables that keep an interval on one line
#: and scroll sideways in a narrow frame
_STYLE = ("body{font-family:sans-serif;margin:1em;line-height:1.4} ul.answer li{margin-bottom:0.5em}"
          ".scroll{overflow-x:auto} table.summary{border-collapse:collapse;font-size:0.85em}"
          "table.summary td,table.summary th{padding:0.25em 0.6em;border-bottom:1px solid #ccc;text-align:right;"
          "white-space:nowrap} table.summary td:nth-child(2),table.summary th:nth-child(2){text-align:left}")


def html_page(title: str, body: str) -> str:
    """A self-contained HTML page with the summary's style; tables scroll sideways in their box."""
    body = body.replace("<table", "<div class=\"scroll\"><table").replace("</table>", "</table></div>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def table_html(table: pd.DataFrame, title: str, intro: str) -> str:
    """A CSV table as an HTML page for the report (which shows HTML inline but not CSV): a title,
    one sentence on what the rows are, and the table with numbers to 3 decimals."""
    shown = table.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    body = (f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"
            + shown.to_html(index=False, border=0, classes="summary", na_rep=""))
    return html_page(title, body)


def threshold_text(metrics: Iterable[dict[str, Any]]) -> str:
    """How the headline score threshold was chosen, for captions and tables."""
    ms = list(metrics)
    if ms and all(m["threshold"]["source"].startswith("configuration") for m in ms):
        return f"detections with score >= {ms[0]['score']:g}"
    return "each model's score threshold is the F1-best on the validation split"
