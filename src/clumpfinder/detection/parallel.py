"""One training job on the devices it was given: in this process on one device, or as one
data-parallel process per GPU (``torch.distributed`` through torchrun; gloo on CPUs, which is how
the tests run it).

``python -m clumpfinder.detection.parallel JOB`` is the worker that torchrun starts k times: it
joins the process group, trains its share of every batch (:func:`clumpfinder.detection.train.train_detector`)
and, in process 0, writes the model and its metrics.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from clumpfinder.compute import PROCESS_GROUP_TIMEOUT
from clumpfinder.detection.detector import save_model
from clumpfinder.detection.train import check_processes, train_detector
from clumpfinder.io import setup_logging, write_json

log = logging.getLogger(__name__)


def train_files(model_path: str | Path, metrics_path: str | Path, device: torch.device,
                extra_metrics: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any] | None:
    """Train (``kwargs``: :func:`train_detector`'s arguments) and write the model and metrics;
    in a data-parallel group only process 0 writes them (and returns the metrics)."""
    model, metrics = train_detector(device=device, **kwargs)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    metrics.update(extra_metrics or {})
    save_model(model, kwargs["backbone"], kwargs["detector"], model_path)
    write_json(metrics, metrics_path)
    return metrics


def train_job(devices: list[torch.device], model_path: str | Path, metrics_path: str | Path,
              log_path: str | Path | None = None, **kwargs: Any) -> dict[str, Any] | None:
    """Train on ``devices`` (one: in this process; k: k processes, one per device, through
    torchrun) and write the model and metrics. Every device must be of one type; k CPU
    "devices" run k gloo processes (what the tests check on machines without GPUs)."""
    if len(devices) == 1:
        return train_files(model_path, metrics_path, devices[0], **kwargs)
    kinds = {d.type for d in devices}
    if len(kinds) != 1 or kinds - {"cpu", "cuda"}:
        raise ValueError(f"data-parallel training needs devices of one kind, cpu or cuda; got {devices}")
    check_processes(kwargs["spec"].micro_batches, len(devices))  # before any process starts
    with tempfile.TemporaryDirectory(prefix="clumpfinder-ddp-") as tmp:
        job = Path(tmp) / "job.pkl"
        with open(job, "wb") as f:
            pickle.dump({"device_type": kinds.pop(), "log_path": log_path, "model_path": str(model_path),
                         "metrics_path": str(metrics_path), "kwargs": kwargs}, f)
        src = str(Path(__file__).resolve().parents[2])  # the package's folder, importable by the workers
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={len(devices)}",
               "-m", "clumpfinder.detection.parallel", str(job)]
        log.info("starting %d training processes: %s", len(devices), " ".join(cmd))
        done = subprocess.run(cmd, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"data-parallel training failed (exit {done.returncode}); the workers' errors are above"
                               + (f" and in {log_path}" if log_path else ""))
    return None


def _worker(job_path: str) -> None:
    with open(job_path, "rb") as f:
        job = pickle.load(f)
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if rank == 0 and job["log_path"]:
        setup_logging(job["log_path"], append=True)
    else:
        setup_logging(None, level=logging.WARNING)
    if job["device_type"] == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    try:
        train_files(job["model_path"], job["metrics_path"], device, **job["kwargs"])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
