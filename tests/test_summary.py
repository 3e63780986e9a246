"""The summary table, the backbone comparison (Markdown / HTML) and the headline figure, with one
and with several training seeds."""

from __future__ import annotations

import pandas as pd
import pytest

from clumpfinder.report.figures import plot_completeness_purity
from clumpfinder.report.summary import (compare, comparison_table, findings, size_effect, summary_html,
                                        summary_markdown, summary_row, summary_table)


def _metrics(c: float, p: float, found: int = 10, false: int = 3, n_images: int = 20) -> dict:
    """A metrics.json whose per-image record has ``found`` of the ``n_images`` one-clump images
    right and ``false`` extra false positives."""
    per_image = {"iou": 0.5, "score": 0.5, "image_id": list(range(n_images)),
                 "tp": [int(i < found) for i in range(n_images)], "fp": [int(i < false) for i in range(n_images)],
                 "n_gt": [1] * n_images}
    m = {"AP": 0.3, "AP50": 0.5, "AP75": 0.2, "AR": 0.4,
         "merged": {"completeness": c, "purity": p, "f1": 2 * c * p / (c + p), "tp": 10, "fp": 3, "n_gt": 12},
         "by_class": {"per_class": {"clump": {"completeness": c, "purity": p}}}, "per_image": per_image}
    return {"iou": 0.5, "score": 0.5, "n_images": n_images, "references": {"consensus": m},
            "threshold": {"score": 0.5, "source": "highest F1 on the validation split"}}


TRAIN = {"backbone": {"arch": "resnet18", "init": "scratch"}, "steps": 10, "seconds": 1.0, "img_per_s": 8.0,
         "device": "cpu"}


def test_rows_per_seed_and_plot(tmp_path):
    rows = [summary_row(b, n, _metrics(0.5 + 0.1 * s, 0.7), TRAIN, seed=s)
            for b in ("b", "a") for n in (100, 30) for s in (1, 0)]
    table = summary_table(rows)
    assert len(table) == 8
    assert table[["backbone", "n_train", "seed"]].iloc[:3].values.tolist() == [["a", 30, 0], ["a", 30, 1],
                                                                                ["a", 100, 0]]
    assert table["consensus_completeness"].tolist()[:2] == [0.5, 0.6]
    fig = plot_completeness_purity(table, tmp_path / "f.png", tmp_path / "f.pdf")
    assert (tmp_path / "f.png").stat().st_size > 1000 and (tmp_path / "f.pdf").stat().st_size > 1000
    assert [ax.get_title() for ax in fig.axes] == ["Completeness", "Purity", "F1"]
    completeness = fig.axes[0]
    # one line per backbone: the mean of the two seeds at each size, and a band over their range
    lines = {c.get_label(): c.lines[0] for c in completeness.containers}
    assert sorted(lines) == ["a vs consensus (mean of 2 seeds)", "b vs consensus (mean of 2 seeds)"]
    assert list(lines["a vs consensus (mean of 2 seeds)"].get_xdata()) == [30, 100]
    assert list(lines["a vs consensus (mean of 2 seeds)"].get_ydata()) == pytest.approx([0.55, 0.55])
    # every seed's value as a point beside the mean
    seeds = completeness.collections
    assert len(seeds) == 2 and sorted(len(c.get_offsets()) for c in seeds) == [4, 4]
    single = summary_table(rows[::2])
    assert set(single["seed"]) == {1}
    fig = plot_completeness_purity(single, tmp_path / "g.png", tmp_path / "g.pdf")
    assert sorted(c.get_label() for c in fig.axes[0].containers) == ["a vs consensus", "b vs consensus"]
    assert not fig.axes[0].collections  # one seed: no points beside the line


BOOT = {"n": 200, "seed": 0, "level": 0.95}
SEEDS = (0, 1, 2)  # enough training seeds to decide (metrics.MIN_SEEDS)


def test_comparison_headline_and_documents():
    # three seeds per arm, a little spread within each, a clear gap between the arms
    cells = [("scratch", n, s, _metrics(0.5, 0.7, found=8 + s, false=3)) for n in (30, 100) for s in SEEDS]
    cells += [("galaxy", n, s, _metrics(0.8, 0.8, found=16 + s, false=3)) for n in (30, 100) for s in SEEDS]
    comp = compare(cells, "scratch", BOOT)
    assert set(comp["backbone"]) == {"scratch", "galaxy"} and len(comp) == 4
    row = comp[(comp["n_train"] == 30) & (comp["backbone"] == "galaxy")].iloc[0]
    assert row["completeness"] == pytest.approx((16 / 20 + 17 / 20 + 18 / 20) / 3)
    assert row["completeness_diff"] == pytest.approx(0.4) and row["n_seeds"] == 3 and row["baseline_n_seeds"] == 3
    assert row["completeness_diff_low"] > 0 and row["completeness_verdict"] == "higher"  # every resample favours it
    assert row["purity"] == pytest.approx((16 / 19 + 17 / 20 + 18 / 21) / 3)
    assert row["f1_seed_sd"] > 0 and row["f1_galaxy_low"] <= row["f1"] <= row["f1_galaxy_high"]
    base = comp[(comp["n_train"] == 30) & (comp["backbone"] == "scratch")].iloc[0]
    assert base["f1_diff"] == 0 and base["baseline"] == "scratch" and pd.isna(base["f1_verdict"])
    (first, more, larger) = findings(comp, size_effect(cells, BOOT))
    assert first.startswith("**Which backbone with the fewest training images (n = 30)?** **galaxy** has the highest")
    assert "ΔF1 = galaxy − scratch = +" in first and "(decided)" in first
    md = summary_markdown(comp, 0.5, "threshold text", 0.95, 200)
    assert "## Against the volunteer consensus labels" in md and "| baseline" in md and "**+0.400 [" in md
    assert "hold the scatter of each arm's training seeds and of the test galaxies" in md and "†" not in md
    page = summary_html(comp, 0.5, "threshold text", 0.95, 200)
    assert page.startswith("<!DOCTYPE html>") and "<b>galaxy</b>" in page and "<table" in page
    assert "**" not in page
    with pytest.raises(ValueError, match="baseline 'resnet' is not among the evaluated backbones"):
        compare(cells, "resnet", BOOT)


def test_mixed_seed_counts_say_what_is_decided_and_what_cannot_be(tmp_path):
    cells = [("scratch", n, s, _metrics(0.5, 0.7, found=8 + s, false=3)) for n in (30, 100) for s in SEEDS]
    cells += [("galaxy", n, s, _metrics(0.8, 0.8, found=16 + s, false=3)) for n in (30, 100) for s in SEEDS]
    cells += [("lonely", n, 0, _metrics(0.9, 0.9, found=19, false=0)) for n in (30, 100)]  # one seed
    comp = compare(cells, "scratch", BOOT)
    verdicts = comp.set_index(["n_train", "backbone"]).loc[30, "f1_verdict"]
    assert verdicts["galaxy"] == "higher" and verdicts["lonely"] == "cannot decide"
    first, more, larger = findings(comp, size_effect(cells, BOOT))
    assert "ΔF1 = galaxy − scratch = +" in first and "(decided)" in first
    assert "lonely − scratch" in first and "cannot be decided with fewer than 3 training seeds per arm" in first
    assert "for lonely it cannot be decided (fewer than 3 training seeds per size)" in more
    assert "decided: galaxy is ahead of scratch" in larger and "for lonely it cannot be decided" in larger
    table = summary_table([summary_row(b, n, m, TRAIN, seed=s) for b, n, s, m in cells])
    fig = plot_completeness_purity(table, tmp_path / "f.png", tmp_path / "f.pdf", comparison=comp)
    assert len(fig.axes) == 4
    only_base = plot_completeness_purity(table, tmp_path / "g.png", tmp_path / "g.pdf",
                                         comparison=comp[comp["backbone"] == "scratch"])
    assert len(only_base.axes) == 3  # nothing to compare: no difference panel


def test_one_training_seed_runs_and_says_it_cannot_decide(tmp_path):
    # the same gap with one seed per arm: reported with the per-model interval, never decided
    cells = [("scratch", n, 0, _metrics(0.5, 0.7, found=8, false=3)) for n in (30, 100)]
    cells += [("galaxy", n, 0, _metrics(0.8, 0.8, found=16, false=3)) for n in (30, 100)]
    comp = compare(cells, "scratch", BOOT)
    row = comp[(comp["n_train"] == 30) & (comp["backbone"] == "galaxy")].iloc[0]
    assert row["f1_verdict"] == "cannot decide" and row["f1_diff_galaxy_low"] > 0
    first, more, larger = findings(comp, size_effect(cells, BOOT))
    assert "cannot be decided with fewer than 3 training seeds per arm" in first and "(decided)" not in first
    assert "(per-model interval over test galaxies)" in first
    assert more.startswith("**Does more training data help?** It cannot be decided: fewer than 3 training seeds")
    assert "no difference to the baseline can be decided (fewer than 3 training seeds per arm)" in larger
    md = summary_markdown(comp, 0.5, "threshold text", 0.95, 200)
    shown = comparison_table(comp, "consensus")
    cell = shown[(shown["n train"] == 30) & (shown["backbone"] == "galaxy")]["Δ F1"].iloc[0]
    assert cell.endswith("†") and not cell.startswith("**")
    assert "†: fewer than 3 training seeds per arm, so the difference cannot be decided" in md
    assert "**+0.400" not in md
    table = summary_table([summary_row(b, n, m, TRAIN, seed=s) for b, n, s, m in cells])
    fig = plot_completeness_purity(table, tmp_path / "f.png", tmp_path / "f.pdf", comparison=comp)
    assert fig.axes[3].get_title() == "F1 difference to the baseline (thick: decided; hollow: cannot be decided)"
    hollow = [ln for ln in fig.axes[3].lines if ln.get_marker() == "o"]
    assert hollow and all(ln.get_markerfacecolor() == "white" for ln in hollow)


def _cells_two_label_sets(found: dict, seeds=SEEDS) -> list:
    """(backbone, n_train, seed, metrics) with one per-image record per label set: ``found`` maps
    (backbone, n_train) to (found against the consensus, found against the truth) of 20 clumps;
    every seed alike (no seed spread: the galaxies alone decide)."""
    cells = []
    for (b, n), (f_cons, f_truth) in found.items():
        m = _metrics(0.5, 0.5, found=f_cons, false=2)
        truth = _metrics(0.5, 0.5, found=f_truth, false=2)["references"]["consensus"]
        m["references"] = {"consensus": m["references"]["consensus"], "truth": truth}
        cells += [(b, n, s, m) for s in seeds]
    return cells


def test_findings_keep_the_tables_sign_and_say_what_is_decided():
    # the baseline wins at n = 30 against both label sets: the other backbone's Δ is negative, as
    # in the table (backbone minus baseline), never flipped; only the truth's difference is decided
    cells = _cells_two_label_sets({("scratch", 30): (12, 14), ("galaxy", 30): (11, 6),
                                   ("scratch", 300): (15, 15), ("galaxy", 300): (20, 20)})
    comp = compare(cells, "scratch", BOOT)
    first, more, larger = findings(comp, size_effect(cells, BOOT))
    assert "**scratch** (the baseline) has the highest F1 against the truth" in first
    assert first.index("against the truth") < first.index("against the consensus")  # the truth first
    row = comp[(comp["n_train"] == 30) & (comp["backbone"] == "galaxy") & (comp["reference"] == "truth")].iloc[0]
    table = comparison_table(comp, "truth")
    shown = table[(table["n train"] == 30) & (table["backbone"] == "galaxy")]["Δ F1"].iloc[0].strip("*")
    assert f"ΔF1 = galaxy − scratch = {shown} against the truth (decided)" in first and row["f1_diff"] < 0
    assert "against the consensus (not decided)" in first
    # more data: scratch 14 -> 15 found of 20 is not decided, galaxy 6 -> 20 is
    assert more.startswith("**Does more training data help?** For 1 of 2 backbones: against the truth F1 rises "
                           "decidedly for galaxy")
    effect = size_effect(cells, BOOT)
    g = effect[(effect["backbone"] == "galaxy") & (effect["reference"] == "truth")].iloc[0]
    f1 = lambda found: 2 * found / (found + 2 + 20)  # noqa: E731  (tp / (tp + (fp + fn) / 2))
    assert g["f1_diff"] == pytest.approx(f1(20) - f1(6)) and g["f1_diff_low"] > 0
    assert g["n_from"] == 30 and g["n_to"] == 300 and g["sizes"] == [30, 300]
    # the decided difference at the larger size is said in words, with its sign
    assert larger.startswith("**And with more training images (n = 300)?** At n = 300 **galaxy** has the highest F1")
    assert "decided: galaxy is ahead of scratch against the truth (ΔF1 = +" in larger


def test_findings_when_label_sets_disagree_or_tie_and_the_budget():
    cells = _cells_two_label_sets({("scratch", 30): (12, 10), ("galaxy", 30): (10, 12)})
    comp = compare(cells, "scratch", BOOT)
    first, more = findings(comp, size_effect(cells, BOOT))
    assert "Against the truth **galaxy** has the highest F1" in first
    assert "against the consensus **scratch** (the baseline) has the highest F1" in first
    assert more.endswith("The run has one training-set size, so it cannot say.")
    tie = compare(_cells_two_label_sets({("scratch", 30): (12, 12), ("galaxy", 30): (12, 12)}), "scratch", BOOT)
    assert "no backbone is ahead" in findings(tie)[0]
    rows = [summary_row("scratch", n, _metrics(0.5, 0.5), dict(TRAIN, steps=steps, max_steps=800, batch_size=8,
                                                                 epochs=epochs, best_step=best))
            for n, steps, epochs, best in ((30, 800, 213.3, 600), (300, 500, 13.3, 300))]
    budget = findings(comp, None, summary_table(rows))[-1]
    assert budget == ("**Training budget:** n = 30: 800 steps (213 epochs); n = 300: 500 steps (13.3 epochs), of 8 "
                      "images per step. Each model keeps the weights of its best validation F1 (at step 300–600).")


def test_sweep_runs_pairs_files_with_cells_in_expand_order(tmp_path):
    import json

    from clumpfinder.report.summary import sweep_runs

    files = []
    for k in range(4):
        files.append(str(tmp_path / f"{k}.json"))
        (tmp_path / f"{k}.json").write_text(json.dumps({"k": k}))
    runs = sweep_runs(["a", "b"], [30], [0, 1], files)
    assert [(b, n, s, m["k"]) for b, n, s, m in runs] == [("a", 30, 0, 0), ("a", 30, 1, 1), ("b", 30, 0, 2),
                                                          ("b", 30, 1, 3)]
    with pytest.raises(ValueError, match="3 metrics files for 4"):
        sweep_runs(["a", "b"], [30], [0, 1], files[:3])


def test_sweep_runs_full_is_the_pool_size(tmp_path):
    import json

    from clumpfinder.report.summary import sweep_runs

    files = [str(tmp_path / f"{k}.json") for k in range(2)]
    for f in files:
        open(f, "w").write(json.dumps({}))
    assert [n for _, n, _, _ in sweep_runs(["a"], [30, "full"], [0], files, full=812)] == [30, 812]
    with pytest.raises(ValueError, match="'full' needs the size of the training pool"):
        sweep_runs(["a"], [30, "full"], [0], files)


def _with_truth(m: dict) -> dict:
    m = dict(m)
    ref = dict(m["references"]["consensus"])
    ref["merged"] = dict(ref["merged"], ci={k: {"low": 0.1, "high": 0.9} for k in ("completeness", "purity", "f1")})
    m["references"] = {"consensus": ref, "truth": ref}
    return m


def test_reference_points_rows_and_comparison_with_the_classical_finder(tmp_path):
    from clumpfinder.report.summary import reference_row, versus_references

    cells = [(b, n, 0, _with_truth(_metrics(0.8, 0.8, found=found, false=1))) for b, found in (("a", 18), ("b", 14))
             for n in (30, 100)]
    classical = _with_truth(_metrics(0.5, 0.9, found=10, false=0))
    ceiling = _with_truth(_metrics(0.9, 0.95, found=19, false=0))
    ceiling["references"].pop("consensus")  # the consensus labels are scored against the truth only
    rows = [summary_row(b, n, m, TRAIN, seed=s) for b, n, s, m in cells]
    rows += [reference_row("classical", classical), reference_row("consensus_ceiling", ceiling)]
    table = summary_table(rows)
    assert table["backbone"].tolist()[-2:] == ["consensus_ceiling", "classical"] and table["n_train"].isna().sum() == 2
    assert pd.isna(table.iloc[-2]["consensus_f1"]) and table.iloc[-2]["truth_f1"] == ceiling["references"]["truth"][
        "merged"]["f1"]
    fig = plot_completeness_purity(table, tmp_path / "f.png", tmp_path / "f.pdf")
    assert (tmp_path / "f.png").stat().st_size > 1000
    # the reference points are horizontal grey lines at their F1 against the truth
    f1 = fig.axes[2]
    flat = {ln.get_label(): ln.get_ydata()[0] for ln in f1.lines if len(set(ln.get_ydata())) == 1
            and "vs truth" in ln.get_label() and ln.get_label().split(" vs ")[0] not in ("a", "b")}
    assert len(flat) == 2
    assert sorted(flat.values()) == pytest.approx(sorted([classical["references"]["truth"]["merged"]["f1"],
                                                          ceiling["references"]["truth"]["merged"]["f1"]]))
    with pytest.raises(ValueError, match="unknown reference point"):
        reference_row("oracle", classical)

    refs = versus_references(cells, {"consensus_ceiling": ceiling, "classical": classical}, BOOT)
    points = refs[refs["n_train"].isna()]
    assert sorted(zip(points["reference"], points["arm"])) == [("consensus", "classical"), ("truth", "classical"),
                                                               ("truth", "consensus_ceiling")]
    a = refs[(refs["arm"] == "a") & (refs["n_train"] == 100) & (refs["reference"] == "truth")].iloc[0]
    # 18 of 20 found against the classical finder's 10: +0.4 completeness, every resample agrees; one
    # training seed: the per-model interval only, and no verdict
    assert a["completeness_diff_classical"] == pytest.approx(0.4) and a["completeness_diff_classical_galaxy_low"] > 0
    assert a["f1_diff_classical_verdict"] == "cannot decide" and pd.isna(a["f1_diff_classical_low"])
    md = summary_markdown(compare(cells, "a", BOOT), 0.5, "t", 0.95, 200, references=refs)
    assert "## Beside the detectors: the label ceiling and a classical finder" in md
    assert "consensus labels (the ceiling)" in md and "classical finder" in md
    assert "At n = 100, F1 minus the classical finder's against the truth" in md
    assert "(per-model interval over test galaxies; cannot be decided with fewer than 3 training seeds)" in md
    three = [(b, n, s, m) for b, n, _, m in cells for s in (0, 1, 2)]
    decided = summary_markdown(compare(three, "a", BOOT), 0.5, "t", 0.95, 200,
                               references=versus_references(three, {"classical": classical}, BOOT))
    assert "a +0.256 [+0.028, +0.485] (decided); b +0.133 [" in decided
    page = summary_html(compare(cells, "a", BOOT), 0.5, "t", 0.95, 200, references=refs)
    assert "the label ceiling and a classical finder</h2>" in page


def test_learning_curves_figure(tmp_path):
    from clumpfinder.report.figures import plot_learning_curves

    def train(best, stopped):
        hist = [{"step": s, "loss": 1.0 / s, "val_f1": min(0.8, s / 100)} for s in (10, 20, 30, 40)]
        return {"history": hist, "best_step": best, "best_val_f1": 0.4, "stopped_early": stopped}

    runs = [("a", 30, 0, train(30, True)), ("a", 30, 1, train(40, False)), ("b", 100, 0, train(20, False))]
    fig = plot_learning_curves(runs, tmp_path / "l.png", tmp_path / "l.pdf")
    top = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in top] == ["n = 30 training images", "n = 100 training images"]
    n30 = top[0]
    curves = [ln for ln in n30.lines if ln.get_linestyle() == "-"]
    assert len(curves) == 2 and list(curves[0].get_ydata()) == [0.1, 0.2, 0.3, 0.4]
    markers = [(ln.get_marker(), ln.get_xdata()[0]) for ln in n30.lines if ln.get_linestyle() == "None"]
    assert sorted(markers) == [("*", 30), ("*", 40), ("x", 40)]  # kept weights of both seeds; seed 0 stopped
    assert [t.get_text() for t in fig.axes[len(top) - 1].get_legend().get_texts()] == ["b"]
