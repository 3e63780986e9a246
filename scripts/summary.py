"""Collect every evaluation into results/summary.csv and plot completeness/purity vs size."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.io import read_json, setup_logging, write_csv  # noqa: E402
from clumpfinder.summary import plot_completeness_purity, summary_row, summary_table  # noqa: E402

log = setup_logging(snakemake.log[0])
p = snakemake.params
cells = [(b, n, s) for b in p.backbones for n in p.n_train for s in p.seeds]  # expand()'s order
rows = [summary_row(b, n, read_json(m), read_json(t), seed=s)
        for (b, n, s), m, t in zip(cells, snakemake.input.metrics, snakemake.input.train)]
table = summary_table(rows)
write_csv(table, snakemake.output.table)
plot_completeness_purity(table, snakemake.output.png, snakemake.output.pdf)
log.info("\n%s", table[["backbone", "n_train", "seed", "consensus_completeness", "consensus_purity"]].to_string())
