"""A clump catalogue of the configured galaxies (survey split, FITS folder, downloaded subject list
or PNG/JPEG folder) with the exported detector: FITS + CSV tables, overlays, a small report."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from clumpfinder.clumps.cli import catalogue_files  # noqa: E402
from clumpfinder.clumps.sources import FitsOptions, count_galaxies, open_source, survey  # noqa: E402
from clumpfinder.compute import ComputeSpec, job_devices, job_gpu_count  # noqa: E402
from clumpfinder.io import setup_logging, write_json  # noqa: E402

log = setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
p = snakemake.params
cfg = p.spec
source = cfg["galaxies"]["source"]
inp, out = snakemake.input, snakemake.output


def options(prep):
    return FitsOptions(png=prep["png"], psf_fwhm_arcsec=cfg["psf_fwhm_arcsec"], zeropoint=cfg["zeropoint"])


if source in ("survey", "subjects"):
    manifest = pd.read_csv(inp.manifest)
    if "splits" in inp.keys() and cfg["galaxies"]["split"] != "all":
        splits = pd.read_csv(inp.splits)
        manifest = manifest[manifest["subject_id"].isin(
            splits.loc[splits["split"] == cfg["galaxies"]["split"], "subject_id"])]
    total = len(manifest)

    def galaxies(prep):
        return survey(manifest, options(prep), p.fits_dir)
else:
    kind = "fits" if source == "fits" else "images"
    total = count_galaxies(kind, inp.folder)

    def galaxies(prep):
        return open_source(kind, inp.folder, options(prep))

compute = ComputeSpec.from_config({**snakemake.config["compute"], **p.compute})
with job_devices(job_gpu_count(snakemake.resources), compute, "the catalogue") as devices:
    cat = catalogue_files(galaxies, inp.detector, out.fits, score=cfg["score"], device=devices[0],
                          precision=compute.precision, batch_size=cfg["batch_size"], measure=cfg["measure"],
                          overlays=out.overlays, total=total, progress_bar=False,
                          extra_provenance={"galaxies": p.described})
report = {
    "galaxies": total, "catalogued": len(cat.galaxies), "failed": len(cat.failures),
    "failures_by_reason": cat.failures["reason"].value_counts().sort_index().to_dict(),
    "clumps": len(cat.clumps), "seconds": round(cat.seconds, 2),
    "galaxies_per_minute": round(60 * total / cat.seconds, 1) if cat.seconds else None,
    "source": p.described,
}
for col in ("is_clump_3pct", "is_clump_8pct"):
    if col in cat.clumps:
        report[col] = int(cat.clumps[col].fillna(False).astype(bool).sum())
write_json(report, out.report)
log.info("%s", report)
