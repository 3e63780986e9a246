"""Collect every evaluation into results/summary.csv, compare the backbones with the baseline
(comparison.csv, summary.md, summary.html) and plot completeness/purity vs training-set size."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.report.figures import plot_completeness_purity  # noqa: E402
from clumpfinder.labels.coco import pool_size  # noqa: E402
from clumpfinder.io import read_json, setup_logging, write_csv, write_text  # noqa: E402
from clumpfinder.report.summary import (compare, reference_row, size_effect, summary_html,  # noqa: E402
                                        summary_markdown, summary_row, summary_table, sweep_runs, table_html,
                                        threshold_text, versus_references)

log = setup_logging(snakemake.log[0])
p = snakemake.params
runs = sweep_runs(p.backbones, p.n_train, p.seeds, snakemake.input.metrics,
                  full=pool_size(pd.read_csv(snakemake.input.splits)))
rows = [summary_row(b, n, m, read_json(t), seed=s) for (b, n, s, m), t in zip(runs, snakemake.input.train)]
references = {name: read_json(snakemake.input[key]) for name, key in (("consensus_ceiling", "ceiling"),
                                                                      ("classical", "classical"))
              if key in snakemake.input.keys()}
rows += [reference_row(name, m) for name, m in references.items()]
table = summary_table(rows)
write_csv(table, snakemake.output.table)
boot = p.evaluation["bootstrap"]
comparison = compare(runs, p.baseline, boot)
write_csv(comparison, snakemake.output.comparison)
text = dict(iou=p.evaluation["iou"], threshold=threshold_text(m for *_, m in runs), level=boot["level"],
            n_boot=boot["n"], data=p.data, references=versus_references(runs, references, boot),
            effect=size_effect(runs, boot), table=table,
            partnership=read_json(snakemake.input.partnership) if "partnership" in snakemake.input.keys() else None)
markdown = summary_markdown(comparison, **text)
write_text(markdown, snakemake.output.markdown)
write_text(summary_html(comparison, **text), snakemake.output.html)
write_text(table_html(table, "Every run (summary.csv)", "One row per (backbone, training-set size, training seed), "
                      "then the reference points: every metric against each label set, the score threshold, "
                      "and the training record."), snakemake.output.table_html)
write_text(table_html(comparison, "The backbone comparison (comparison.csv)",
                      f"Per label set, training-set size and backbone: seed means with intervals over training seeds and test galaxies, and "
                      f"the difference to the baseline {p.baseline} with its verdict, unrounded in the CSV."),
           snakemake.output.comparison_html)
plot_completeness_purity(table, snakemake.output.png, snakemake.output.pdf, comparison=comparison)
log.info("\n%s", markdown)
