"""Training a Faster R-CNN clump detector on a COCO training subset.

Images are small, so the whole subset is held in memory as uint8 tensors. Every image of a batch
is turned by a random element of the dihedral group (90-degree rotations and flips: a galaxy image
has no preferred orientation). Every training-set size gets the same budget of ``steps`` optimiser
steps (linear warm-up, then cosine decay over the budget), so data size and training length are not
mixed up. Every ``eval_every`` steps the detector predicts on a fixed subset of the validation
split and its F1 against the validation labels (classes merged, best score threshold) is logged;
the weights with the best validation F1 are the ones returned, and training stops early once
``patience`` evaluations in a row have not improved on it.

``survey_look`` (a probability) gives that share of the training images another survey's look
(:func:`survey_look`): what differs between surveys, stretches and renderers and carries no clump
information (colour balance, stretch, sky pedestal, blur, noise, JPEG compression), so that the
detector does not learn the simulation's renderer.

Batches are a function of the seed and the step alone (which epoch's permutation, which slice,
which dihedral element), so with a ``checkpoint`` path (saved atomically at every evaluation with
the model, optimiser, best weights, history and torch's random state) a killed run resumes where it
stopped and ends exactly as an uninterrupted run would on the CPU. The caller deletes the checkpoint
once the outputs are written.

Feeding the device: a DataLoader (``compute.loader_workers`` worker processes, pinned memory on a
GPU) reads the images from the split's decoded cache (:mod:`clumpfinder.labels.cache`, memory-mapped)
or from memory, and turns them on the fly; the worker count changes nothing but speed. The
backbone can compute in mixed precision (``compute.precision``). ``micro_batches`` cuts every
(full) batch into parts whose gradients add up, each weighted by its share of the batch (less
memory); data-parallel training over k GPUs (``torch.distributed``, one process per GPU,
:func:`clumpfinder.detection.parallel.train_job`) gives each process ``micro_batches / k`` of the
parts, and so is the same optimisation on any number of GPUs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clumpfinder.compute import ComputeSpec, autocast_dtype, grad_scaler, pick_device
from clumpfinder.detection.detector import (BackboneSpec, DetectorSpec, build_detector, dihedral, init_digest,
                                            load_images, predict_images, set_precision)
from clumpfinder.io import known_fields
from clumpfinder.labels.cache import ImageCache
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
    micro_batches: int = 1  # parts of each batch whose gradients add up (the same optimisation)
    survey_look: float = 0.0  # share of the training images given another survey's look (survey_look())

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"training.steps ({self.steps}) and training.eval_every ({self.eval_every}) must be >= 1")
        if self.micro_batches < 1 or self.micro_batches > self.batch_size:
            raise ValueError(f"training.micro_batches ({self.micro_batches}) must be in 1..batch_size ({self.batch_size})")
        if not 0.0 <= self.survey_look <= 1.0:
            raise ValueError(f"training.survey_look ({self.survey_look}) is a probability: 0..1")

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
                    val: dict[str, Any] | None = None, selection: Selection | None = None,
                    dtype: torch.dtype | None = None) -> str:
    """What a checkpoint must match to be resumed: settings (the precision among them), the init's
    weights file, the training images and boxes, and the validation images and boxes that choose
    the checkpoint."""
    return loop.fingerprint({"precision": None if dtype is None else str(dtype),
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


def batch_plan(step: int, n: int, bs: int, seed: int, augment: bool, full: bool = False) -> list[tuple[int, int, bool]]:
    """(image index, quarter turns, flip) of every image of optimiser step ``step``: epoch e is the
    permutation drawn from (seed, e), cut into ceil(n / bs) batches (``full``: floor(n / bs)
    batches of bs images, the rest of the permutation left out); the dihedral elements come from
    (seed, step). Depends on nothing else, so a resumed run draws the same batches."""
    per_epoch = n // bs if full else math.ceil(n / bs)
    epoch, j = divmod(step, per_epoch)
    idx = np.random.default_rng([seed, epoch]).permutation(n)[j * bs : (j + 1) * bs]
    if not augment:
        return [(int(i), 0, False) for i in idx]
    r = np.random.default_rng([seed, 1_000_003, step])
    return [(int(i), int(r.integers(4)), bool(r.integers(2))) for i in idx]


def batch_parts(items: list[Any], parts: int) -> list[list[Any]]:
    """A batch cut into ``parts`` consecutive parts as even as possible (the micro-batches of one
    process, or the shares of the processes of a data-parallel job)."""
    return [[items[i] for i in idx] for idx in np.array_split(np.arange(len(items)), parts)]


#: the ranges :func:`survey_look` draws from (uniform): per-channel gain (colour balance), the
#: stretch's power, a sky pedestal in 8-bit levels (Galaxy Zoo's SDSS JPEGs sit near 48 of 255,
#: the simulation's composites near 0), Gaussian blur (px), Gaussian noise (8-bit levels), JPEG
#: quality (applied to half the images)
LOOK_GAIN, LOOK_GAMMA, LOOK_SKY = (0.85, 1.15), (0.7, 1.4), (0.0, 60.0)
LOOK_BLUR, LOOK_NOISE, LOOK_JPEG_QUALITY, LOOK_JPEG_P = (0.0, 1.0), (0.0, 6.0), (40, 95), 0.5


def survey_look(img: torch.Tensor, seed: int) -> torch.Tensor:
    """A uint8 (3, H, W) image as another survey or renderer might show it, drawn from ``seed``:
    per-channel gain, a power-law change of stretch, a sky pedestal (255 stays 255), blur, noise,
    and for half the images a JPEG round trip. Positions do not move, so boxes stay as they are."""
    from torchvision.transforms.functional import gaussian_blur

    rng = np.random.default_rng(seed)
    x = img.to(torch.float32) * torch.tensor(rng.uniform(*LOOK_GAIN, 3), dtype=torch.float32)[:, None, None]
    x = 255.0 * (x / 255.0).clamp(0.0, 1.0) ** float(rng.uniform(*LOOK_GAMMA))
    sky = float(rng.uniform(*LOOK_SKY))
    x = sky + x * (255.0 - sky) / 255.0
    sigma = float(rng.uniform(*LOOK_BLUR))
    if sigma > 0.25:
        x = gaussian_blur(x[None], kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)[0]
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    x = x + float(rng.uniform(*LOOK_NOISE)) * torch.randn(x.shape, generator=gen)
    out = x.round().clamp(0, 255).to(torch.uint8)
    if rng.random() < LOOK_JPEG_P:
        out = jpeg_round_trip(out, int(rng.integers(LOOK_JPEG_QUALITY[0], LOOK_JPEG_QUALITY[1] + 1)))
    return out


def jpeg_round_trip(img: torch.Tensor, quality: int) -> torch.Tensor:
    """A uint8 (3, H, W) image saved as a JPEG of ``quality`` (Pillow, as a survey's cutout server
    would) and read back."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).contiguous()


def look_seed(seed: int, step: int, index: int, p: float) -> int:
    """The :func:`survey_look` seed of image ``index`` at ``step`` (0: its own look), a function of
    the training seed, step and image alone (a resumed run draws the same looks, whatever the
    micro-batches or processes)."""
    if p <= 0:
        return 0
    r = np.random.default_rng([seed, 2_000_003, step, index])
    return int(r.integers(1, 2**62)) if r.random() < p else 0


class _Batches(Dataset):
    """The images, boxes and labels of batch-plan items (image index, quarter turns, flip, look
    seed), turned by the dihedral element and given their look: what the DataLoader's workers make."""

    def __init__(self, images: list[torch.Tensor] | ImageCache, entries: list[dict[str, Any]],
                 targets: list[dict[str, torch.Tensor]]):
        self.images, self.entries, self.targets = images, entries, targets

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, item: tuple[int, int, bool, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i, k, flip, look = item
        img = self.images.image(self.entries[i]) if isinstance(self.images, ImageCache) else self.images[i]
        boxes = self.targets[i]["boxes"]
        if k or flip:
            img, boxes = dihedral(img, boxes, k, flip)
        if look:
            img = survey_look(img, look)
        return img, boxes, self.targets[i]["labels"]


def my_parts(step: int, n: int, bs: int, seed: int, augment: bool, parts: int, rank: int = 0,
             size: int = 1) -> list[list[tuple[int, int, bool]]]:
    """The micro-batches process ``rank`` of ``size`` computes at ``step``: the step's batch cut
    into ``parts`` parts (full batches when ``parts`` > 1, so that no part is ever empty),
    ``parts / size`` consecutive ones for each process."""
    cut = batch_parts(batch_plan(step, n, bs, seed, augment, full=parts > 1), parts)
    share = parts // size
    return cut[rank * share:(rank + 1) * share]


class _Plan:
    """Batch sampler: this process's share of the batch of every step from ``start`` on (its
    micro-batches, concatenated)."""

    def __init__(self, start: int, total: int, n: int, bs: int, seed: int, augment: bool, parts: int, rank: int,
                 size: int, look: float = 0.0):
        self.start, self.total, self.n, self.bs, self.seed, self.augment = start, total, n, bs, seed, augment
        self.parts, self.rank, self.size, self.look = parts, rank, size, look

    def __iter__(self):
        for step in range(self.start, self.total):
            yield [(i, k, f, look_seed(self.seed, step, i, self.look))
                   for part in my_parts(step, self.n, self.bs, self.seed, self.augment, self.parts, self.rank, self.size)
                   for i, k, f in part]

    def __len__(self) -> int:
        return self.total - self.start


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def validation_score(model: torch.nn.Module, val: dict[str, Any], images: list[torch.Tensor],
                     detector: DetectorSpec, selection: Selection) -> dict[str, Any]:
    """Completeness, purity and F1 of ``model`` on the validation images at the F1-best threshold."""
    results = predict_images(model, images, [im["id"] for im in val["images"]], detector.class_agnostic_nms)
    m = metrics.match(val, results, (selection.iou,))
    best = metrics.best_score(m, selection.iou, selection.scores)
    c = metrics.counts(m, selection.iou, best)
    return {"val_f1": _round(c["f1"]), "val_completeness": _round(c["completeness"]),
            "val_purity": _round(c["purity"]), "val_score": best}


def check_processes(micro_batches: int, processes: int) -> None:
    """Each of a job's processes computes an equal share of every batch's micro-batches."""
    if micro_batches % processes:
        raise ValueError(f"training.micro_batches ({micro_batches}) must be a multiple of the {processes} processes "
                         "of the job (resources.train.gpu): each process computes micro_batches / processes parts "
                         "of a batch")


def _round(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 4)


def train_detector(
    coco: dict[str, Any], images: str | Path | ImageCache, backbone: BackboneSpec, detector: DetectorSpec,
    spec: TrainSpec, threads: int | None = None, checkpoint: str | Path | None = None,
    val: dict[str, Any] | None = None, selection: Selection = Selection(), compute: ComputeSpec = ComputeSpec(),
    device: torch.device | None = None, val_images: str | Path | ImageCache | None = None,
    initial: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train and return (model, metrics); with ``val`` (a COCO dataset of the validation split) the
    returned weights are the evaluated ones with the best validation F1 (see module doc);
    resumable through ``checkpoint``. ``images`` (and ``val_images``, default ``images``) is a
    folder of PNGs or a split's :class:`ImageCache`; ``device`` defaults to ``compute.device``.
    Inside an initialised ``torch.distributed`` group every process trains on its share of each
    batch (see :func:`clumpfinder.detection.parallel.train_job`). ``initial``: the state dict of a
    detector of the same build to fine-tune instead of the backbone's init (not resumable: no
    ``checkpoint`` with it)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    device = device or pick_device(compute.device)
    rank, size = loop.world()
    targets = load_targets(coco)
    n = len(coco["images"])
    if n == 0:
        raise ValueError("training set is empty")
    if val is not None:
        val = validation_subset(val, spec.val_images)
        source = images if val_images is None else val_images
        val_tensors = (source.images(val) if isinstance(source, ImageCache) else load_images(val, source)) if rank == 0 else []
    if not isinstance(images, ImageCache):
        images = load_images(coco, images)
    dtype = autocast_dtype(compute.precision, device)
    if initial is not None and checkpoint is not None:
        raise ValueError("a fine-tuning run (initial weights) cannot be resumed from a checkpoint")
    model = build_detector(backbone, detector, pretrained=initial is None)
    if initial is not None:
        model.load_state_dict(initial)
    model = set_precision(model.to(device), dtype)
    net = model
    if size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, fused=True)
    scaler = grad_scaler(device, dtype)
    bs = min(spec.batch_size, n)
    parts = spec.micro_batches  # of every batch, shared by the processes
    check_processes(parts, size)
    if bs < parts:
        raise ValueError(f"a batch of {bs} images cannot be cut into {parts} micro-batches")
    total = spec.steps
    if rank == 0:
        log.info(
            "training %s (%s) on %d images, %d boxes: up to %d steps of %d (%.1f epochs) on %s%s%s, %s; validation on %s",
            backbone.arch, backbone.init, n, sum(len(t["labels"]) for t in targets), total, bs, total * bs / n, device,
            f" x {size} processes" if size > 1 else "",
            f", {parts} micro-batches (every epoch's last incomplete batch left out)" if parts > 1 else "",
            f"mixed precision {dtype}".replace("torch.", "") if dtype else "fp32",
            f"{len(val['images'])} images every {spec.eval_every} steps" if val is not None else "none",
        )
    dataset = _Batches(images, coco["images"], targets)
    batches = None

    def loader(start: int):
        return iter(DataLoader(
            dataset, batch_sampler=_Plan(start, total, n, bs, spec.seed, spec.augment, parts, rank, size,
                                         spec.survey_look),
            num_workers=compute.loader_workers, collate_fn=_as_list, pin_memory=device.type == "cuda",
            persistent_workers=False, generator=torch.Generator(),  # (never draws from torch's global stream)
            prefetch_factor=4 if compute.loader_workers else None))

    def step_fn(step: int, backward) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        nonlocal batches
        if batches is None:
            batches = loader(step)
        items = next(batches)
        mine = parts // size
        total_loss, sums = 0.0, {}
        for j, part in enumerate(batch_parts(items, mine)):
            imgs = [img.to(device, non_blocking=True).to(torch.float32) / 255.0 for img, _, _ in part]
            tgts = [{"boxes": b.to(device, non_blocking=True), "labels": lab.to(device, non_blocking=True)}
                    for _, b, lab in part]
            # each part weighs its share of the batch (x processes: DistributedDataParallel averages)
            weight = len(part) / bs * size if parts > 1 else 1.0
            sync = net.no_sync() if size > 1 and j < mine - 1 else contextlib.nullcontext()
            with sync:
                losses = net(imgs, tgts)
                loss = sum(losses.values())
                backward(loss * weight if parts > 1 else loss)
            total_loss += loss.detach() * weight
            for name, v in losses.items():
                sums[name] = sums.get(name, 0.0) + v.detach() * weight
        return total_loss, sums, len(items)

    def evaluate(model: torch.nn.Module, step: int) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": round(step * bs / n, 2)}
        if val is not None:
            row.update(validation_score(model, val, val_tensors, detector, selection))
        return row

    def describe(step: int, row: dict[str, Any], best: dict[str, Any]) -> str:
        return ("step %d/%d (epoch %.1f) loss %.4f (cls %.4f box %.4f obj %.4f rpn %.4f) %.1f img/s%s%s" % (
            step, total, row["epoch"], row.get("loss", float("nan")), row.get("loss_classifier", float("nan")),
            row.get("loss_box_reg", float("nan")), row.get("loss_objectness", float("nan")),
            row.get("loss_rpn_box_reg", float("nan")), row["img_per_s"] or 0,
            (f" (GPU {row['gpu_util']} % busy, " if row.get("gpu_util") is not None else " (GPU ")
            + f"{row['gpu_mem_gb']} GB)" if "gpu_mem_gb" in row else "",
            f"; validation F1 {row['val_f1']} (best {best['score']} at step {best['step']})" if val is not None else ""))

    run = loop.run(model, opt, params, step_fn, evaluate, loop.Loop(
        total=total, lr=spec.lr, warmup_steps=spec.warmup_steps, eval_every=spec.eval_every, grad_clip=spec.grad_clip,
        patience=spec.patience if val is not None else 0, score="val_f1", what="training", checkpoint=checkpoint, describe=describe,
        fingerprint=job_fingerprint(coco, backbone, detector, spec, val, selection, dtype)), device, scaler)
    step, best = run["steps"], run["best"]
    if run["stopped_early"] and rank == 0:
        log.info("stopped at step %d: no better validation F1 in %d evaluations", step, spec.patience)
    if val is not None and rank == 0:
        log.info("kept the weights of step %s (validation F1 %s)", best["step"], best["score"])
    metrics_out = {
        "backbone": asdict(backbone), "training": asdict(spec), "n_train": n, "steps": step, "max_steps": total,
        "epochs": round(step * bs / n, 2), "batch_size": bs, "stopped_early": run["stopped_early"],
        "best_step": best["step"], "best_val_f1": best["score"] if best["step"] is not None else None,
        "val_images": len(val["images"]) if val is not None else 0,
        "seconds": round(run["seconds"], 2), "img_per_s": round(step * bs / run["seconds"], 2) if run["seconds"] > 0 else None,
        "device": str(device), "processes": size, "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "loader_workers": compute.loader_workers, "resumed_at_step": run["resumed_at_step"],
        "final_loss": run["history"][-1].get("loss") if run["history"] else None, "history": run["history"],
    }
    return model, metrics_out
