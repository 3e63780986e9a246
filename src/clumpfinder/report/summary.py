"""Summary over the sweep: one table row per (backbone, n_train, seed), and the headline
comparison of every backbone with a baseline at each training-set size (paired bootstrap over
the shared test galaxies), written as a table and as Markdown / HTML with a one-line answer."""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

import pandas as pd

from clumpfinder.io import read_json
from clumpfinder.metrics import paired_bootstrap

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
    """Each reference point's scores and every detector's paired F1 difference to the classical
    finder, per label set and training-set size: one row per (reference, n_train, arm), the
    reference points with n_train None. Differences resample the same test galaxies as the
    detectors' (paired bootstrap); the ceiling gets no difference (it is not a competitor)."""
    by_cell: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for backbone, n_train, _, m in cells:
        by_cell.setdefault((backbone, int(n_train)), []).append(m)
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
            if ref not in runs[0]["references"]:
                continue
            stats = paired_bootstrap({"classical": [classical["per_image"]],
                                      backbone: [r["references"][ref]["per_image"] for r in runs]},
                                     "classical", n=bootstrap["n"], seed=bootstrap["seed"], level=bootstrap["level"])
            row = {"reference": ref, "n_train": n_train, "arm": backbone}
            for k in MEASURES:
                st = stats[backbone][k]
                row.update({k: st["value"], f"{k}_low": st["low"], f"{k}_high": st["high"],
                            f"{k}_diff_classical": st["diff"], f"{k}_diff_classical_low": st["diff_low"],
                            f"{k}_diff_classical_high": st["diff_high"]})
            rows.append(row)
    return pd.DataFrame(rows)




def compare(cells: Iterable[tuple[str, int, int, dict[str, Any]]], baseline: str,
            bootstrap: dict[str, Any]) -> pd.DataFrame:
    """Every backbone against ``baseline`` at each training-set size and label set.

    ``cells``: (backbone, n_train, seed, metrics.json). Seeds are paired by value, so a backbone
    is only compared on the seeds it shares with the baseline. One row per (reference, n_train,
    backbone): mean over seeds of completeness, purity, F1 and AP50, their bootstrap intervals,
    the paired difference to the baseline with its interval, and the seed standard deviation.
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
                seeds = sorted(set(runs) & set(base))
                if not seeds or ref not in runs[seeds[0]]["references"]:
                    continue
                records[b] = [runs[s]["references"][ref]["per_image"] for s in seeds]
                ap50[b] = sum(runs[s]["references"][ref]["AP50"] for s in seeds) / len(seeds)
            stats = paired_bootstrap(records, baseline, n=bootstrap["n"], seed=bootstrap["seed"],
                                     level=bootstrap["level"])
            for b in sorted(stats, key=lambda name: (name != baseline, name)):
                row: dict[str, Any] = {"reference": ref, "n_train": n_train, "backbone": b, "baseline": baseline,
                                       "n_seeds": stats[b]["f1"]["n_seeds"],
                                       "n_test_images": len(records[b][0]["image_id"]), "AP50": ap50[b]}
                for k in MEASURES:
                    for field in ("value", "low", "high", "diff", "diff_low", "diff_high", "seed_sd"):
                        row[f"{k}_{field}" if field != "value" else k] = stats[b][k][field]
                rows.append(row)
    return pd.DataFrame(rows)


def _num(v: float, signed: bool = False) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:+.3f}" if signed else f"{v:.3f}")


def _with_interval(v: float, low: float, high: float, signed: bool = False) -> str:
    return f"{_num(v, signed)} [{_num(low, signed)}, {_num(high, signed)}]"


def _excludes_zero(low: float, high: float) -> bool:
    """Whether the interval excludes zero at the 3 decimals shown (a bound that prints as
    0.000 does not count as excluding it)."""
    return not (math.isnan(low) or math.isnan(high)) and (round(low, 3) > 0 or round(high, 3) < 0)


def headline(comparison: pd.DataFrame, reference: str, level: float, threshold: str) -> str:
    """One sentence: which backbone wins at the smallest training-set size, by how much, with
    what uncertainty (by F1, the measure the headline threshold maximises)."""
    rows = comparison[comparison["reference"] == reference]
    if rows.empty:
        return f"No evaluation against the {reference} labels."
    n_min = int(rows["n_train"].min())
    at = rows[rows["n_train"] == n_min].sort_values("f1", ascending=False)
    win, base_name = at.iloc[0], at.iloc[0]["baseline"]
    n_seeds = int(win["n_seeds"])
    seeds = f"{n_seeds} training seed{'s' if n_seeds > 1 else ''}"
    pct = f"{level * 100:g} %"
    head = (f"With n = {n_min} training images, **{win['backbone']}** has the highest F1 against the {reference} "
            f"labels: {_with_interval(win['f1'], win['f1_low'], win['f1_high'])} "
            f"(completeness {_num(win['completeness'])}, purity {_num(win['purity'])}; {threshold}; "
            f"{pct} bootstrap intervals over {int(win['n_test_images'])} test galaxies, mean of {seeds}).")
    if len(at) == 1:
        return head
    if win["backbone"] == base_name:
        runner = at.iloc[1]
        d, lo, hi = -runner["f1_diff"], -runner["f1_diff_high"], -runner["f1_diff_low"]
        other = runner["backbone"]
    else:
        d, lo, hi, other = win["f1_diff"], win["f1_diff_low"], win["f1_diff_high"], base_name
    verdict = ("the interval excludes zero" if _excludes_zero(lo, hi)
               else "the interval includes zero: not a significant difference")
    tail = f" It beats {other} by ΔF1 = {_with_interval(d, lo, hi, signed=True)} (paired bootstrap; {verdict})."
    if n_seeds > 1 and not math.isnan(win["f1_seed_sd"]):
        tail += f" Across seeds its F1 varies with a standard deviation of {win['f1_seed_sd']:.3f}."
    return head + tail


def comparison_table(comparison: pd.DataFrame, reference: str, bold=lambda s: f"**{s}**") -> pd.DataFrame:
    """The comparison as display strings: value [interval], and the difference to the baseline
    (emphasised with ``bold`` where its interval excludes zero)."""
    rows = []
    for _, r in comparison[comparison["reference"] == reference].iterrows():
        row = {"n train": int(r["n_train"]), "backbone": r["backbone"], "seeds": int(r["n_seeds"])}
        for k, label in (("completeness", "completeness"), ("purity", "purity"), ("f1", "F1")):
            row[label] = _with_interval(r[k], r[f"{k}_low"], r[f"{k}_high"])
        row["AP50"] = _num(r["AP50"])
        for k, label in (("completeness", "Δ completeness"), ("purity", "Δ purity"), ("f1", "Δ F1")):
            if r["backbone"] == r["baseline"]:
                row[label] = "baseline"
            else:
                text = _with_interval(r[f"{k}_diff"], r[f"{k}_diff_low"], r[f"{k}_diff_high"], signed=True)
                row[label] = bold(text) if _excludes_zero(r[f"{k}_diff_low"], r[f"{k}_diff_high"]) else text
        rows.append(row)
    return pd.DataFrame(rows)


def _context(comparison: pd.DataFrame, iou: float, threshold: str, level: float, n_boot: int) -> str:
    base = comparison["baseline"].iloc[0] if len(comparison) else "n/a"
    return (f"Matches at IoU >= {iou:g}; {threshold}; classes merged. Values are means over training seeds with "
            f"{level * 100:g} % percentile intervals from {n_boot} bootstrap resamples of the test galaxies; "
            f"Δ is the paired difference to the baseline **{base}** on the same resamples (bold where its interval "
            f"excludes zero).")


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
                     data: dict[str, Any] | None = None, references: pd.DataFrame | None = None) -> str:
    """results/summary.md: the headline sentence, which data it reports on, and one table per label set."""
    refs = list(dict.fromkeys(comparison["reference"])) if len(comparison) else []
    parts = ["# Clump detection: which backbone, how much data?", ""]
    parts += [f"- {headline(comparison, ref, level, threshold)}" for ref in refs] + [""]
    if data is not None:
        parts += [data_text(data), ""]
    parts += [_context(comparison, iou, threshold, level, n_boot), ""]
    for ref in refs:
        parts += [f"## Against the {ref} labels", "",
                  comparison_table(comparison, ref).to_markdown(index=False), ""]
    ref_parts = _reference_parts(references)
    if ref_parts:
        parts += ["## Beside the detectors: the label ceiling and a classical finder", "", _REFERENCE_INTRO, ""]
        for ref, sentence, table in ref_parts:
            parts += [f"Against the {ref} labels:", "", table.to_markdown(index=False), ""]
            if sentence:
                parts += [sentence, ""]
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
    parts = [f"{r['arm']} {_with_interval(r['f1_diff_classical'], r['f1_diff_classical_low'], r['f1_diff_classical_high'], signed=True)}"
             for _, r in rows[rows["n_train"] == n_max].sort_values("arm").iterrows()]
    return (f"At n = {n_max}, F1 minus the classical finder's against the {reference} labels (paired bootstrap over the "
            f"same test galaxies): " + "; ".join(parts) + ".")


def _reference_parts(refs: pd.DataFrame | None) -> list[tuple[str, str, pd.DataFrame]]:
    """(label set, sentence, table) for each label set the reference points were scored against."""
    if refs is None or refs.empty:
        return []
    return [(ref, versus_classical_text(refs, ref), references_table(refs, ref))
            for ref in dict.fromkeys(refs["reference"])]


_REFERENCE_INTRO = ("The consensus labels of the test galaxies scored against the simulated truth are the ceiling for a "
                    "detector trained on such labels; the classical finder (residual peaks above a significance, "
                    "settings chosen on the validation split) is the baseline a detector has to beat.")


def _md_bold_to_html(text: str) -> str:
    out = html.escape(text).split("**")
    return "".join(f"<b>{s}</b>" if i % 2 else s for i, s in enumerate(out))


def summary_html(comparison: pd.DataFrame, iou: float, threshold: str, level: float, n_boot: int,
                 data: dict[str, Any] | None = None, references: pd.DataFrame | None = None) -> str:
    """The same content as :func:`summary_markdown` as a self-contained HTML page (for the
    Snakemake report, which shows HTML results inline)."""
    refs = list(dict.fromkeys(comparison["reference"])) if len(comparison) else []
    body = ["<h1>Clump detection: which backbone, how much data?</h1>", "<ul>"]
    body += [f"<li>{_md_bold_to_html(headline(comparison, ref, level, threshold))}</li>" for ref in refs]
    body += ["</ul>"]
    if data is not None:
        body += [f"<p>{_md_bold_to_html(data_text(data))}</p>"]
    body += [f"<p>{_md_bold_to_html(_context(comparison, iou, threshold, level, n_boot))}</p>"]
    for ref in refs:
        table = comparison_table(comparison, ref, bold=lambda s: f"<b>{html.escape(s)}</b>")
        body += [f"<h2>Against the {html.escape(ref)} labels</h2>",
                 table.to_html(index=False, escape=False, border=0, classes="summary")]
    ref_parts = _reference_parts(references)
    if ref_parts:
        body += ["<h2>Beside the detectors: the label ceiling and a classical finder</h2>",
                 f"<p>{html.escape(_REFERENCE_INTRO)}</p>"]
        for ref, sentence, table in ref_parts:
            body += [f"<p>Against the {html.escape(ref)} labels:</p>",
                     table.to_html(index=False, border=0, classes="summary")]
            if sentence:
                body += [f"<p>{html.escape(sentence)}</p>"]
    style = ("body{font-family:sans-serif;margin:1em} table.summary{border-collapse:collapse;font-size:0.9em}"
             "table.summary td,table.summary th{padding:0.25em 0.6em;border-bottom:1px solid #ccc;text-align:right}"
             "table.summary td:nth-child(2),table.summary th:nth-child(2){text-align:left}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Clump detection summary</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def threshold_text(metrics: Iterable[dict[str, Any]]) -> str:
    """How the headline score threshold was chosen, for captions and tables."""
    ms = list(metrics)
    if ms and all(m["threshold"]["source"].startswith("configuration") for m in ms):
        return f"detections with score >= {ms[0]['score']:g}"
    return "each model's score threshold is the F1-best on the validation split"
