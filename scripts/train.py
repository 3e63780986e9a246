"""Train one detector (backbone x training-set size) on the GPUs the job was given (one process
per GPU when it was given several), or on the CPU."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.compute import ComputeSpec, job_devices, job_gpu_count  # noqa: E402
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec  # noqa: E402
from clumpfinder.detection.parallel import train_job  # noqa: E402
from clumpfinder.detection.train import Selection, TrainSpec  # noqa: E402
from clumpfinder.io import read_json, setup_logging  # noqa: E402
from clumpfinder.labels.cache import ImageCache  # noqa: E402

log = setup_logging(snakemake.log[0])
p, inp, out = snakemake.params, snakemake.input, snakemake.output
compute = ComputeSpec.from_config({**snakemake.config["compute"], **p.compute})
with job_devices(job_gpu_count(snakemake.resources), compute, "training") as devices:
    # the checkpoint lies outside the declared outputs, so a killed job resumes from it
    train_job(devices, out.model, out.metrics, log_path=snakemake.log[0],
              extra_metrics={"name": snakemake.wildcards.backbone},
              coco=read_json(inp.labels), images=ImageCache(inp.cache, inp.cache_index),
              val=read_json(inp.val), val_images=ImageCache(inp.val_cache, inp.val_cache_index),
              backbone=BackboneSpec(**p.backbone), detector=DetectorSpec.from_config(p.detector),
              spec=TrainSpec.from_config(p.training), threads=snakemake.threads, checkpoint=p.checkpoint,
              selection=Selection(float(p.selection["iou"]), tuple(float(s) for s in p.selection["scores"])),
              compute=compute)
Path(p.checkpoint).unlink(missing_ok=True)
