"""Replay the classification export in time order: a fixed 20 per subject, humans with retirement, and
humans with the detector as one more volunteer; effort curves, the human shares and the final labels."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.compute import ComputeSpec, job_devices, job_gpu_count  # noqa: E402
from clumpfinder.io import setup_logging, write_csv, write_json  # noqa: E402
from clumpfinder.partnership.run import final_labels, replay_files  # noqa: E402

log = setup_logging(snakemake.log[0])
p, inp, out = snakemake.params, snakemake.input, snakemake.output
config = {**snakemake.config, **{k: p[k] for k in ("partnership", "consensus", "evaluation", "detector")},
          "labels": {"crop": p.crop}}
compute = ComputeSpec.from_config({**snakemake.config["compute"], **p.compute})
optional = {k: inp[k] for k in ("gold", "subject_list", "truth") if k in inp.keys()}
with job_devices(job_gpu_count(snakemake.resources), compute, "the partnership's machine") as devices:
    results, curves, summary = replay_files(inp.export, inp.manifest, inp.images, config, p.backbone, p.training,
                                            compute, devices[0], snakemake.threads, **optional)
boxes, subjects, volunteers = final_labels(results)
write_csv(boxes, out.boxes)
write_csv(subjects, out.subjects)
write_csv(volunteers, out.volunteers)
write_csv(curves, out.curves)
write_json(summary, out.summary)
log.info("human share to reach the fixed strategy's label F1: retirement %s, humans + machine %s",
         summary.get("human_share_retirement"), summary.get("human_share_machine"))
