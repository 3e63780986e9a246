"""The partnership replay from the workflow's files: the export, the survey and (simulated) its
truth, with the configuration's sections; what the rule's script and the benchmark both call."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numba
import pandas as pd
import torch

from clumpfinder.compute import ComputeSpec
from clumpfinder.crowd.consensus import ConsensusSpec, gold_with_injected, read_consensus_export
from clumpfinder.detection.detector import BackboneSpec, DetectorSpec
from clumpfinder.detection.train import Selection, TrainSpec
from clumpfinder.labels.coco import coco_dataset, truth_boxes
from clumpfinder.partnership.effort import TruthScorer, effort, skills
from clumpfinder.partnership.machine import MachineAgent
from clumpfinder.partnership.replay import PartnershipSpec, ReplayResult, run_partnership
from clumpfinder.tables import read_gold, read_table

log = logging.getLogger(__name__)


def replay_files(export: str | Path, manifest: str | Path, images: str | Path, config: dict[str, Any],
                 backbone: dict[str, Any], training: dict[str, Any], compute: ComputeSpec,
                 device: torch.device | None = None, threads: int = 1, gold: str | Path | None = None,
                 subject_list: str | Path | None = None, truth: str | Path | None = None,
                 with_machine: bool = True) -> tuple[dict[str, ReplayResult], pd.DataFrame, dict[str, Any]]:
    """Replay ``export`` under the three strategies; returns (results, effort curves, summary).

    ``config``: the workflow configuration (its consensus, partnership, evaluation, detector and
    labels sections are read); ``backbone`` and ``training``: the machine's backbone entry and
    training settings (with the job's seed); ``truth``: the simulated truth table, to score labels;
    ``with_machine`` False: the first two strategies only (benchmarks of the retirement settings).
    """
    spec = PartnershipSpec.from_config(config["partnership"])
    ccfg = config["consensus"]
    consensus = ConsensusSpec.from_config(ccfg)
    parsed = read_consensus_export(export, ccfg, consensus, workers=threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # after the forked parse
    gold_table = read_gold(gold) if gold is not None else None
    subjects = read_table(subject_list, "subject list", ["subject_id"]) if subject_list is not None else None
    gold_table, _ = gold_with_injected(gold_table, subjects)
    gold_ids = gold_table.index.to_numpy() if gold_table is not None else []
    survey = read_table(manifest, "survey manifest", ["subject_id", "png", "width", "height", "psf_fwhm_pixels"])
    ev = config["evaluation"]
    scorer = None
    if truth is not None:  # simulated: label F1 against the truth, gold subjects left out (SWAP learns from them)
        boxes = truth_boxes(survey, pd.read_csv(truth), ccfg["box_scale"], ev["truth_min_flux_fraction"],
                            ev["truth_ignore_min_flux_fraction"])
        scored = survey[~survey["subject_id"].isin(gold_ids)].rename(columns={"png": "file_name"})
        scorer = TruthScorer(coco_dataset(scored, boxes, "simulated truth, every subject but the gold ones"), ev["iou"])
    train_spec = TrainSpec.from_config({**training, "steps": spec.machine.steps, "eval_every": spec.machine.eval_every})
    machine = MachineAgent(spec.machine, BackboneSpec(**backbone), DetectorSpec.from_config(config["detector"]),
                           train_spec, Selection(float(ev["iou"]), tuple(float(s) for s in ev["scores"])), compute,
                           survey, str(images), gold_ids, crop=config["labels"]["crop"], threads=threads,
                           question=consensus.swap.question is not None, device=device)
    results = run_partnership(parsed, consensus, spec, gold_table, scorer, machine if with_machine else None,
                              survey["subject_id"].to_numpy())
    curves, summary = effort(results, len(survey), spec.f1_tolerance, spec.bootstrap)
    final = results["machine" if with_machine else "retirement"]
    summary.update(times=final.report["times"], machine_rounds=final.machine,
                   skills=skills(final.consensus.volunteers), scored=scorer is not None, subjects=len(survey),
                   gold_subjects=len(gold_ids), machine_backbone=backbone, settings=config["partnership"])
    return results, curves, summary


def final_labels(results: dict[str, ReplayResult]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The humans + machine strategy's final consensus in the consensus's format (boxes, subjects
    with the replay's record of each, volunteers with the machine among them)."""
    final = results["machine"]
    subjects = final.consensus.subjects.merge(final.subjects.rename(columns={"n_used": "n_human_used"}),
                                              on="subject_id", how="left")
    return final.consensus.boxes, subjects, final.consensus.volunteers
