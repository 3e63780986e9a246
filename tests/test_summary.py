"""The summary table and the headline figure, with one and with several training seeds."""

from __future__ import annotations


from clumpfinder.summary import plot_completeness_purity, summary_row, summary_table


def _metrics(c: float, p: float) -> dict:
    m = {"AP": 0.3, "AP50": 0.5, "AP75": 0.2, "AR": 0.4,
         "merged": {"completeness": c, "purity": p, "f1": 2 * c * p / (c + p), "tp": 10, "fp": 3, "n_gt": 12},
         "by_class": {"per_class": {"clump": {"completeness": c, "purity": p}}}}
    return {"iou": 0.5, "score": 0.5, "n_images": 20, "references": {"consensus": m}}


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
    plot_completeness_purity(table, tmp_path / "f.png", tmp_path / "f.pdf")
    assert (tmp_path / "f.png").stat().st_size > 1000 and (tmp_path / "f.pdf").stat().st_size > 1000
    single = summary_table(rows[::2])
    assert set(single["seed"]) == {1}
    plot_completeness_purity(single, tmp_path / "g.png", tmp_path / "g.pdf")
