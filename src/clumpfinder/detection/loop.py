"""The one optimisation loop of the package, shared by the detector's training and both galaxy
pretrainings: linear warm-up then cosine decay of the learning rate, gradient clipping, a finite-
loss check, an evaluation every ``eval_every`` steps (the weights with the highest value of the
history key ``score`` kept where the caller names one, early stopping after ``patience`` evaluations without a better
one), a log line and a history row per evaluation, and a checkpoint at every evaluation from
which a killed job resumes exactly where it stopped.

What differs between the callers is passed in: ``step_fn(step, backward)`` draws the batch of that
step, calls ``backward(loss)`` on each part it computes (one, or several micro-batches whose
gradients add up) and returns the step's loss and named parts (detached); ``evaluate(model, step)``
scores the model after ``step`` steps (or returns ``{}``); the caller's own random state (e.g. a
numpy generator that draws batches) travels in the checkpoint through ``extra_state`` /
``load_extra_state``.

Mixed precision: a ``scaler`` (:func:`clumpfinder.compute.grad_scaler`) scales fp16 losses; for
bf16 and fp32 it is a pass-through. Data parallel (``torch.distributed`` initialised with more than
one process): every process runs the loop on its share of each batch (the gradients are averaged
by ``DistributedDataParallel``), the logged losses are averaged over the processes, and process 0
alone evaluates (its scores are sent to the others, so that all keep the same weights and stop at
the same step) and writes the checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from clumpfinder.compute import gpu_utilisation
from clumpfinder.io import atomic_path, json_digest

log = logging.getLogger(__name__)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Learning rate of optimiser step ``step`` of ``total``: linear warm-up over ``warmup``
    steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


@dataclass
class Loop:
    """Settings of one run of :func:`run`."""

    total: int  # optimiser steps
    lr: float
    warmup_steps: int
    eval_every: int
    grad_clip: float = 0.0  # 0: no clipping
    patience: int = 0  # 0: never stop early
    score: str | None = None  # history key whose highest value chooses the weights (None: the last)
    what: str = "training"  # for messages
    fingerprint: str = ""  # what a checkpoint must match to be resumed
    checkpoint: str | Path | None = None
    describe: Callable[[int, dict[str, Any], dict[str, Any]], str] | None = None  # log line of a history row
    extra_state: Callable[[], Any] = field(default=lambda: None)
    load_extra_state: Callable[[Any], None] = field(default=lambda state: None)


def fingerprint(key: dict[str, Any]) -> str:
    """What a checkpoint must match to be resumed, as one hash of the job's settings and data."""
    return json_digest(key)


def load_checkpoint(path: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this job (same fingerprint), else None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a checkpoint is only a cache: a damaged one means starting over
        log.warning("checkpoint %s is unreadable (%s): starting from scratch", path, err)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("checkpoint %s belongs to other settings or data: starting from scratch", path)
        return None
    return state


def evals_since_best(history: list[dict[str, Any]], best: dict[str, Any], score: str | None) -> int:
    """How many evaluations (rows with a ``score``) came after the best one (0 before any)."""
    if best["step"] is None:
        return 0
    return sum(1 for r in history if score in r and r["step"] > best["step"])


def world() -> tuple[int, int]:
    """(rank, number of processes) of the data-parallel group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average(sums: dict[str, float], n_images: int, device: torch.device) -> tuple[dict[str, float], int]:
    """Loss sums averaged over the processes, images summed (every process has the same keys)."""
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(n_images)], dtype=torch.float64,
                     device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    size = dist.get_world_size()
    return {k: float(t[i]) / size for i, k in enumerate(keys)}, int(t[-1])


def _from_rank0(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run(model: torch.nn.Module, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
        step_fn: Callable[[int, Callable[[torch.Tensor], None]], tuple[torch.Tensor, dict[str, torch.Tensor], int]],
        evaluate: Callable[[torch.nn.Module, int], dict[str, Any]], loop: Loop, device: torch.device,
        scaler: torch.amp.GradScaler | None = None) -> dict[str, Any]:
    """Optimise ``model`` for ``loop.total`` steps (fewer if it stops early) and return the run's
    record: steps, history, the best evaluation, seconds, where it resumed. ``step_fn(step,
    backward)`` returns (loss, named loss parts, images in the batch) after calling ``backward``
    on its loss (or on each of its micro-batches' losses); ``evaluate(model, step)`` returns the
    history row's extra fields, among them ``loop.score`` (higher is better) where weights are to
    be chosen by it. The model ends with the best weights (or the last, without a score), in eval
    mode."""
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    rank, size = world()
    step, history, seconds_before = 0, [], 0.0
    best: dict[str, Any] = {"score": -math.inf, "step": None, "state": None}
    state = load_checkpoint(loop.checkpoint, loop.fingerprint) if loop.checkpoint else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, history, best, seconds_before = state["step"], state["history"], state["best"], state["seconds"]
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        loop.load_extra_state(state.get("extra"))
        log.info("resuming %s from %s at step %d", loop.what, loop.checkpoint, step)
    resumed_at = step if state is not None else None
    if size > 1 and _from_rank0(step) != step:  # (a checkpoint one process could not read, say)
        raise RuntimeError(f"process {rank} would resume {loop.what} at step {step}, process 0 at another step")
    t_start = time.perf_counter()
    stale = evals_since_best(history, best, loop.score)
    overflows = 0  # fp16 steps in a row whose loss overflowed (the scaler skips them)

    def backward(loss: torch.Tensor) -> None:
        nonlocal overflows
        if not torch.isfinite(loss):
            overflows += 1
            if not scaler.is_enabled() or overflows > 50:
                raise FloatingPointError(f"{loop.what} loss is {loss.item()} at step {step}"
                                         + (f" ({overflows} steps in a row)" if overflows > 1 else "") + "; lower the lr")
        else:
            overflows = 0
        scaler.scale(loss).backward()

    while step < loop.total and not (loop.patience and stale >= loop.patience):
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        n_batches = n_images = 0
        utilisation: list[float] = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(min(loop.eval_every, loop.total - step)):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, loop.total, loop.warmup_steps, loop.lr)
            opt.zero_grad(set_to_none=True)
            loss, parts, batch = step_fn(step, backward)
            if loop.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, loop.grad_clip)
            scaler.step(opt)
            scaler.update()
            for name, v in parts.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            n_batches += 1
            n_images += batch
            step += 1
            u = gpu_utilisation(device)
            if u is not None:
                utilisation.append(u)
        if size > 1:
            sums, n_images = _average(sums, n_images, device)
        dt = time.perf_counter() - t0
        row: dict[str, Any] = {"step": step, "seconds": round(dt, 2),
                               "img_per_s": round(n_images / dt, 2) if dt > 0 else None}
        if device.type == "cuda":  # what feeds the GPU: its mean utilisation and peak memory
            row["gpu_util"] = round(sum(utilisation) / len(utilisation), 1) if utilisation else None
            row["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
        row.update({name: round(v / max(1, n_batches), 5) for name, v in sums.items()})
        t1 = time.perf_counter()
        scores = evaluate(model, step) if rank == 0 else None
        if size > 1:
            scores = _from_rank0(scores)
        if scores:
            row.update(scores)
            row["val_seconds"] = round(time.perf_counter() - t1, 2)
        if loop.score and row.get(loop.score) is not None and row[loop.score] > best["score"]:
            best = {"score": row[loop.score], "step": step,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        history.append(row)
        stale = evals_since_best(history, best, loop.score)
        if rank == 0:
            log.info("%s", loop.describe(step, row, best) if loop.describe else f"step {step}/{loop.total} {row}")
        if loop.checkpoint and rank == 0:
            with atomic_path(loop.checkpoint) as tmp:
                torch.save({
                    "fingerprint": loop.fingerprint, "step": step, "history": history, "best": best,
                    "seconds": seconds_before + time.perf_counter() - t_start,
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "extra": loop.extra_state(),
                }, tmp)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return {"steps": step, "history": history, "best": best, "stopped_early": step < loop.total,
            "seconds": seconds_before + time.perf_counter() - t_start, "resumed_at_step": resumed_at}
