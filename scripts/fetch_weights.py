"""Fetch a backbone's hub weights into the library's own cache (torch hub / Hugging Face)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the workflow's own package

from clumpfinder.detection.detector import BackboneSpec, fetch_weights, init_kind  # noqa: E402
from clumpfinder.io import setup_logging, write_json  # noqa: E402

log = setup_logging(snakemake.log[0])
spec = BackboneSpec(**snakemake.params.backbone)
if init_kind(spec.init) not in ("torchvision", "hf_hub"):  # pretrain:clumpy from a hub base
    spec = BackboneSpec(spec.arch, spec.base_init, normalization=spec.normalization)
record = fetch_weights(spec)
log.info("%s: %s (%s bytes)", record["init"], record["path"], record["bytes"])
write_json(record, snakemake.output[0])
