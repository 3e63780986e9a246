"""Training a Faster R-CNN clump detector on a COCO training subset.

Images are small, so the whole subset is held in memory as uint8 tensors. Every image of a batch
is turned by a random element of the dihedral group (90-degree rotations and flips: a galaxy image
has no preferred orientation). Every training-set size gets the same budget of ``steps`` optimiser
steps (linear warm-up, then cosine decay over the budget), so data size and training length are not
mixed up. Every ``eval_every`` steps the detector predicts on a fixed subset of the validation
split and its F1 against the validation labels (classes merged, best score threshold) is logged;
the weights with the best validation F1 are the ones returned, and training stops early once
``patience`` evaluations in a row have not improved on it.

Batches are a function of the seed and the step alone (which epoch's permutation, which slice,
which dihedral element), so with a ``checkpoint`` path (saved atomically at every evaluation with
the model, optimiser, best weights, history and torch's random state) a killed run resumes where it
stopped and ends exactly as an uninterrupted run would on the CPU. The caller deletes the checkpoint
once the outputs are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clumpfinder.detector import (BackboneSpec, DetectorSpec, build_detector, dihedral, init_file, init_kind,
                                  load_images, pick_device, predict_images)
from clumpfinder.io import atomic_path, known_fields
from clumpfinder import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    """The ``training`` section of the configuration (after per-backbone overrides)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    augment: bool
    seed: int
    eval_every: int = 50
    patience: int = 0  # evaluations without a better validation F1 before stopping; 0 = never stop early
    val_images: int = 120
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"training.steps ({self.steps}) and training.eval_every ({self.eval_every}) must be >= 1")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "TrainSpec":
        return cls(**known_fields(cls, cfg, "training"))


@dataclass(frozen=True)
class Selection:
    """How checkpoints are compared on the validation split: F1 at IoU ``iou`` (classes merged)
    at the best of the score thresholds ``scores``."""

    iou: float = 0.5
    scores: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


def load_targets(coco: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """Per image: boxes (x1, y1, x2, y2) and labels; crowd (ignored) annotations are left out."""
    per: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            per[a["image_id"]].append(a)
    targets = []
    for im in coco["images"]:
        anns = per[im["id"]]
        boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            dtype=torch.float32,
        ).reshape(-1, 4)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def job_fingerprint(coco: dict[str, Any], backbone: BackboneSpec, detector: DetectorSpec, spec: TrainSpec,
                    val: dict[str, Any] | None = None, selection: Selection | None = None) -> str:
    """What a checkpoint must match to be resumed: settings, the init's weights file, the training
    images and boxes, and the validation images and boxes that choose the checkpoint."""
    weights = None
    if init_kind(backbone.init) in ("file", "pretrain"):  # a re-made encoder must not resume old runs
        weights = hashlib.sha256(init_file(backbone).read_bytes()).hexdigest()
    key = {"backbone": asdict(backbone), "detector": asdict(detector), "training": asdict(spec), "weights": weights,
           "images": [im["file_name"] for im in coco["images"]],
           "annotations": [(a["image_id"], a["bbox"], a["category_id"]) for a in coco["annotations"]],
           "selection": asdict(selection) if selection else None,
           "val": None if val is None else [[im["file_name"] for im in val["images"]],
                                            [(a["image_id"], a["bbox"], a["category_id"]) for a in val["annotations"]]]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
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


def validation_subset(val: dict[str, Any], n: int, seed: int = 0) -> dict[str, Any]:
    """``n`` images of the validation split (all if it has fewer) and their boxes, drawn with a
    fixed seed so that every cell of the grid is judged on the same galaxies."""
    images = sorted(val["images"], key=lambda im: im["id"])
    if n < len(images):
        keep = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
        images = [images[i] for i in keep]
    ids = {im["id"] for im in images}
    return {**val, "images": images, "annotations": [a for a in val["annotations"] if a["image_id"] in ids]}


def batch_plan(step: int, n: int, bs: int, seed: int, augment: bool) -> list[tuple[int, int, bool]]:
    """(image index, quarter turns, flip) of every image of optimiser step ``step``: epoch e is the
    permutation drawn from (seed, e), cut into ceil(n / bs) batches; the dihedral elements come from
    (seed, step). Depends on nothing else, so a resumed run draws the same batches."""
    per_epoch = math.ceil(n / bs)
    epoch, j = divmod(step, per_epoch)
    idx = np.random.default_rng([seed, epoch]).permutation(n)[j * bs : (j + 1) * bs]
    if not augment:
        return [(int(i), 0, False) for i in idx]
    r = np.random.default_rng([seed, 1_000_003, step])
    return [(int(i), int(r.integers(4)), bool(r.integers(2))) for i in idx]


def validation_score(model: torch.nn.Module, val: dict[str, Any], images: list[torch.Tensor],
                     detector: DetectorSpec, selection: Selection) -> dict[str, Any]:
    """Completeness, purity and F1 of ``model`` on the validation images at the F1-best threshold."""
    results = predict_images(model, images, [im["id"] for im in val["images"]], detector.class_agnostic_nms)
    m = metrics.match(val, results, (selection.iou,))
    best = metrics.best_score(m, selection.iou, selection.scores)
    c = metrics.counts(m, selection.iou, best)
    return {"val_f1": _round(c["f1"]), "val_completeness": _round(c["completeness"]),
            "val_purity": _round(c["purity"]), "val_score": best}


def _round(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 4)


def train_detector(
    coco: dict[str, Any], image_dir: str | Path, backbone: BackboneSpec, detector: DetectorSpec,
    spec: TrainSpec, threads: int | None = None, checkpoint: str | Path | None = None,
    val: dict[str, Any] | None = None, selection: Selection = Selection(),
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train and return (model, metrics); with ``val`` (a COCO dataset of the validation split) the
    returned weights are the evaluated ones with the best validation F1 (see module doc);
    resumable through ``checkpoint``."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    device = pick_device(spec.device)
    images = load_images(coco, image_dir)
    targets = load_targets(coco)
    n = len(images)
    if n == 0:
        raise ValueError("training set is empty")
    if val is not None:
        val = validation_subset(val, spec.val_images)
        val_images = load_images(val, image_dir)
    model = build_detector(backbone, detector).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, fused=True)
    bs = min(spec.batch_size, n)
    total = spec.steps
    log.info(
        "training %s (%s) on %d images, %d boxes: up to %d steps of %d (%.1f epochs) on %s; validation on %s",
        backbone.arch, backbone.init, n, sum(len(t["labels"]) for t in targets), total, bs, total * bs / n, device,
        f"{len(val['images'])} images every {spec.eval_every} steps" if val is not None else "none",
    )
    step = 0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_f1": -1.0, "step": None, "state": None}
    seconds_before = 0.0
    fingerprint = job_fingerprint(coco, backbone, detector, spec, val, selection)
    state = _load_checkpoint(Path(checkpoint), fingerprint) if checkpoint else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history, best, seconds_before = state["step"], state["history"], state["best"], state["seconds"]
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        log.info("resuming from %s at step %d", checkpoint, step)
    resumed_at = step if state is not None else None
    t_start = time.perf_counter()
    stale = _evals_since_best(history, best)
    while step < total and not (spec.patience and val is not None and stale >= spec.patience):
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        n_batches = n_images = 0
        for _ in range(min(spec.eval_every, total - step)):
            batch_imgs, batch_tgts = [], []
            for i, k, flip in batch_plan(step, n, bs, spec.seed, spec.augment):
                img, boxes = images[i], targets[i]["boxes"]
                if k or flip:
                    img, boxes = dihedral(img, boxes, k, flip)
                batch_imgs.append(img.to(device, torch.float32) / 255.0)
                batch_tgts.append({"boxes": boxes.to(device), "labels": targets[i]["labels"].to(device)})
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, spec.warmup_steps, spec.lr)
            losses = model(batch_imgs, batch_tgts)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower training.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
            opt.step()
            for name, v in losses.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            n_batches += 1
            n_images += len(batch_imgs)
            step += 1
        dt = time.perf_counter() - t0
        row: dict[str, Any] = {"step": step, "epoch": round(step * bs / n, 2), "seconds": round(dt, 2),
                               "img_per_s": round(n_images / dt, 2) if dt > 0 else None}
        row.update({name: round(v / max(1, n_batches), 5) for name, v in sums.items()})
        if val is not None:
            t1 = time.perf_counter()
            row.update(validation_score(model, val, val_images, detector, selection))
            row["val_seconds"] = round(time.perf_counter() - t1, 2)
            if row["val_f1"] is not None and row["val_f1"] > best["val_f1"]:
                best = {"val_f1": row["val_f1"], "step": step,
                        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        history.append(row)
        stale = _evals_since_best(history, best)
        log.info(
            "step %d/%d (epoch %.1f) loss %.4f (cls %.4f box %.4f obj %.4f rpn %.4f) %.1f img/s%s",
            step, total, row["epoch"], row.get("loss", float("nan")), row.get("loss_classifier", float("nan")),
            row.get("loss_box_reg", float("nan")), row.get("loss_objectness", float("nan")),
            row.get("loss_rpn_box_reg", float("nan")), row["img_per_s"] or 0,
            f"; validation F1 {row['val_f1']} (best {best['val_f1']} at step {best['step']})" if val is not None else "",
        )
        if checkpoint:
            with atomic_path(checkpoint) as tmp:
                torch.save({
                    "fingerprint": fingerprint, "step": step, "history": history, "best": best,
                    "seconds": seconds_before + time.perf_counter() - t_start,
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                }, tmp)
    seconds = seconds_before + time.perf_counter() - t_start
    stopped_early = step < total
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    if stopped_early:
        log.info("stopped at step %d: no better validation F1 in %d evaluations", step, spec.patience)
    if val is not None:
        log.info("kept the weights of step %s (validation F1 %s)", best["step"], best["val_f1"])
    metrics_out = {
        "backbone": asdict(backbone), "training": asdict(spec), "n_train": n, "steps": step, "max_steps": total,
        "epochs": round(step * bs / n, 2), "batch_size": bs, "stopped_early": stopped_early,
        "best_step": best["step"], "best_val_f1": best["val_f1"] if best["step"] is not None else None,
        "val_images": len(val["images"]) if val is not None else 0,
        "seconds": round(seconds, 2), "img_per_s": round(step * bs / seconds, 2) if seconds > 0 else None,
        "device": str(device), "resumed_at_step": resumed_at,
        "final_loss": history[-1].get("loss") if history else None, "history": history,
    }
    return model, metrics_out


def _evals_since_best(history: list[dict[str, Any]], best: dict[str, Any]) -> int:
    """How many evaluations came after the best one (0 before any)."""
    if best["step"] is None:
        return 0
    return sum(1 for r in history if "val_f1" in r and r["step"] > best["step"])
