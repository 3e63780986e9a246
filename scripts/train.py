"""Train one detector (backbone x training-set size)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.detection.detector import BackboneSpec, DetectorSpec  # noqa: E402
from clumpfinder.io import read_json, setup_logging, write_json  # noqa: E402
from clumpfinder.detection.detector import save_model  # noqa: E402
from clumpfinder.detection.train import Selection, TrainSpec, train_detector  # noqa: E402

log = setup_logging(snakemake.log[0])
p = snakemake.params
backbone = BackboneSpec(**p.backbone)
detector = DetectorSpec.from_config(p.detector)
selection = Selection(float(p.selection["iou"]), tuple(float(s) for s in p.selection["scores"]))
# the checkpoint lies outside the declared outputs, so a killed job resumes from it
model, metrics = train_detector(read_json(snakemake.input.labels), snakemake.input.images, backbone, detector,
                                TrainSpec.from_config(p.training), threads=snakemake.threads,
                                checkpoint=p.checkpoint, val=read_json(snakemake.input.val), selection=selection)
metrics["name"] = snakemake.wildcards.backbone
save_model(model, backbone, detector, snakemake.output.model)
write_json(metrics, snakemake.output.metrics)
Path(p.checkpoint).unlink(missing_ok=True)
