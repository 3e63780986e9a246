"""Training a Faster R-CNN clump detector on a COCO training subset.

Images are small, so the whole subset is held in memory as uint8 tensors. Every batch is
augmented with a random element of the dihedral group (90-degree rotations and flips: a galaxy
image has no preferred orientation). The schedule is linear warm-up then cosine decay over
``max(epochs x n / batch, min_steps)`` optimiser steps, so the smallest subsets still get enough
updates to converge. One log line per epoch.

With a ``checkpoint`` path, the model, optimiser, step, history and every random-number state are
saved there (atomically) after each epoch; a run that finds a checkpoint of the same job (same
settings and training images) continues after its last epoch and ends exactly as an uninterrupted
run would on the CPU. The caller deletes the checkpoint once the outputs are written.
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

from clumpfinder.detector import CLASSES, BackboneSpec, DetectorSpec, build_detector, init_file, init_kind
from clumpfinder.io import atomic_path
from clumpfinder.labels import read_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    """The ``training`` section of the configuration (after per-backbone overrides)."""

    epochs: int
    min_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    augment: bool
    seed: int
    device: str = "auto"

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "TrainSpec":
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_images(coco: dict[str, Any], image_dir: str | Path) -> list[torch.Tensor]:
    """RGB uint8 tensors (3, H, W) in the order of ``coco['images']`` (cut to each image's crop
    window); a missing or unreadable image raises an error naming the file."""
    return [torch.from_numpy(read_image(image_dir, im).copy()).permute(2, 0, 1).contiguous()
            for im in coco["images"]]


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


def dihedral(img: torch.Tensor, boxes: torch.Tensor, k: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate image and boxes by k x 90 degrees (counter-clockwise as displayed), then
    optionally flip left-right."""
    h, w = img.shape[-2:]
    b = boxes.clone()
    for _ in range(k % 4):
        img = torch.rot90(img, 1, dims=(-2, -1))
        # (x, y) -> (y, w - x) for a counter-clockwise quarter turn of a w x h image
        x1, y1, x2, y2 = b.unbind(-1)
        b = torch.stack([y1, w - x2, y2, w - x1], dim=-1)
        h, w = w, h
    if flip:
        img = torch.flip(img, dims=(-1,))
        x1, y1, x2, y2 = b.unbind(-1)
        b = torch.stack([w - x2, y1, w - x1, y2], dim=-1)
    return img, b


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def job_fingerprint(coco: dict[str, Any], backbone: BackboneSpec, detector: DetectorSpec, spec: TrainSpec) -> str:
    """What a checkpoint must match to be resumed: settings, the init's weights file and the training
    images and boxes."""
    weights = None
    if init_kind(backbone.init) in ("file", "pretrain"):  # a re-made encoder must not resume old runs
        weights = hashlib.sha256(init_file(backbone).read_bytes()).hexdigest()
    key = {"backbone": asdict(backbone), "detector": asdict(detector), "training": asdict(spec), "weights": weights,
           "images": [im["file_name"] for im in coco["images"]],
           "annotations": [(a["image_id"], a["bbox"], a["category_id"]) for a in coco["annotations"]]}
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


def train_detector(
    coco: dict[str, Any], image_dir: str | Path, backbone: BackboneSpec, detector: DetectorSpec,
    spec: TrainSpec, threads: int | None = None, checkpoint: str | Path | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train and return (model, metrics); resumable through ``checkpoint`` (see module doc)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    device = pick_device(spec.device)
    images = load_images(coco, image_dir)
    targets = load_targets(coco)
    n = len(images)
    if n == 0:
        raise ValueError("training set is empty")
    model = build_detector(backbone, detector).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    bs = min(spec.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = max(spec.epochs * steps_per_epoch, spec.min_steps)
    n_epochs = math.ceil(total / steps_per_epoch)
    log.info(
        "training %s (%s) on %d images, %d boxes: %d steps of %d (%d epochs) on %s",
        backbone.arch, backbone.init, n, sum(len(t["labels"]) for t in targets), total, bs, n_epochs, device,
    )
    model.train()
    step = 0
    history: list[dict[str, Any]] = []
    first_epoch = 0
    seconds_before = 0.0
    fingerprint = job_fingerprint(coco, backbone, detector, spec)
    state = _load_checkpoint(Path(checkpoint), fingerprint) if checkpoint else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history, first_epoch = state["step"], state["history"], state["epoch"] + 1
        seconds_before = state["seconds"]
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        log.info("resuming from %s after epoch %d (step %d)", checkpoint, first_epoch, step)
    t_start = time.perf_counter()
    for epoch in range(first_epoch, n_epochs):
        t0 = time.perf_counter()
        order = rng.permutation(n)
        sums: dict[str, float] = {}
        n_batches = 0
        for b0 in range(0, n, bs):
            if step >= total:
                break
            idx = order[b0 : b0 + bs]
            batch_imgs, batch_tgts = [], []
            for i in idx:
                img, boxes = images[i], targets[i]["boxes"]
                if spec.augment:
                    img, boxes = dihedral(img, boxes, int(rng.integers(4)), bool(rng.integers(2)))
                batch_imgs.append(img.to(device, torch.float32) / 255.0)
                batch_tgts.append({"boxes": boxes.to(device), "labels": targets[i]["labels"].to(device)})
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, spec.warmup_steps, spec.lr)
            losses = model(batch_imgs, batch_tgts)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step} (epoch {epoch}); lower training.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
            opt.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            n_batches += 1
            step += 1
        dt = time.perf_counter() - t0
        row = {"epoch": epoch, "steps": step, "seconds": round(dt, 2),
               "img_per_s": round(n_batches * bs / dt, 2) if dt > 0 else None}
        row.update({k: round(v / max(1, n_batches), 5) for k, v in sums.items()})
        history.append(row)
        log.info(
            "epoch %d/%d step %d loss %.4f (cls %.4f box %.4f obj %.4f rpn %.4f) %.1f s %.1f img/s",
            epoch + 1, n_epochs, step, row.get("loss", float("nan")), row.get("loss_classifier", float("nan")),
            row.get("loss_box_reg", float("nan")), row.get("loss_objectness", float("nan")),
            row.get("loss_rpn_box_reg", float("nan")), dt, row["img_per_s"] or 0,
        )
        if checkpoint:
            with atomic_path(checkpoint) as tmp:
                torch.save({
                    "fingerprint": fingerprint, "epoch": epoch, "step": step, "history": history,
                    "seconds": seconds_before + time.perf_counter() - t_start,
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                }, tmp)
    seconds = seconds_before + time.perf_counter() - t_start
    metrics = {
        "backbone": asdict(backbone), "n_train": n, "steps": step, "epochs": n_epochs, "batch_size": bs,
        "seconds": round(seconds, 2), "img_per_s": round(step * bs / seconds, 2) if seconds > 0 else None,
        "device": str(device), "resumed_after_epoch": first_epoch if state is not None else None,
        "final_loss": history[-1].get("loss") if history else None, "history": history,
    }
    return model, metrics


def save_model(model: torch.nn.Module, backbone: BackboneSpec, detector: DetectorSpec, path: str | Path) -> None:
    """Weights plus everything needed to rebuild the detector."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "backbone": asdict(backbone), "detector": asdict(detector), "classes": list(CLASSES),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path, device: torch.device | None = None) -> tuple[torch.nn.Module, DetectorSpec]:
    """The trained detector (in eval mode) and its detector settings."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    detector = DetectorSpec(**payload["detector"])
    model = build_detector(BackboneSpec(**payload["backbone"]), detector, num_classes=len(payload["classes"]) + 1,
                           pretrained=False)  # the trained weights replace the init's anyway
    model.load_state_dict(payload["state_dict"])
    return model.to(device or torch.device("cpu")).eval(), detector
