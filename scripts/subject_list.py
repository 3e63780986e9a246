"""The subject list of a real-data run (and the catalogued clumps of the catalogue route)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402

from clumpfinder.data.catalogue import CLUMP_COLUMNS, read_clump_catalogue  # noqa: E402
from clumpfinder.io import setup_logging, write_csv, write_json  # noqa: E402
from clumpfinder.data.subjects import from_catalogue, read_subject_list  # noqa: E402

log = setup_logging(snakemake.log[0])
out = snakemake.output
if snakemake.params.source == "catalogue":
    cat = read_clump_catalogue(snakemake.input[0], labels=snakemake.params.labels or None)
    subjects = from_catalogue(cat.galaxies)
    ids = dict(zip(cat.galaxies["galaxy_id"], subjects["subject_id"]))
    clumps = cat.clumps.assign(subject_id=cat.clumps["galaxy_id"].map(ids))
    report = cat.report
else:
    subjects, report = read_subject_list(snakemake.input[0])
    clumps = pd.DataFrame(columns=["subject_id", *CLUMP_COLUMNS])
write_csv(clumps, out.clumps)
write_csv(subjects, out.subjects)
write_json(report, out.report)
log.info("%d subjects from %s; %s", len(subjects), snakemake.input[0],
         {k: v for k, v in report.items() if k not in ("examples", "columns")})
