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

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clumpfinder.detection.detector import (BackboneSpec, DetectorSpec, build_detector, dihedral, init_digest,
                                            load_images, pick_device, predict_images)
from clumpfinder.io import known_fields
from clumpfinder import metrics
from clumpfinder.detection import loop

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


def job_fingerprint(coco: dict[str, Any], backbone: BackboneSpec, detector: DetectorSpec, spec: TrainSpec,
                    val: dict[str, Any] | None = None, selection: Selection | None = None) -> str:
    """What a checkpoint must match to be resumed: settings, the init's weights file, the training
    images and boxes, and the validation images and boxes that choose the checkpoint."""
    return loop.fingerprint({
        "checkpoint_format": 2, "backbone": asdict(backbone), "detector": asdict(detector), "training": asdict(spec),
        "weights": init_digest(backbone), "images": [im["file_name"] for im in coco["images"]],
        "annotations": [(a["image_id"], a["bbox"], a["category_id"]) for a in coco["annotations"]],
        "selection": asdict(selection) if selection else None,
        "val": None if val is None else [[im["file_name"] for im in val["images"]],
                                         [(a["image_id"], a["bbox"], a["category_id"]) for a in val["annotations"]]]})


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

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        batch_imgs, batch_tgts = [], []
        for i, k, flip in batch_plan(step, n, bs, spec.seed, spec.augment):
            img, boxes = images[i], targets[i]["boxes"]
            if k or flip:
                img, boxes = dihedral(img, boxes, k, flip)
            batch_imgs.append(img.to(device, torch.float32) / 255.0)
            batch_tgts.append({"boxes": boxes.to(device), "labels": targets[i]["labels"].to(device)})
        losses = model(batch_imgs, batch_tgts)
        return sum(losses.values()), losses, len(batch_imgs)

    def evaluate(model: torch.nn.Module, step: int) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": round(step * bs / n, 2)}
        if val is not None:
            row.update(validation_score(model, val, val_images, detector, selection))
        return row

    def describe(step: int, row: dict[str, Any], best: dict[str, Any]) -> str:
        return ("step %d/%d (epoch %.1f) loss %.4f (cls %.4f box %.4f obj %.4f rpn %.4f) %.1f img/s%s" % (
            step, total, row["epoch"], row.get("loss", float("nan")), row.get("loss_classifier", float("nan")),
            row.get("loss_box_reg", float("nan")), row.get("loss_objectness", float("nan")),
            row.get("loss_rpn_box_reg", float("nan")), row["img_per_s"] or 0,
            f"; validation F1 {row['val_f1']} (best {best['score']} at step {best['step']})" if val is not None else ""))

    run = loop.run(model, opt, params, step_fn, evaluate, loop.Loop(
        total=total, lr=spec.lr, warmup_steps=spec.warmup_steps, eval_every=spec.eval_every, grad_clip=spec.grad_clip,
        patience=spec.patience if val is not None else 0, score="val_f1", what="training", checkpoint=checkpoint, describe=describe,
        fingerprint=job_fingerprint(coco, backbone, detector, spec, val, selection)), device)
    step, best = run["steps"], run["best"]
    if run["stopped_early"]:
        log.info("stopped at step %d: no better validation F1 in %d evaluations", step, spec.patience)
    if val is not None:
        log.info("kept the weights of step %s (validation F1 %s)", best["step"], best["score"])
    metrics_out = {
        "backbone": asdict(backbone), "training": asdict(spec), "n_train": n, "steps": step, "max_steps": total,
        "epochs": round(step * bs / n, 2), "batch_size": bs, "stopped_early": run["stopped_early"],
        "best_step": best["step"], "best_val_f1": best["score"] if best["step"] is not None else None,
        "val_images": len(val["images"]) if val is not None else 0,
        "seconds": round(run["seconds"], 2), "img_per_s": round(step * bs / run["seconds"], 2) if run["seconds"] > 0 else None,
        "device": str(device), "resumed_at_step": run["resumed_at_step"],
        "final_loss": run["history"][-1].get("loss") if run["history"] else None, "history": run["history"],
    }
    return model, metrics_out
