"""The machine agent of the partnership replay: a detector that joins the crowd.

Every round it trains the configured detector (the sweep's settings, ``machine.steps`` steps;
from the backbone's init, or with ``fine_tune`` from the previous round's weights, so that the
rounds add up) on the retired subjects' consensus boxes, gold subjects excepted (their truth trains
SWAP's agents, so the machine's votes on them must be honest). A share of those subjects
(``validation_fraction``, drawn once per subject from its id) is held out: the weights and the
score threshold are the ones with the best F1 against their consensus, never against a truth.
Then it classifies every subject still in the queue, seen or not, and the gold subjects: its
boxes above the threshold become clicks at the boxes' centres (tool "odd" for an odd clump) in
the frame the volunteers clicked in, one classification per subject, by :data:`MACHINE_USER`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from clumpfinder.compute import ComputeSpec
from clumpfinder.crowd.consensus import ConsensusResult
from clumpfinder.data.zooniverse import ANSWER_NO, ANSWER_YES
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec, predict
from clumpfinder.detection.train import Selection, TrainSpec, train_detector
from clumpfinder.labels.coco import coco_dataset
from clumpfinder.partnership.replay import MACHINE_USER, MachineSpec

log = logging.getLogger(__name__)
#: classification ids of the machine's classifications: below every real one
FIRST_ID = -1


def held_out(subject_ids: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Whether each subject is in the machine's validation share: a fixed draw per subject id,
    so a subject stays on its side in every round."""
    u = np.array([np.random.default_rng([seed, int(s)]).uniform() for s in subject_ids])
    return u < fraction


class MachineAgent:
    """Trains on the retired subjects and classifies the active ones (see module doc).

    ``manifest``: the survey's subjects (subject_id, png, width, height, psf_fwhm_pixels);
    ``gold``: subject ids whose truth SWAP knows (never trained on, always classified)."""

    def __init__(self, spec: MachineSpec, backbone: BackboneSpec, detector: DetectorSpec, training: TrainSpec,
                 selection: Selection, compute: ComputeSpec, manifest: pd.DataFrame, image_dir: str,
                 gold: np.ndarray, crop: int | None = None, threads: int | None = None,
                 question: bool = False, device: torch.device | None = None):
        self.spec, self.backbone, self.detector, self.training = spec, backbone, detector, training
        self.selection, self.compute, self.image_dir, self.crop, self.threads = (selection, compute, image_dir, crop,
                                                                                 threads)
        self.manifest = manifest.set_index("subject_id", drop=False)
        self.gold = np.asarray(gold, np.int64)
        self.question, self.device = question, device
        self.next_id = FIRST_ID
        self.weights: dict[str, torch.Tensor] | None = None  # the last round's, to fine-tune

    def _images(self, ids: np.ndarray, frame: pd.DataFrame) -> pd.DataFrame:
        m = self.manifest.loc[ids]
        images = pd.DataFrame({"subject_id": ids, "file_name": m["png"].to_numpy(), "width": m["width"].to_numpy(),
                               "height": m["height"].to_numpy()})
        images["click_width"] = images["subject_id"].map(frame["width"])
        images["click_height"] = images["subject_id"].map(frame["height"])
        return images

    def __call__(self, consensus: ConsensusResult, retired: np.ndarray, active: np.ndarray, when: str,
                 round_no: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]] | None:
        t0 = time.perf_counter()
        known = np.asarray(self.manifest.index, np.int64)
        pool = np.setdiff1d(np.intersect1d(np.asarray(retired, np.int64), known), self.gold)
        val_mask = held_out(pool, self.spec.validation_fraction)
        train_ids, val_ids = pool[~val_mask], pool[val_mask]
        if len(pool) < self.spec.min_subjects or len(train_ids) < 2 or len(val_ids) < 1:
            log.info("machine round %d: %d retired subjects to learn from (needs %d): sits it out", round_no, len(pool),
                     self.spec.min_subjects)
            return None
        frame = consensus.subjects.set_index("subject_id")[["width", "height", "fwhm_px"]]
        boxes = consensus.boxes
        train = coco_dataset(self._images(train_ids, frame), boxes, f"partnership round {round_no}", crop=self.crop)
        val = coco_dataset(self._images(val_ids, frame), boxes, f"partnership round {round_no}, held out", crop=self.crop)
        model, metrics = train_detector(train, self.image_dir, self.backbone, self.detector, self.training,
                                        threads=self.threads, val=val, selection=self.selection, compute=self.compute,
                                        device=self.device, initial=self.weights if self.spec.fine_tune else None)
        best = next((row for row in metrics["history"] if row["step"] == metrics["best_step"]), None)
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if best is None or not best.get("val_f1"):  # no F1 (no held-out box) or 0: no skill to show
            log.info("machine round %d: held-out F1 %s after %d steps: no skill yet, sits it out", round_no,
                     None if best is None else best.get("val_f1"), metrics["steps"])
            return None
        threshold = float(best["val_score"])
        targets = np.union1d(np.intersect1d(np.asarray(active, np.int64), known), np.intersect1d(self.gold, known))
        images = self._images(targets, frame)
        coco = coco_dataset(images, boxes.iloc[:0], "partnership targets", crop=self.crop)
        results = [r for r in predict(model, coco, self.image_dir, self.detector.class_agnostic_nms,
                                      batch_size=self.spec.predict_batch) if r["score"] >= threshold]
        cls, clicks = self._classifications(images, coco, results, frame, when)
        info = {"trained_on": len(train_ids), "held_out": len(val_ids), "threshold": threshold,
                "held_out_f1": best["val_f1"], "steps": metrics["steps"], "classified": len(targets),
                "marked": int((cls["n_marks"] > 0).sum()), "boxes": len(clicks),
                "seconds": round(time.perf_counter() - t0, 1)}
        log.info("machine round %d: %s", round_no, info)
        return cls, clicks, info

    def _classifications(self, images: pd.DataFrame, coco: dict[str, Any], results: list[dict[str, Any]],
                         frame: pd.DataFrame, when: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """One classification per target subject and a click per box, in the volunteers' frame (a
        subject no volunteer has classified yet: the image's; the replay rescales it to the
        volunteers' once they have)."""
        n = len(images)
        ids = np.arange(self.next_id, self.next_id - n, -1, dtype=np.int64)
        self.next_id -= n
        width = images["click_width"].fillna(images["width"]).to_numpy(float)
        height = images["click_height"].fillna(images["height"]).to_numpy(float)
        scale_x, scale_y = width / images["width"].to_numpy(float), height / images["height"].to_numpy(float)
        fwhm = images["subject_id"].map(frame["fwhm_px"]).to_numpy(float)
        manifest_fwhm = self.manifest.loc[images["subject_id"], "psf_fwhm_pixels"].to_numpy(float) * scale_x
        fwhm = np.where(np.isnan(fwhm), manifest_fwhm, fwhm)
        row_of = {int(s): i for i, s in enumerate(images["subject_id"])}
        offset = {im["id"]: im.get("crop", [0, 0]) for im in coco["images"]}
        rows = [row_of[r["image_id"]] for r in results]
        cx = np.array([r["bbox"][0] + r["bbox"][2] / 2 + offset[r["image_id"]][0] for r in results], float)
        cy = np.array([r["bbox"][1] + r["bbox"][3] / 2 + offset[r["image_id"]][1] for r in results], float)
        clicks = pd.DataFrame({"classification_id": ids[rows], "subject_id": images["subject_id"].to_numpy()[rows],
                               "user": MACHINE_USER, "x": cx * scale_x[rows], "y": cy * scale_y[rows],
                               "tool": np.array([int(r["category_id"] == 2) for r in results], np.int64)})
        n_marks = np.bincount(rows, minlength=n)
        cls = pd.DataFrame({
            "classification_id": ids, "subject_id": images["subject_id"].to_numpy(np.int64), "user": MACHINE_USER,
            "logged_in": True, "n_marks": n_marks, "width": width, "height": height, "fwhm_px": fwhm,
            "workflow_version": "machine", "created_at": when,
            "question_answer": np.where(n_marks > 0, ANSWER_YES, ANSWER_NO).astype(np.int8) if self.question
            else np.full(n, -1, np.int8),
        })
        return cls, clicks
