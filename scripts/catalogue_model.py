"""The detector the catalogue uses: the configured cell of the sweep, or the one with the highest F1
on the validation split, exported with its preprocessing, score threshold and provenance."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.clumps.field import field_from_config  # noqa: E402
from clumpfinder.clumps.model import best_cell, config_hash, export_detector, git_commit  # noqa: E402
from clumpfinder.io import read_json, setup_logging  # noqa: E402

log = setup_logging(snakemake.log[0])
p = snakemake.params
metrics = {tuple(cell): read_json(path) for cell, path in zip(p.cells, snakemake.input.metrics)}
models = dict(zip(map(tuple, p.cells), snakemake.input.models))
cell = tuple(p.chosen) if p.chosen else best_cell(metrics)
m = metrics[cell]
backbone, n_train, seed = cell
provenance = {
    "backbone": backbone, "n_train": n_train, "seed": int(seed), "score": m["score"],
    "val_f1": round(m["threshold"]["val_at_score"]["f1"], 4),
    "chosen_by": "configuration" if p.chosen else "highest F1 on the validation split",
    "config_hash": config_hash(p.config), "commit": git_commit(Path(snakemake.scriptdir).parent),
}
# the sky the training images show, so that a catalogue of other images can cut the same field
field = field_from_config(p.config, simulated=p.config["data"]["source"] == "simulate")
export_detector(models[cell], snakemake.output[0], {**p.preprocessing, "field": field.to_dict()}, provenance)
log.info("catalogue detector: %s n=%s seed %s (validation F1 %.3f at score %.2f; %s)", backbone, n_train, seed,
         provenance["val_f1"], m["score"], provenance["chosen_by"])
