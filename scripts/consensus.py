"""Parse the classification export, run SWAP and build consensus boxes."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import numba  # noqa: E402

from clumpfinder.crowd.consensus import (ConsensusSpec, gold_with_injected, read_consensus_export,  # noqa: E402
                                         run_consensus)
from clumpfinder.io import setup_logging, write_csv, write_json  # noqa: E402
from clumpfinder.tables import read_gold, read_table  # noqa: E402

log = setup_logging(snakemake.log[0])
cfg = snakemake.params.spec
spec = ConsensusSpec.from_config(cfg)
parsed = read_consensus_export(snakemake.input.export, cfg, spec, workers=snakemake.threads)
numba.set_num_threads(min(snakemake.threads, numba.config.NUMBA_NUM_THREADS))  # after the forked parse
gold = read_gold(snakemake.input.gold) if "gold" in snakemake.input.keys() else None
# real exports: injected-clump subjects (origin 'sim' in the subject list) are gold "has clumps" too
subject_list = (read_table(snakemake.input.subject_list, "subject list", ["subject_id"])
                if "subject_list" in snakemake.input.keys() else None)
gold, gold_counts = gold_with_injected(gold, subject_list)
result = run_consensus(parsed, spec, gold)
result.report["swap"]["gold_sources"] = gold_counts
write_csv(result.boxes, snakemake.output.boxes)
write_csv(result.subjects, snakemake.output.subjects)
write_csv(result.volunteers, snakemake.output.volunteers)
write_json({"parse": parsed.report, "consensus": result.report}, snakemake.output.report)
log.info("parse: %s", {k: v for k, v in parsed.report.items() if k != "examples"})
log.info("consensus: %s", result.report)
