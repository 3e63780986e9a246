"""Where and how the torch jobs compute: the device a job uses, its floating-point precision, and
the GPUs a Snakemake job was given.

One setting for every torch rule (config ``compute``). A job uses exactly the GPUs it asked for in
its ``resources`` (``gpu: k``):

* under SLURM (``--gpus=k``, or a ``gres`` of k GPUs) the job sees exactly its k GPUs in
  ``CUDA_VISIBLE_DEVICES`` and takes them all;
* elsewhere (a workstation, ``snakemake --resources gpu=N``), where every job sees every GPU,
  concurrent jobs take distinct GPUs through lock files (one per GPU, ``fcntl.flock``: the kernel
  releases a lock when its job ends, even when the job is killed), and the job's own
  ``CUDA_VISIBLE_DEVICES`` is set to the GPUs it holds, so that it sees them as ``cuda:0`` …
  ``cuda:k-1``;
* a job given no GPU (``gpu: 0``) computes on the CPU, even where GPUs exist (with ``device:
  auto``, so does a job given GPUs on a machine that has none).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tempfile
import time
from datetime import timedelta
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from clumpfinder.io import known_fields

log = logging.getLogger(__name__)

#: how long the processes of a data-parallel job wait for each other (process 0 validating, say)
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ComputeSpec:
    """The ``compute`` section of the configuration."""

    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto: bf16 (fp16 where the GPU has no bf16) on CUDA, fp32 on the CPU
    loader_workers: int = 0  # DataLoader worker processes per training process (0: in the process)
    gpu_lock_dir: str | None = None  # where workstation jobs lock GPUs (None: the user's temp folder)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"compute.device {self.device!r} is not 'auto', 'cpu' or 'cuda'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"compute.precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.loader_workers < 0:
            raise ValueError(f"compute.loader_workers must be >= 0, got {self.loader_workers}")

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> "ComputeSpec":
        return cls(**known_fields(cls, cfg or {}, "compute"))


def pick_device(name: str = "auto") -> torch.device:
    """The torch device named by a setting: ``auto`` is the (first) GPU where torch sees one, else
    the CPU. For library and command-line use; a workflow job goes through :func:`job_devices`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype that mixed precision computes in on ``device`` (None: plain fp32). ``auto`` is
    bf16 on a CUDA GPU that has it, fp16 on older GPUs, fp32 on the CPU (a CPU job's results stay
    those of the fp32 code)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":  # bf16 where the GPU computes it natively (Ampere on), not emulated
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision on ``device`` in ``dtype``; a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler for fp16 (whose small gradients would underflow); disabled, and so a
    pass-through, for bf16 and fp32."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


# ----------------------------------------------------------------------------- GPUs of a job
def nvml_gpu_count() -> int:
    """GPUs the NVIDIA driver reports (NVML; no CUDA context is made, so ``CUDA_VISIBLE_DEVICES``
    can still be set afterwards); 0 without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library or no driver
        return 0


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs):
    that variable's list where it is set, else every GPU the driver counts; none without a driver
    or without a CUDA build of torch, whatever the variable says (a scheduler may set it for a
    GPU that is not there, as the test cluster's fake GPU)."""
    count = nvml_gpu_count() if torch.backends.cuda.is_built() else 0
    if count == 0:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(count)]


def job_gpu_count(resources: Any) -> int:
    """The GPUs a Snakemake job was given: its ``gpu`` resource, or the count of a ``gres`` such
    as ``gpu:2`` / ``gpu:a100:2`` (clusters that take generic resources only, profiles/slurm)."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    gres = str(getattr(resources, "gres", "") or "")
    m = re.search(r"(?:^|,)gpu(?::[^:,]+)?:(\d+)", gres)
    return gpus or (int(m.group(1)) if m else 0)


def slurm_gave_gpus() -> bool:
    """Whether this process runs in a SLURM job (or step) that was allocated GPUs."""
    return "SLURM_JOB_ID" in os.environ and any(
        os.environ.get(v) for v in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE"))


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"clumpfinder-gpu-locks-{os.getuid()}"


@dataclass
class GpuLease:
    """The GPUs a job holds (``CUDA_VISIBLE_DEVICES`` entries) and the open lock files that hold
    them; :meth:`release` (or the end of the process) frees them."""

    gpus: list[str]
    handles: list[Any]

    def release(self) -> None:
        for h in self.handles:
            fcntl.flock(h, fcntl.LOCK_UN)
            h.close()
        self.handles = []


def acquire_gpus(k: int, candidates: list[str], lock_dir: str | Path | None = None, poll_s: float = 5.0,
                 timeout_s: float | None = None, exclusive: bool = False) -> GpuLease:
    """Hold ``k`` of ``candidates`` that no other job holds, waiting while fewer are free.
    ``exclusive``: the candidates are this job's own (a SLURM allocation; another job that sees
    the same indices sees other GPUs): when they are exactly k, they are taken without locks."""
    if k < 1:
        return GpuLease([], [])
    if len(candidates) < k:
        raise RuntimeError(f"the job asks for {k} GPU(s) but sees {len(candidates)} "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    if exclusive and len(candidates) == k:
        return GpuLease(list(candidates), [])
    folder = Path(lock_dir) if lock_dir else default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    t0, said = time.monotonic(), False
    while True:
        held: list[tuple[str, Any]] = []
        for gpu in candidates:
            h = open(folder / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock", "a+")
            try:
                fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                h.close()
                continue
            held.append((gpu, h))
            if len(held) == k:
                return GpuLease([g for g, _ in held], [h for _, h in held])
        for _, h in held:  # not enough free: let go, so that two waiting jobs cannot block each other
            fcntl.flock(h, fcntl.LOCK_UN)
            h.close()
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"no {k} free GPU(s) among {candidates} after {timeout_s:.0f} s (locks in {folder})")
        if not said:
            log.info("waiting for %d free GPU(s) among %s (held by other jobs; locks in %s)", k, candidates, folder)
            said = True
        time.sleep(poll_s)


@contextlib.contextmanager
def job_devices(gpus: int, spec: ComputeSpec, what: str = "this job",
                candidates: list[str] | None = None) -> Iterator[list[torch.device]]:
    """The devices of a workflow job that was given ``gpus`` GPUs (its ``resources.gpu``), held
    for the ``with`` block: ``[cuda:0, …, cuda:k-1]`` (the job's own GPUs, renumbered through
    ``CUDA_VISIBLE_DEVICES``), or ``[cpu]`` for a job without GPUs or with ``compute.device:
    cpu``. Call it before anything touches CUDA in the process."""
    if spec.device == "cpu" or (gpus < 1 and spec.device == "auto"):
        if gpus > 0:
            log.info("%s was given %d GPU(s) but compute.device is 'cpu': computing on the CPU", what, gpus)
        yield [torch.device("cpu")]
        return
    if gpus < 1:
        raise ValueError(f"compute.device is 'cuda' but {what} was given no GPU: set its resources gpu >= 1")
    candidates = visible_gpus() if candidates is None else candidates
    if not candidates and spec.device == "auto":
        log.warning("%s was given %d GPU(s) but this machine shows none: computing on the CPU", what, gpus)
        yield [torch.device("cpu")]
        return
    lease = acquire_gpus(gpus, candidates, spec.gpu_lock_dir, exclusive=slurm_gave_gpus())
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(lease.gpus)
    try:
        if not torch.cuda.is_available():  # a driver torch cannot use (too old, say)
            if spec.device == "cuda":
                raise RuntimeError(f"{what} holds GPU(s) {', '.join(lease.gpus)} but torch cannot use them "
                                   "(torch.cuda.is_available() is False: driver and torch build disagree?)")
            log.warning("%s: torch cannot use the GPU(s) the driver shows: computing on the CPU", what)
            yield [torch.device("cpu")]
            return
        log.info("%s holds GPU(s) %s", what, ", ".join(lease.gpus))
        yield [torch.device("cuda", i) for i in range(len(lease.gpus))]
    finally:
        lease.release()
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def gpu_utilisation(device: torch.device) -> float | None:
    """The GPU's utilisation in percent (NVML) now; None on the CPU or without NVML."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:
        return None
