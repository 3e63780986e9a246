"""The one optimisation loop of the package, shared by the detector's training and both galaxy
pretrainings: linear warm-up then cosine decay of the learning rate, gradient clipping, a finite-
loss check, an evaluation every ``eval_every`` steps (the weights with the highest value of the
history key ``score`` kept where the caller names one, early stopping after ``patience`` evaluations without a better
one), a log line and a history row per evaluation, and a checkpoint at every evaluation from
which a killed job resumes exactly where it stopped.

What differs between the callers is passed in: ``step_fn(step)`` draws the batch of that step and
returns its loss and named parts; ``evaluate(model, step)`` scores the model after ``step`` steps
(or returns ``{}``); the caller's own random state (e.g. a numpy generator that draws batches)
travels in the checkpoint through ``extra_state`` / ``load_extra_state``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from clumpfinder.io import atomic_path

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
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


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


def run(model: torch.nn.Module, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
        step_fn: Callable[[int], tuple[torch.Tensor, dict[str, torch.Tensor], int]],
        evaluate: Callable[[torch.nn.Module, int], dict[str, Any]], loop: Loop, device: torch.device) -> dict[str, Any]:
    """Optimise ``model`` for ``loop.total`` steps (fewer if it stops early) and return the run's
    record: steps, history, the best evaluation, seconds, where it resumed. ``step_fn(step)``
    returns (loss, named loss parts, images in the batch); ``evaluate(model, step)`` returns the
    history row's extra fields, among them ``loop.score`` (higher is better) where weights are to
    be chosen by it. The model ends with the best weights (or the last, without a score), in eval
    mode."""
    step, history, seconds_before = 0, [], 0.0
    best: dict[str, Any] = {"score": -math.inf, "step": None, "state": None}
    state = load_checkpoint(loop.checkpoint, loop.fingerprint) if loop.checkpoint else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history, best, seconds_before = state["step"], state["history"], state["best"], state["seconds"]
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        loop.load_extra_state(state.get("extra"))
        log.info("resuming %s from %s at step %d", loop.what, loop.checkpoint, step)
    resumed_at = step if state is not None else None
    t_start = time.perf_counter()
    stale = evals_since_best(history, best, loop.score)
    while step < loop.total and not (loop.patience and stale >= loop.patience):
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        n_batches = n_images = 0
        for _ in range(min(loop.eval_every, loop.total - step)):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, loop.total, loop.warmup_steps, loop.lr)
            loss, parts, batch = step_fn(step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{loop.what} loss is {loss.item()} at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if loop.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, loop.grad_clip)
            opt.step()
            for name, v in parts.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            n_batches += 1
            n_images += batch
            step += 1
        dt = time.perf_counter() - t0
        row: dict[str, Any] = {"step": step, "seconds": round(dt, 2),
                               "img_per_s": round(n_images / dt, 2) if dt > 0 else None}
        row.update({name: round(v / max(1, n_batches), 5) for name, v in sums.items()})
        t1 = time.perf_counter()
        scores = evaluate(model, step)
        if scores:
            row.update(scores)
            row["val_seconds"] = round(time.perf_counter() - t1, 2)
        if loop.score and row.get(loop.score) is not None and row[loop.score] > best["score"]:
            best = {"score": row[loop.score], "step": step,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        history.append(row)
        stale = evals_since_best(history, best, loop.score)
        log.info("%s", loop.describe(step, row, best) if loop.describe else f"step {step}/{loop.total} {row}")
        if loop.checkpoint:
            with atomic_path(loop.checkpoint) as tmp:
                torch.save({
                    "fingerprint": loop.fingerprint, "step": step, "history": history, "best": best,
                    "seconds": seconds_before + time.perf_counter() - t_start,
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "extra": loop.extra_state(),
                }, tmp)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return {"steps": step, "history": history, "best": best, "stopped_early": step < loop.total,
            "seconds": seconds_before + time.perf_counter() - t_start, "resumed_at_step": resumed_at}
