"""Parse the classification export and build consensus boxes."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.consensus import ConsensusSpec, run_consensus  # noqa: E402
from clumpfinder.io import setup_logging, write_csv, write_json  # noqa: E402
from clumpfinder.zooniverse import read_export  # noqa: E402

log = setup_logging(snakemake.log[0])
cfg = snakemake.params.spec
parsed = read_export(snakemake.input.export, task=cfg["task"], workflow_id=cfg["workflow_id"])
boxes, subjects, report = run_consensus(parsed, ConsensusSpec.from_config(cfg))
write_csv(boxes, snakemake.output.boxes)
write_csv(subjects, snakemake.output.subjects)
write_json({"parse": parsed.report, "consensus": report}, snakemake.output.report)
log.info("parse: %s", {k: v for k, v in parsed.report.items() if k != "examples"})
log.info("consensus: %s", report)
