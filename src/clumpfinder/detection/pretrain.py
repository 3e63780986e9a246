"""Galaxy pretraining of a detector backbone: the workflow's own, small Zoobot.

The backbone network is trained as an image encoder that predicts volunteers' answers to a tree
of questions (:mod:`clumpfinder.data.morphology`: ``pretrain:morphology``) or whether a galaxy has
clumps (the consensus SWAP posterior: ``pretrain:clumpy``, Popp et al.'s fifth arm). Each question
is a softmax over its answers trained on the vote fractions (cross-entropy, questions nobody
answered are skipped), as Zoobot does with counts.

Rotation invariance follows Dieleman et al. (2015): one encoder with shared weights looks at
several rotated / flipped views of the galaxy and the head sees the mean of their feature
vectors. With all eight elements of the dihedral group D4 (90-degree rotations x flip) the
prediction is exactly invariant to them; that is how validation predicts. Training averages over
``views`` distinct elements drawn at random per batch, a Monte Carlo estimate of the group mean
that costs ``views`` forward passes instead of eight. The encoder's weights become the
detector's backbone, and the detector is then trained with random dihedral augmentation, so its
feature maps see galaxies in every orientation.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from clumpfinder.compute import ComputeSpec, autocast, autocast_dtype, grad_scaler, pick_device
from clumpfinder.detection.detector import BackboneSpec, build_encoder, dihedral, init_digest, load_images
from clumpfinder.detection import loop
from clumpfinder.io import atomic_path, known_fields

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainSpec:
    """Settings of one pretraining task (``pretrain.morphology`` or ``pretrain.clumpy``)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    views: int
    validation_fraction: float
    seed: int
    image_size: int | None = None  # None: the images as they are

    def __post_init__(self) -> None:
        if not 1 <= self.views <= 8:
            raise ValueError(f"pretrain views must be 1..8 (elements of the dihedral group), got {self.views}")
        if self.image_size is not None and self.image_size < 16:
            raise ValueError(f"pretrain image_size must be at least 16 pixels (or null), got {self.image_size}")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "PretrainSpec":
        return cls(**known_fields(cls, cfg, "pretrain"))


def dihedral_view(x: torch.Tensor, element: int) -> torch.Tensor:
    """Element 0..7 of D4 applied to a batch (B, C, H, W): rotation by (element % 4) x 90 degrees,
    preceded by a left-right flip for elements 4..7; i.e. the detector's transform
    (:func:`clumpfinder.detection.detector.dihedral`: turn, then flip) turning the other way when flipped."""
    k, flip = element % 4, element >= 4
    return dihedral(x, None, -k % 4 if flip else k, flip)[0]


class GroupPooledClassifier(nn.Module):
    """Shared encoder over dihedral views, mean of the features, one linear head; the encoder
    computes in ``autocast_dtype`` under mixed precision (None: fp32), the head in fp32."""

    autocast_dtype: torch.dtype | None = None

    def __init__(self, encoder: nn.Module, n_features: int, n_outputs: int, normalization: str):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(n_features, n_outputs)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalization == "imagenet" else ((0.0,) * 3, (1.0,) * 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, elements: list[int] | None = None) -> torch.Tensor:
        """Logits for a batch of images in [0, 1]; ``elements`` defaults to the whole group."""
        elements = list(range(8)) if elements is None else elements
        x = (x - self.mean) / self.std
        views = torch.cat([dihedral_view(x, g) for g in elements])
        with autocast(x.device, self.autocast_dtype):
            features = self.encoder(views)
        features = features.float().view(len(elements), x.shape[0], -1).mean(0)
        return self.head(features)


def resized(images: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """The uint8 images (3, H, W) resampled to ``size`` x ``size`` pixels (antialiased bilinear:
    the whole field, at a coarser pixel scale); images of that size already are passed through."""
    out = []
    for im in images:
        if tuple(im.shape[-2:]) != (size, size):
            x = torch.nn.functional.interpolate(im[None].float(), size=(size, size), mode="bilinear",
                                                align_corners=False, antialias=True)
            im = x[0].round().clamp(0, 255).to(torch.uint8)
        out.append(im)
    return out


def question_slices(questions: dict[str, tuple[tuple[str, ...], Any]]) -> list[tuple[str, slice]]:
    out, start = [], 0
    for q, (answers, _) in questions.items():
        out.append((q, slice(start, start + len(answers))))
        start += len(answers)
    return out


def vote_loss(logits: torch.Tensor, counts: torch.Tensor, slices: list[tuple[str, slice]]) -> torch.Tensor:
    """Mean over galaxies of the summed per-question cross-entropy against the vote fractions."""
    total = logits.new_zeros(())
    for _, s in slices:
        c = counts[:, s]
        n = c.sum(1, keepdim=True)
        answered = n[:, 0] > 0
        if answered.any():
            frac = c[answered] / n[answered]
            total = total - (frac * torch.log_softmax(logits[answered, s], dim=1)).sum()
    return total / logits.shape[0]


def _predict(model: GroupPooledClassifier, images: list[torch.Tensor], device: torch.device,
             batch: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    with torch.inference_mode():
        for b0 in range(0, len(images), batch):
            x = torch.stack(images[b0 : b0 + batch]).to(device, torch.float32) / 255.0
            out.append(model(x).cpu())
    model.train()
    return torch.cat(out) if out else torch.zeros(0)


def _answered(counts: torch.Tensor, slices: list[tuple[str, slice]], min_votes: int = 1):
    """Per question: its name, slice, which galaxies have at least ``min_votes`` answers, their
    answer counts and their vote fractions (questions no galaxy qualifies for are skipped)."""
    for q, s in slices:
        c = counts[:, s]
        n = c.sum(1, keepdim=True)
        ok = n[:, 0] >= min_votes
        if ok.any():
            yield q, s, ok, n[ok], c[ok] / n[ok]


def fraction_rmse(logits: torch.Tensor, counts: torch.Tensor, slices: list[tuple[str, slice]]) -> dict[str, float]:
    """Per question, RMSE between predicted answer probabilities and observed vote fractions
    (galaxies where someone answered)."""
    return {q: round(float(torch.sqrt(((torch.softmax(logits[ok, s], dim=1) - f) ** 2).mean())), 4)
            for q, s, ok, _, f in _answered(counts, slices)}


def vote_noise_rmse(counts: torch.Tensor, slices: list[tuple[str, slice]]) -> dict[str, float]:
    """Per question, the RMSE a perfect predictor would still have: vote fractions are finite draws
    of n votes, each fraction's variance around its probability p being p (1 - p) / n, estimated
    without bias as f (1 - f) / (n - 1). Over the galaxies with two or more answers (one answer
    gives no estimate), where :func:`fraction_rmse` counts every answered galaxy: with single-vote
    galaxies in a pool the floor is underestimated."""
    return {q: round(float(torch.sqrt((f * (1 - f) / (n - 1)).mean())), 4)
            for q, _, _, n, f in _answered(counts, slices, min_votes=2)}


#: a vote is confident when its leading answer holds at least this share (Dieleman et al. 2015)
CONFIDENT = 0.8


def confident_agreement(logits: torch.Tensor, counts: torch.Tensor, slices: list[tuple[str, slice]],
                        level: float = CONFIDENT) -> dict[str, dict[str, float]]:
    """Per question, over the galaxies whose votes are confident (leading answer >= ``level`` of
    them), the share where the predicted leading answer is the voters' (as Dieleman et al. 2015
    report their agreement), and how many such galaxies there were."""
    out = {}
    for q, s, ok, _, f in _answered(counts, slices):
        sure = f.max(1).values >= level
        if sure.any():
            agree = logits[ok, s][sure].argmax(1) == f[sure].argmax(1)
            out[q] = {"agreement": round(float(agree.float().mean()), 4), "n": int(sure.sum())}
    return out


def pretrain_encoder(
    images: list[torch.Tensor], counts: np.ndarray, questions: dict[str, tuple[tuple[str, ...], Any]],
    backbone: BackboneSpec, spec: PretrainSpec, threads: int | None = None, checkpoint: str | Path | None = None,
    compute: ComputeSpec = ComputeSpec(), device: torch.device | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``backbone``'s network (from its own init) to predict the vote ``counts`` (one row
    per image, one column per answer in ``questions`` order). Returns (encoder, metrics). The
    validation loss is logged after every epoch; with a ``checkpoint`` path a killed job resumes
    from its last epoch and ends as an uninterrupted run would (on the CPU). ``device`` defaults to
    ``compute.device``; ``compute.precision`` sets the encoder's mixed precision."""
    if threads:
        torch.set_num_threads(threads)
    if len(images) != len(counts):
        raise ValueError(f"{len(images)} images but {len(counts)} rows of votes")
    fingerprint_images = hashlib.sha256(b"".join(im.numpy().tobytes() for im in images)).hexdigest()
    if spec.image_size:
        images = resized(images, spec.image_size)
    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    device = device or pick_device(compute.device)
    slices = question_slices(questions)
    n_out = slices[-1][1].stop
    if counts.shape[1] != n_out:
        raise ValueError(f"votes have {counts.shape[1]} columns but the questions have {n_out} answers")
    order = rng.permutation(len(images))
    n_val = int(round(spec.validation_fraction * len(images)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if len(train_idx) == 0:
        raise ValueError("pretraining pool is empty")
    encoder, n_features = build_encoder(backbone)
    model = GroupPooledClassifier(encoder, n_features, n_out, backbone.normalization).to(device)
    dtype = model.autocast_dtype = autocast_dtype(compute.precision, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    targets = torch.as_tensor(counts, dtype=torch.float32)
    bs = min(spec.batch_size, len(train_idx))
    steps_per_epoch = math.ceil(len(train_idx) / bs)
    total = spec.epochs * steps_per_epoch
    log.info("pretraining %s (%s) on %d galaxies (%d held out), %d questions, %d views per step: %d steps of %d",
             backbone.arch, backbone.init, len(train_idx), n_val, len(slices), spec.views, total, bs)
    perm = train_idx  # the epoch's order of the training galaxies, drawn at its first step

    def step_fn(step: int, backward) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        nonlocal perm
        b0 = (step % steps_per_epoch) * bs
        if b0 == 0:
            perm = train_idx[rng.permutation(len(train_idx))]
        idx = perm[b0 : b0 + bs]
        x = torch.stack([images[i] for i in idx]).to(device, torch.float32) / 255.0
        elements = sorted(rng.choice(8, size=spec.views, replace=False).tolist())
        loss = vote_loss(model(x, elements), targets[idx].to(device), slices)
        backward(loss)
        return loss.detach(), {}, len(idx)

    def evaluate(model: nn.Module, step: int) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": step // steps_per_epoch - 1, "steps": step}  # epoch counted from 0
        if n_val:
            row["val_loss"] = round(float(vote_loss(_predict(model, [images[i] for i in val_idx], device),
                                                    targets[val_idx], slices)), 5)
        if on_epoch is not None:
            on_epoch(row["epoch"] + 1, model.encoder)
        return row

    def describe(step: int, row: dict[str, Any], best: dict[str, Any]) -> str:
        return "epoch %d/%d loss %.4f val %s %.1f s" % (row["epoch"] + 1, spec.epochs, row["loss"], row.get("val_loss"),
                                                         row["seconds"])

    def set_rng(state: dict[str, Any]) -> None:
        nonlocal perm
        rng.bit_generator.state, perm = state["rng"], state["perm"]

    fingerprint = loop.fingerprint({
        "checkpoint_format": 1, "backbone": asdict(backbone), "spec": asdict(spec),
        "questions": {q: list(a) for q, (a, _) in questions.items()}, "n_images": len(images),
        "counts": hashlib.sha256(np.ascontiguousarray(counts)).hexdigest(),
        "images": fingerprint_images,
        "init_weights": init_digest(backbone)})
    run = loop.run(model, opt, params, step_fn, evaluate, loop.Loop(
        total=total, lr=spec.lr, warmup_steps=spec.warmup_steps, eval_every=steps_per_epoch, what="pretraining",
        checkpoint=checkpoint, fingerprint=fingerprint, describe=describe,
        extra_state=lambda: {"rng": rng.bit_generator.state, "perm": perm}, load_extra_state=set_rng), device,
        grad_scaler(device, dtype))
    step, history, seconds = run["steps"], run["history"], run["seconds"]
    metrics: dict[str, Any] = {
        "arch": backbone.arch, "init": backbone.init, "n_pool": len(images), "n_train": len(train_idx),
        "n_val": n_val, "val_pool_indices": [int(i) for i in val_idx], "image_size": int(images[0].shape[-1]),
        "questions": {q: list(a) for q, (a, _) in questions.items()}, "steps": step,
        "seconds": round(seconds, 2), "galaxies_per_s": round(step * bs / seconds, 2) if seconds > 0 else None,
        "device": str(device), "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "resumed_at_step": run["resumed_at_step"], "history": history,
    }
    if n_val:
        val_images = [images[i] for i in val_idx]
        val_logits = _predict(model, val_images, device)  # of the final model
        metrics["val_fraction_rmse"] = fraction_rmse(val_logits, targets[val_idx], slices)
        # baseline: every galaxy gets the training pool's mean vote fractions
        mean_logits = torch.log(targets[train_idx].sum(0, keepdim=True).clamp_min(1e-6)).expand(len(val_idx), -1)
        metrics["val_fraction_rmse_mean_baseline"] = fraction_rmse(mean_logits, targets[val_idx], slices)
        metrics["val_fraction_rmse_vote_noise"] = vote_noise_rmse(targets[val_idx], slices)
        metrics["val_confident_agreement"] = confident_agreement(val_logits, targets[val_idx], slices)
        sure = list(metrics["val_confident_agreement"].values())
        n_sure = sum(v["n"] for v in sure)
        metrics["val_confident_agreement_all"] = (
            round(sum(v["agreement"] * v["n"] for v in sure) / n_sure, 4) if n_sure else None)
        # exact invariance of the group-pooled prediction: predict on rotated / flipped inputs
        rotated = [dihedral_view(im.unsqueeze(0), 5)[0] for im in val_images[:64]]
        diff = (_predict(model, rotated, device) - val_logits[:64]).abs().max()
        metrics["max_logit_change_under_d4"] = float(diff)
    return model.encoder, metrics


def save_encoder(encoder: nn.Module, path: str | Path) -> None:
    """The encoder's state dict as a plain ``torch.save`` file, loadable by ``file:`` /
    ``pretrain:`` inits (and by timm's ``pretrained_cfg_overlay=dict(file=...)`` for timm archs)."""
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


CLUMPY_QUESTIONS: dict[str, tuple[tuple[str, ...], Any]] = {"clumpy": (("yes", "no"), None)}


def _images(manifest: pd.DataFrame, ids: pd.Series, image_dir: str | Path) -> list[torch.Tensor]:
    rows = manifest.set_index("subject_id").loc[ids]
    coco = {"images": [{"id": int(i), "file_name": r["png"], "height": int(r["height"]), "width": int(r["width"])}
                       for i, r in rows.iterrows()]}
    return load_images(coco, image_dir)


#: two galaxies closer than this on the sky are the same galaxy
SAME_GALAXY_ARCSEC = 2.0


def detection_overlap(population: pd.DataFrame, survey: pd.DataFrame) -> np.ndarray:
    """Which galaxies of a pretraining population are also in the detection survey: the same
    subject id, the same ``galaxy_id`` (when both tables have one) or within
    :data:`SAME_GALAXY_ARCSEC` on the sky (when both have ra/dec)."""
    same = population["subject_id"].isin(survey["subject_id"]).to_numpy().copy()
    if "galaxy_id" in population and "galaxy_id" in survey:
        same |= population["galaxy_id"].astype(str).isin(set(survey["galaxy_id"].astype(str))).to_numpy()
    if {"ra", "dec"} <= set(population.columns) and {"ra", "dec"} <= set(survey.columns) and len(survey):
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        pop = SkyCoord(population["ra"].to_numpy(float) * u.deg, population["dec"].to_numpy(float) * u.deg)
        det = SkyCoord(survey["ra"].to_numpy(float) * u.deg, survey["dec"].to_numpy(float) * u.deg)
        _, sep, _ = pop.match_to_catalog_sky(det)
        same |= sep.arcsec < SAME_GALAXY_ARCSEC
    return same


def morphology_pool(population: pd.DataFrame, votes: pd.DataFrame, columns: list[str], survey: pd.DataFrame,
                    image_dir: str | Path) -> tuple[list[torch.Tensor], np.ndarray, dict[str, int]]:
    """Images and vote rows of the pretraining population: its galaxies with votes, less any that
    is also a galaxy of the detection survey (pretraining never sees a detection galaxy, in any
    split). Returns them with counts of what was used and left out."""
    overlap = detection_overlap(population, survey)
    keep = population.loc[~overlap, "subject_id"]
    labelled = votes.drop_duplicates("subject_id").set_index("subject_id")
    have = keep[keep.isin(labelled.index)]
    counts = labelled.loc[have, columns].to_numpy(dtype=np.float64)
    return _images(population, have, image_dir), counts, {
        "population": int(len(population)), "used": int(len(have)),
        "in_detection_survey": int(overlap.sum()), "without_votes": int(len(keep) - len(have))}


def pretraining_pool(manifest: pd.DataFrame, splits: pd.DataFrame, pool: list[str], labels: pd.DataFrame,
                     columns: list[str], image_dir: str | Path) -> tuple[list[torch.Tensor], np.ndarray, dict[str, int]]:
    """Images and label rows of the galaxies in the ``pool`` splits (never the test split) that
    have labels; returns them with counts of what was used and skipped."""
    if "test" in pool:
        raise ValueError("the pretraining pool must not include the test split")
    ids = splits.loc[splits["split"].isin(pool), "subject_id"]
    labelled = labels.drop_duplicates("subject_id").set_index("subject_id")
    have = ids[ids.isin(labelled.index)]
    counts = labelled.loc[have, columns].to_numpy(dtype=np.float64)
    return _images(manifest, have, image_dir), counts, {
        "pool": int(len(ids)), "used": int(len(have)), "without_labels": int(len(ids) - len(have))}


def clumpy_labels(subjects: pd.DataFrame) -> pd.DataFrame:
    """Clumpy / not-clumpy soft labels from the consensus: the SWAP posterior of 'has clumps'."""
    if "swap_prob" not in subjects.columns:
        raise ValueError("consensus subjects table has no 'swap_prob' column")
    p = subjects["swap_prob"].astype(float)
    ok = p.notna()
    return pd.DataFrame({"subject_id": subjects.loc[ok, "subject_id"], "clumpy_yes": p[ok], "clumpy_no": 1.0 - p[ok]})
